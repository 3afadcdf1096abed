"""The one interface compatkit needs from a vector database, and what every engine shares.

A :class:`GalleryStore` holds one gallery: an entity per item (``pos``, its position in
the gallery, the key of every write; ``item_id``; ``label`` and ``class_name``, -1 and ""
when unknown; ``version``, the fingerprint of the model that made the vector; ``vector``)
and a small table of *records* (key -> JSON text) in which the compatibility layer
(:mod:`compatkit.upgrade.ledger`) keeps what no vector database knows: the gallery's
description, the model versions, the recorded checks and a pending backfill plan.

Search has two paths. Exact (the default): each engine proposes every query's
``k + MARGIN`` best candidates, either by a scan of its vectors scored here block by block
(LanceDB; Milvus when its field carries an approximate index), or by its own exact index
(Milvus ``FLAT``); approximate (``approx=True``): the engine's vector index proposes them.
Either way every candidate is rescored in float64 from its stored vector and the final
order is (score descending, position ascending), the tie rule of
:mod:`compatkit.retrieval`, so two engines holding the same vectors return the same ids
and scores.
"""

from __future__ import annotations

import abc
import hashlib
import json
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ...errors import DataError
from ...retrieval import stable_topk

__all__ = [
    "COLUMNS",
    "MARGIN",
    "PART_CHARS",
    "GalleryStore",
    "Hits",
    "Rows",
    "pq_sub_vectors",
    "reorder",
]

COLUMNS = ("pos", "item_id", "label", "class_name", "version", "vector")
MARGIN = 16
"""Candidates per query beyond k that the rescoring may reorder (see the module notes)."""
SCAN_ROWS = 65536
"""Rows scored at once by the exact scan (float32 copy: 256 MiB at d = 1023)."""
QUERY_CHUNK = 1024
"""Queries scored at once by the exact scan (a 1024 x 65536 float32 block is 256 MiB)."""
PART_CHARS = 60_000
"""Characters per stored record row: Milvus's VARCHAR holds 65,535 bytes; records are ASCII
JSON, so a longer record is cut into parts under a head row (see :meth:`put_records`)."""
MAX_RECORD = 1 << 30
"""Characters of one record above which it is refused as damaged (a plan of 100M items is
about 1 GB of JSON; nothing compatkit writes comes near)."""


@dataclass
class Rows:
    """Entities of the gallery, column by column (a column not asked for is None)."""

    pos: np.ndarray
    vectors: np.ndarray | None = None
    """``(n, dim)`` float32 (the stored values, exactly)."""
    ids: list[str] | None = None
    labels: np.ndarray | None = None
    """int64 class ids into the gallery's class list; -1 where unknown."""
    classes: list[str] | None = None
    versions: list[str] | None = None

    def __len__(self) -> int:
        return int(self.pos.size)


@dataclass
class Hits:
    """Each query's k nearest items, best first, with what the gallery holds about them."""

    positions: np.ndarray
    """``(nq, k)`` int64 item positions."""
    scores: np.ndarray
    """``(nq, k)`` float64 inner products, from the stored vectors."""
    rows: dict[int, dict] = field(default_factory=dict)
    """position -> ``{"id", "label", "class", "version"}`` of every hit."""


