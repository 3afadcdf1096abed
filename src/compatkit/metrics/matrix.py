"""Reading a compatibility matrix: a file, text as ``compatkit metrics`` and the reports print
it, nested lists or an array, lower triangle or full, fractions or percent; and
:func:`as_matrix`, the one normaliser every metric calls (float64 ``(T, T)`` percent, NaN above
the diagonal)."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError

__all__ = [
    "MatrixFileNotFound",
    "as_matrix",
    "decode_text",
    "load_matrix",
    "parse_matrix",
    "read_matrix_text",
]

_SPLIT = re.compile(r"[\s,;]+")
_ROW_LABEL = re.compile(r"([0-9]+)\*?")
"""A row label as ``compatkit metrics`` and the reports print it: the model number, ``*`` for a
replacement (`` 1*  89.75``)."""


class MatrixFileNotFound(InputError, FileNotFoundError):
    """The matrix file named does not exist (also a FileNotFoundError)."""


# ----------------------------------------------------------------------------- loading


def _rows_to_matrix(rows: Sequence[Sequence[float | None]], source: str) -> np.ndarray:
    """Turn ragged rows into a ``(T, T)`` lower-triangular array (NaN above the diagonal).

    Row ``i`` (zero-based) must hold at least ``i + 1`` entries (its lower
    triangle and diagonal) and at most ``T``; anything right of the diagonal is
    ignored, so both full and lower-triangle-only matrices are accepted.
    """
    t = len(rows)
    if t == 0:
        raise InputError(f"{source}: empty matrix (no rows)")
    problem = _shape_problem([len(r) for r in rows])
    if problem:  # checked before allocating T x T floats
        raise InputError(f"{source}: {problem}")
    out = np.full((t, t), np.nan, dtype=np.float64)
    for i, row in enumerate(rows):
        for j in range(i + 1):
            v = row[j]
            if v is None or (isinstance(v, float) and math.isnan(v)):
                raise InputError(
                    f"{source}: entry at row {i + 1}, column {j + 1} is missing (null/NaN); "
                    "the lower triangle and the diagonal must all be numbers"
                )
            if isinstance(v, bool) or not isinstance(v, int | float):
                shown = repr(v) if len(repr(v)) <= 40 else f"a {type(v).__name__}"
                raise InputError(
                    f"{source}: entry at row {i + 1}, column {j + 1} is not a number: {shown}"
                )
            try:
                out[i, j] = float(v)
            except OverflowError:
                raise InputError(
                    f"{source}: entry at row {i + 1}, column {j + 1} is too large a number"
                ) from None
    return out


def _shape_problem(lengths: Sequence[int]) -> str | None:
    """Why rows of these lengths are not a (lower-triangular) T x T matrix; None if they are."""
    t = len(lengths)
    for i, n in enumerate(lengths):
        if n < i + 1:
            return (
                f"row {i + 1} has {n} entries; row i of a lower-triangular matrix needs at "
                f"least i entries (counting from 1), here {i + 1}"
            )
        if n > t:
            return (
                f"row {i + 1} has {n} entries but the matrix has only {t} rows "
                "(a compatibility matrix is square)"
            )
    return None


def _starts_like_data(token: str) -> bool:
    return token[0] in "0123456789+-."


def _floats(tokens: Sequence[str], lineno: int, source: str) -> list[float]:
    row = []
    for tok in tokens:
        try:
            row.append(float(tok))
        except ValueError:
            shown = tok if len(tok) <= 40 else tok[:40] + "..."
            raise InputError(f"{source}: line {lineno}: {shown!r} is not a number") from None
    return row


def _parse_text(text: str, source: str) -> list[list[float]]:
    """Rows of a plain-text matrix; see :func:`load_matrix` for the two accepted layouts.

    Blank lines and ``#`` comments are skipped, and so are header lines at the top (lines
    before the first row whose first word does not start like a number, as in ``query\\gallery
    1 2 3``). Rows are either numbers only, or a row label first (``1*  89.75``): labels are
    taken as labels only when they number the rows 1, 2, ..., T and the numbers-only reading
    fails, which it always does for a labelled matrix (its last row is one entry too long).
    """
    lines = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = [t for t in _SPLIT.split(line.split("#", 1)[0].strip()) if t]
        if tokens:
            lines.append((lineno, tokens))
    while lines and not _starts_like_data(lines[0][1][0]):
        lines.pop(0)  # header line
    if not lines:
        raise InputError(f"{source}: no matrix rows (only comments or header lines)")
    labelled = all(
        (m := _ROW_LABEL.fullmatch(toks[0])) is not None and int(m.group(1)) == i + 1
        for i, (_, toks) in enumerate(lines)
    )
    try:
        rows = [_floats(toks, lineno, source) for lineno, toks in lines]
        problem = _shape_problem([len(r) for r in rows])
    except InputError:
        if not labelled:
            raise
        problem = "not numbers only"
    if problem is None:
        return rows
    if labelled:
        return [_floats(toks[1:], lineno, source) for lineno, toks in lines]
    return rows  # _rows_to_matrix reports the shape problem


def _looks_like_text(s: str) -> bool:
    """A string that is not an existing file: matrix text, or a mistyped path?"""
    s = s.strip()
    if not s or "\n" in s or s[0] in "[{":
        return True
    try:
        _parse_text(s, "matrix")
    except ValueError:
        return False
    return True


def load_matrix(path_or_text: str | os.PathLike | Sequence | np.ndarray) -> np.ndarray:
    """Read a compatibility matrix and return it as float64 ``(T, T)``, in percent.

    Accepted inputs:

    - a path (``str`` naming an existing file, or ``os.PathLike``) or the text itself;
    - JSON: a list of rows, or an object with a ``"matrix"`` list of rows (the
      shape ``compatkit metrics --json`` writes); ``null`` is fine above the
      diagonal, since JSON has no NaN;
    - plain text: one row per line, entries separated by whitespace, commas or
      semicolons, ``#`` starts a comment; a UTF-8 byte-order mark is fine;
    - the matrix as ``compatkit metrics`` and the reports print it: each row led by
      its model number, ``*`` marking a replacement (`` 1*  89.75`` then
      `` 2   88.00  90.15``), with optional header lines at the top (lines whose
      first word does not start like a number, e.g. ``query\\gallery 1 2``);
    - an already parsed list of rows or array.

    Rows may be ragged (lower triangle only); entries above the diagonal are
    ignored and become NaN. Values are accuracies: when every entry is at most
    1.0 the matrix is read as fractions and multiplied by 100, so 0.5889 and
    58.89 mean the same. (A percent matrix whose every entry is <= 1 % would be
    misread; no retrieval accuracy worth comparing is that low.) Values outside
    [0, 100] after that are refused.

    Raises:
        InputError: empty input, a non-numeric token, a row shorter than its
            index requires or longer than the matrix, or a value out of range
            (also a ``ValueError``).
        MatrixFileNotFound: a string that is neither an existing file nor
            matrix-looking text (an ``InputError`` and a ``FileNotFoundError``).
    """
    source = "matrix"
    data: object
    if isinstance(path_or_text, np.ndarray):
        arr = np.asarray(path_or_text, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
            raise InputError(f"matrix must be square 2-D, got shape {arr.shape}")
        data = [list(r) for r in arr.tolist()]
    elif isinstance(path_or_text, os.PathLike | str) and (
        isinstance(path_or_text, os.PathLike) or os.path.isfile(path_or_text)
    ):
        source = str(path_or_text)
        data = read_matrix_text(Path(path_or_text))
    elif isinstance(path_or_text, str):
        if not _looks_like_text(path_or_text):
            raise MatrixFileNotFound(f"matrix file {path_or_text} not found")
        data = path_or_text
    else:
        data = path_or_text

    return parse_matrix(data, source)


def read_matrix_text(path: Path) -> str:
    """A matrix file's text (UTF-8, a byte-order mark allowed); one InputError line otherwise."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise MatrixFileNotFound(f"matrix file {path} not found") from None
    except OSError as e:
        raise InputError(f"{path}: cannot be read ({e.strerror or e})") from None
    return decode_text(raw, str(path))