def _merge(
    best_s: np.ndarray, best_p: np.ndarray, s: np.ndarray, p: np.ndarray, keep: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``keep`` best of two candidate lists, by (score desc, position asc)."""
    cs, cp = np.concatenate([best_s, s], axis=1), np.concatenate([best_p, p], axis=1)
    order = np.lexsort((cp, -cs), axis=1)[:, :keep]
    return np.take_along_axis(cs, order, axis=1), np.take_along_axis(cp, order, axis=1)


def rescore(q: np.ndarray, vectors: np.ndarray, pos: np.ndarray, valid: np.ndarray) -> tuple:
    """float64 scores of candidates ``(nq, kk, d)``; invalid slots get -inf, position max."""
    if not np.isfinite(vectors[valid]).all():
        bad = int(pos[valid][~np.isfinite(vectors[valid]).all(axis=-1)][0])
        raise DataError(f"the stored vector of item position {bad} is not finite (NaN or inf)")
    s = np.einsum("qkd,qd->qk", vectors.astype(np.float64), q.astype(np.float64))
    s = np.where(valid, s, -np.inf)
    p = np.where(valid, pos, np.iinfo(np.int64).max)
    return s, p


class GalleryStore(abc.ABC):
    """A gallery in a vector database (see the module docstring). Engines implement the
    abstract methods; the exact scan, the rescoring and the record parts are shared."""

    engine: str
    """``lancedb`` or ``milvus``."""
    uri: str
    dim: int
    dtype: str
    """How vectors are stored: ``float16`` or ``float32``."""
    scan_rows: int = SCAN_ROWS
    """Rows per block of the exact scan."""

    # ------------------------------------------------------------------ entities
    @abc.abstractmethod
    def add(self, rows: Rows) -> None:
        """Append new entities (a build)."""

    @abc.abstractmethod
    def upsert(self, rows: Rows) -> None:
        """Replace the entities of ``rows.pos`` (every column given) in one commit where
        the engine has commits (LanceDB: one table version)."""

    @abc.abstractmethod
    def delete(self, positions: Sequence[int]) -> None:
        """Remove the entities at ``positions``."""

    @abc.abstractmethod
    def count(self, versions: Sequence[str] | None = None) -> int:
        """Entities in all, or of the given versions."""

    @abc.abstractmethod
    def fetch(self, positions: Sequence[int], columns: Sequence[str]) -> Rows:
        """The entities at ``positions``, in that order (a missing one is a DataError)."""

    @abc.abstractmethod
    def scan(
        self, columns: Sequence[str], versions: Sequence[str] | None = None, rows: int = SCAN_ROWS
    ) -> Iterator[Rows]:
        """Every entity (of ``versions``) once, ``rows`` at a time, in no set order."""

    @abc.abstractmethod
    def _index_candidates(
        self, q: np.ndarray, kk: int, versions: Sequence[str] | None, params: Mapping
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(positions, vectors, valid)`` of each query's ``kk`` candidates from the
        engine's vector index, ``(nq, kk)``, ``(nq, kk, d)``, ``(nq, kk)`` bool."""

    def _exact_candidates(
        self, q: np.ndarray, kk: int, versions: Sequence[str] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """float64 scores and positions ``(nq, kk)`` of each query's ``kk`` best, by a scan:
        each block is scored in float32, its ``kk`` best per query rescored in float64 and
        merged with the best so far."""
        nq = q.shape[0]
        best_s = np.full((nq, 0), -np.inf)
        best_p = np.zeros((nq, 0), dtype=np.int64)
        for block in self.scan(("pos", "vector"), versions, self.scan_rows):
            g = np.ascontiguousarray(block.vectors, dtype=np.float32)
            take = min(kk, len(block))
            s_blk = np.empty((nq, take))
            p_blk = np.empty((nq, take), dtype=np.int64)
            for a in range(0, nq, QUERY_CHUNK):
                # NumPy's BLAS for the product: 1.3-1.5x torch's CPU matmul on this shape
                # (benchmarks/bench_index.py); only the candidates come from float32 scores
                scores = torch.from_numpy(q[a : a + QUERY_CHUNK] @ g.T)
                rows = stable_topk(scores, take).numpy()
                valid = np.ones_like(rows, dtype=bool)
                s, p = rescore(q[a : a + QUERY_CHUNK], g[rows], block.pos[rows], valid)
                s_blk[a : a + QUERY_CHUNK], p_blk[a : a + QUERY_CHUNK] = s, p
            best_s, best_p = _merge(best_s, best_p, s_blk, p_blk, kk)
        return best_s, best_p

    def search(
        self,
        queries: np.ndarray,
        k: int,
        versions: Sequence[str] | None = None,
        approx: bool = False,
        params: Mapping | None = None,
    ) -> Hits:
        """Each query's ``k`` nearest entities (of ``versions``) by inner product."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must be (n, {self.dim}), got {q.shape}")
        if not np.isfinite(q).all():
            raise DataError("a query vector is not finite (NaN or inf): the model's output")
        kk = int(k) + MARGIN
        if approx:
            pos, vec, valid = self._index_candidates(q, kk, versions, params or {})
            s, p = rescore(q, vec, pos, valid)
            order = np.lexsort((p, -s), axis=1)
            s, p = np.take_along_axis(s, order, axis=1), np.take_along_axis(p, order, axis=1)
        else:
            s, p = self._exact_candidates(q, kk, versions)
        found = int(np.isfinite(s).sum(axis=1).min()) if s.size else 0
        k = min(int(k), found)
        s, p = s[:, :k], p[:, :k]
        hits = Hits(p, s)
        if p.size:
            uniq = np.unique(p)
            meta = self.fetch(uniq, ("pos", "item_id", "label", "class_name", "version"))
            for i, pp in enumerate(uniq.tolist()):
                hits.rows[pp] = {
                    "id": meta.ids[i],
                    "label": int(meta.labels[i]),
                    "class": meta.classes[i] or None,
                    "version": meta.versions[i],
                }
        return hits

    # ------------------------------------------------------------------ vector index
    @abc.abstractmethod
    def create_index(self, index_type: str, params: Mapping | None = None) -> None:
        """Build (or replace) the approximate vector index."""

    @abc.abstractmethod
    def index_info(self) -> dict | None:
        """The approximate vector index, or None (exact search only)."""

    def optimize(self) -> None:  # noqa: B027 - engines whose index needs no upkeep keep this
        """Bring the vector index up to date after writes (engines that need it)."""

    # ------------------------------------------------------------------ records
    @abc.abstractmethod
    def _get_rows(self, keys: Sequence[str]) -> dict[str, str]:
        """The record rows of ``keys`` that exist."""

    @abc.abstractmethod
    def _list_keys(self, prefix: str) -> list[str]:
        """Keys of the record rows starting with ``prefix``."""

    @abc.abstractmethod
    def _put_rows(self, rows: Mapping[str, str]) -> None:
        """Insert or replace record rows, in one commit where the engine has commits."""

    @abc.abstractmethod
    def _delete_rows(self, keys: Sequence[str]) -> None:
        """Remove record rows (missing keys are ignored)."""

    def get_record(self, key: str) -> Any:
        """The JSON value of record ``key``, or None; a damaged one is a DataError."""
        text = self._get_rows([key]).get(key)
        if text is None:
            return None
        head = _parse(text, key)
        if isinstance(head, dict) and "$parts" in head:
            text = self._join_parts(key, head)
            return _parse(text, key)
        return head

    def _join_parts(self, key: str, head: dict) -> str:
        n, token, digest = head.get("$parts"), head.get("token"), head.get("sha256")
        if not (isinstance(n, int) and 0 < n <= MAX_RECORD // PART_CHARS + 1):
            raise DataError(f"record {key!r}: invalid number of parts {n!r}")
        if not (isinstance(token, str) and token.isalnum() and isinstance(digest, str)):
            raise DataError(f"record {key!r}: malformed head (token, sha256)")
        names = [f"{key}@{token}/{i:06d}" for i in range(n)]
        rows = self._get_rows(names)
        missing = [nm for nm in names if nm not in rows]
        if missing:
            raise DataError(f"record {key!r}: {len(missing)} of its {n} parts are missing")
        text = "".join(rows[nm] for nm in names)
        if hashlib.sha256(text.encode()).hexdigest() != digest:
            raise DataError(f"record {key!r}: its parts do not match their sha256 (damaged)")
        return text

    def put_records(self, records: Mapping[str, Any]) -> None:
        """Write records (``None`` deletes one). A record longer than ``PART_CHARS`` is
        written as parts under a fresh token first; its head row, written last with the
        short records, makes it current, so a reader sees the old record or the new one."""
        rows: dict[str, str] = {}
        # parts of the records being replaced: listed before anything is written, deleted
        # once the new heads are in
        stale = [k for key in records for k in self._list_keys(f"{key}@")]
        for key, value in records.items():
            if value is None:
                continue
            text = json.dumps(value, allow_nan=False, separators=(",", ":"))
            if len(text) <= PART_CHARS:
                rows[key] = text
                continue
            token = secrets.token_hex(8)
            parts = [
                (f"{key}@{token}/{i // PART_CHARS:06d}", text[i : i + PART_CHARS])
                for i in range(0, len(text), PART_CHARS)
            ]
            for a in range(0, len(parts), 64):  # the parts in batches of ~4 MB
                self._put_rows(dict(parts[a : a + 64]))
            head = {"$parts": len(parts), "token": token}
            head["sha256"] = hashlib.sha256(text.encode()).hexdigest()
            rows[key] = json.dumps(head)
        if rows:
            self._put_rows(rows)
        deleted = [k for k, v in records.items() if v is None]
        if deleted or stale:
            self._delete_rows(deleted + stale)

    def record_keys(self, prefix: str) -> list[str]:
        """Keys of the records (not their parts) starting with ``prefix``, sorted."""
        return sorted(k for k in self._list_keys(prefix) if "@" not in k)

    def close(self) -> None:  # noqa: B027 - an embedded engine may hold nothing to release
        """Release the connection (Milvus Lite serves one process at a time)."""


def _parse(text: str, key: str) -> Any:
    """JSON of a record; damage (not JSON, nested too deep, too long) is a DataError."""
    if not isinstance(text, str) or len(text) > MAX_RECORD:
        raise DataError(f"record {key!r}: not a text of at most {MAX_RECORD} characters")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"record {key!r}: not valid JSON ({e})") from None
    except RecursionError:
        raise DataError(f"record {key!r}: not valid JSON (nested too deeply)") from None


def reorder(got: Rows, want: np.ndarray, uri: str) -> Rows:
    """``got`` (any order, unique positions) in the order of ``want``; a missing or
    repeated position is a DataError."""
    order = np.argsort(got.pos, kind="stable")
    sp = got.pos[order]
    if sp.size > 1 and np.any(sp[1:] == sp[:-1]):
        dup = int(sp[1:][sp[1:] == sp[:-1]][0])
        raise DataError(f"index {uri}: item position {dup} is stored twice (damaged)")
    at = np.searchsorted(sp, want)
    ok = np.zeros(want.size, dtype=bool)
    if sp.size:
        ok = (at < sp.size) & (sp[np.minimum(at, sp.size - 1)] == want)
    if not np.all(ok):
        raise DataError(f"index {uri}: item position {int(want[~ok][0])} is missing (damaged)")
    take = order[at]
    return Rows(
        want.copy(),
        None if got.vectors is None else got.vectors[take],
        None if got.ids is None else [got.ids[i] for i in take],
        None if got.labels is None else got.labels[take],
        None if got.classes is None else [got.classes[i] for i in take],
        None if got.versions is None else [got.versions[i] for i in take],
    )


def pq_sub_vectors(dim: int) -> int:
    """PQ sub-vectors: the divisor of ``dim`` nearest dim / 8 (PQ needs an exact split)."""
    divisors = [m for m in range(1, dim + 1) if dim % m == 0]
    return min(divisors, key=lambda m: (abs(m - dim / 8), -m))