def decode_text(raw: bytes, source: str) -> str:
    """UTF-8 text with an optional byte-order mark (as Windows editors save it)."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(
            f"{source}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})"
        ) from None


def parse_matrix(data: str | Sequence, source: str = "matrix") -> np.ndarray:
    """Parse matrix text (JSON or plain rows) or already parsed rows; see :func:`load_matrix`.

    Unlike :func:`load_matrix` a string is always content, never a path (for
    standard input); ``source`` names the input in error messages.
    """
    if isinstance(data, str):
        stripped = data.lstrip("\ufeff").strip()
        if not stripped:
            raise InputError(f"{source}: empty input")
        if stripped[0] in "[{":
            try:
                data = json.loads(stripped)
            except json.JSONDecodeError as e:
                raise InputError(f"{source}: invalid JSON: {e}") from None
            except RecursionError:
                raise InputError(f"{source}: invalid JSON: nested too deeply") from None
        else:
            data = _parse_text(stripped, source)

    if isinstance(data, dict):
        if "matrix" not in data:
            raise InputError(f"{source}: JSON object has no 'matrix' key")
        data = data["matrix"]
    if not isinstance(data, list | tuple) or not all(isinstance(r, list | tuple) for r in data):
        raise InputError(f"{source}: expected a list of rows (a list of lists of numbers)")

    c = _rows_to_matrix(data, source)
    return _to_percent(c, source)


def _to_percent(c: np.ndarray, source: str = "matrix") -> np.ndarray:
    low = c[np.tril_indices(c.shape[0])]
    if np.any(~np.isfinite(low)):
        raise InputError(f"{source}: the lower triangle must be finite numbers")
    if np.any(low < 0):
        raise InputError(f"{source}: accuracies must be >= 0, found {low.min():g}")
    if low.max() <= 1.0:
        c = c * 100.0  # fractions -> percent
    elif low.max() > 100.0:
        raise InputError(
            f"{source}: accuracies are percentages (<= 100) or fractions (<= 1); "
            f"found {low.max():g}"
        )
    return c


def as_matrix(c: np.ndarray | Sequence) -> np.ndarray:
    """Any accepted matrix as float64 ``(T, T)`` percent, NaN above the diagonal.

    The one normaliser of the module and of ``compatkit metrics``: a square array or a list of
    (possibly lower-triangle) rows, fractions read as percent (see :func:`load_matrix`). A
    matrix already normalised comes back unchanged (a copy).
    """
    if isinstance(c, np.ndarray):
        a = np.array(c, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
            raise InputError(
                f"compatibility matrix must be square (T, T) with T >= 1, got {a.shape}"
            )
        if np.any(~np.isfinite(a[np.tril_indices(a.shape[0])])):
            raise InputError("compatibility matrix has NaN/inf on or below the diagonal")
        a = _to_percent(a, "compatibility matrix")
    else:
        a = parse_matrix(c if isinstance(c, str) else list(c), "compatibility matrix")
    a[np.triu_indices(a.shape[0], k=1)] = np.nan
    return a
