"""A collection of image files, listed but not read: folders of any size, or a list file.

Three layouts:

- a folder with one sub-folder per class (``root/<class>/<image>``); with ``root/train`` and
  ``root/test`` both present, those are the splits and share one sorted class list;
- a flat folder of images (no sub-folders): an unlabelled gallery;
- a list file, ``.csv`` (``path[,label]`` per line, an optional ``path,label`` header) or
  ``.jsonl`` (``{"path": ..., "label": ...}`` per line); relative paths are relative to the
  list's folder, labels are class names.

Listing decides what is an item and says what it left out, with counts (:class:`LeftOut`):
hidden entries, files that are not images by their suffix, FIFOs/sockets/devices, dangling
symlinks, folders nested inside a class folder (not descended into), class folders that
are symlinks leading out of the data folder (followed only when asked), names holding a
line break (an id is one line of text) and files beside the class folders. Paths are
kept as one byte buffer and an offset array, not as a Python object per file: a million
items cost tens of MB, and worker processes that read them do not copy them page by page
(each Python object's reference count would be written on access).
"""

from __future__ import annotations

import csv
import itertools
import json
import os
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError

__all__ = [
    "IMAGE_SUFFIXES",
    "LIST_SUFFIXES",
    "Collection",
    "LeftOut",
    "list_file",
    "list_folder",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
LIST_SUFFIXES = (".csv", ".jsonl")
UNLABELLED = -1

_REASONS = {
    "hidden": "hidden entries",
    "not_image": "files that are not images (by suffix)",
    "special": "FIFOs, sockets or devices",
    "dangling": "dangling symlinks",
    "nested": "folders nested inside class folders (not descended into)",
    "outside": "class folders that are symlinks out of the data folder (--follow-links)",
    "line_break": "names with a line break",
    "top_files": "files beside the class folders",
}
_EXAMPLES = 3  # paths kept per reason, for the message


@dataclass
class LeftOut:
    """What listing skipped: a count per reason and the first few paths of each."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, path: str | os.PathLike) -> None:
        self.counts[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < _EXAMPLES:
            ex.append(str(path))

    def __bool__(self) -> bool:
        return bool(self.counts)

    def summary(self) -> str:
        """One line: ``left out: 2 hidden entries (a/.x, ...), 1 FIFO ...``; empty if none."""
        parts = []
        for reason, n in sorted(self.counts.items(), key=lambda kv: -kv[1]):
            ex = ", ".join(self.examples.get(reason, []))
            parts.append(f"{n} {_REASONS.get(reason, reason)} (e.g. {ex})")
        return ("left out: " + "; ".join(parts)) if parts else ""

    def to_dict(self) -> dict:
        return {
            k: {"count": n, "examples": self.examples.get(k, [])} for k, n in self.counts.items()
        }


class Collection:
    """Image files in a fixed order, with an id (a path relative to ``root``) and a label each.

    ``labels[i]`` indexes ``classes``; ``UNLABELLED`` (-1) everywhere for a flat folder or an
    unlabelled list (``labelled`` is then False).
    """

    def __init__(
        self,
        root: Path,
        ids: Iterable[str],
        labels: Iterable[int] | None,
        classes: list[str],
        left_out: LeftOut | None = None,
        spec: str = "",
    ) -> None:
        self.root = Path(root)
        blob, ends = bytearray(), array("q", [0])
        for i in ids:  # one id at a time: no list of a million strings on the way
            blob += os.fsencode(i)
            ends.append(len(blob))
        self._offsets = np.frombuffer(ends, dtype=np.int64).copy()
        self._blob = np.frombuffer(bytes(blob), dtype=np.uint8)
        n = len(self._offsets) - 1
        self.labels = (
            np.full(n, UNLABELLED, dtype=np.int32)
            if labels is None
            else np.fromiter(labels, dtype=np.int32, count=n)
        )
        self.classes = list(classes)
        self.left_out = left_out or LeftOut()
        self.spec = spec or str(root)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @property
    def labelled(self) -> bool:
        return bool(self.classes) and len(self) > 0 and bool((self.labels >= 0).all())

    def id(self, i: int) -> str:
        a, b = int(self._offsets[i]), int(self._offsets[i + 1])
        return os.fsdecode(self._blob[a:b].tobytes())

    def path(self, i: int) -> Path:
        return self.root / self.id(i)

    def ids(self) -> list[str]:
        return [self.id(i) for i in range(len(self))]


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _scan_class(folder: Path, root: Path, left: LeftOut) -> list[str]:
    """Image files directly inside ``folder`` (sorted), as paths relative to ``root``."""
    out = []
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        rel = Path(e.path).relative_to(root).as_posix()
        if _is_hidden(e.name):
            left.add("hidden", rel)
        elif "\n" in e.name or "\r" in e.name:
            left.add("line_break", rel.encode("unicode_escape").decode())
        elif e.is_symlink() and not os.path.exists(e.path):
            left.add("dangling", rel)
        elif e.is_dir():
            left.add("nested", rel)
        elif e.is_file():
            if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES:
                out.append(rel)
            else:
                left.add("not_image", rel)
        else:
            left.add("special", rel)
    return out


def _class_dirs(folder: Path, root: Path, left: LeftOut, follow_links: bool) -> list[Path]:
    """Visible class folders of ``folder``; symlinks out of ``root`` only with ``follow_links``."""
    real_root = root.resolve()
    dirs = []
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        rel = Path(e.path).relative_to(root).as_posix()
        if not e.is_dir():
            continue
        if _is_hidden(e.name):
            left.add("hidden", rel + "/")
            continue
        if e.is_symlink() and not follow_links:
            target = Path(e.path).resolve()
            if target != real_root and real_root not in target.parents:
                left.add("outside", f"{rel} -> {target}")
                continue
        dirs.append(Path(e.path))
    return dirs


def _top_level(folder: Path, root: Path, left: LeftOut, labelled: bool) -> list[str]:
    """Entries of ``folder`` that are not folders: the items of a flat folder, otherwise
    files left out beside the class folders."""
    out = []
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        if e.is_dir():
            continue
        rel = Path(e.path).relative_to(root).as_posix()
        if _is_hidden(e.name):
            left.add("hidden", rel)
        elif e.is_symlink() and not os.path.exists(e.path):
            left.add("dangling", rel)
        elif not e.is_file():
            left.add("special", rel)
        elif labelled:
            left.add("top_files", rel)
        elif "\n" in e.name or "\r" in e.name:
            left.add("line_break", rel.encode("unicode_escape").decode())
        elif os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES:
            out.append(rel)
        else:
            left.add("not_image", rel)
    return out


def list_folder(
    root: str | os.PathLike, split: str = "train", follow_links: bool = False
) -> Collection:
    """List an image folder (see the module docstring) without opening any image."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    left = LeftOut()
    has_splits = (root / "train").is_dir() and (root / "test").is_dir()
    if has_splits:
        if split not in ("train", "test"):
            raise DataError(f"{root}: unknown split {split!r}; choose train or test")
        per = {s: _class_dirs(root / s, root, LeftOut(), follow_links) for s in ("train", "test")}
        classes = sorted({d.name for dirs in per.values() for d in dirs})
        folder = root / split
        dirs = _class_dirs(folder, root, left, follow_links)
        _top_level(folder, root, left, labelled=True)
    else:
        if split != "train":
            raise DataError(
                f"{root}: no train/ and test/ sub-folders, so it only has a 'train' split "
                f"(asked for {split!r})"
            )
        folder = root
        dirs = _class_dirs(root, root, left, follow_links)
        classes = [d.name for d in dirs]
    if not dirs and not has_splits:  # a flat folder: an unlabelled gallery
        ids = _top_level(root, root, left, labelled=False)
        if not ids:
            raise DataError(f"{root}: no images and no class sub-folders ({left.summary()})")
        return Collection(root, ids, None, [], left, str(root))
    if not has_splits:
        _top_level(root, root, left, labelled=True)
    index = {c: k for k, c in enumerate(classes)}
    labels = array("i")

    def files() -> Iterator[str]:  # one class folder's listing in memory at a time
        for d in dirs:
            found = _scan_class(d, root, left)
            if not found and not has_splits:
                raise DataError(f"{d}: the class folder holds no images ({IMAGE_SUFFIXES})")
            labels.extend(itertools.repeat(index[d.name], len(found)))
            yield from found

    coll = Collection(root, files(), None, classes, left, str(root))
    coll.labels = np.frombuffer(labels, dtype=np.int32).copy()
    if not len(coll):
        raise DataError(f"{folder}: no images")
    return coll


def _rows(path: Path) -> Iterable[tuple[int, str, str | None]]:
    """``(line number, path, label or None)`` of a .csv or .jsonl list."""
    with open(path, encoding="utf-8", newline="") as f:
        if path.suffix.lower() == ".jsonl":
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{n}: not a JSON object ({e.msg})") from None
                if not isinstance(obj, dict) or not isinstance(obj.get("path"), str):
                    raise DataError(f'{path}:{n}: expected {{"path": "...", "label": "..."}}')
                label = obj.get("label")
                yield n, obj["path"], None if label is None else str(label)
            return
        for n, row in enumerate(csv.reader(f), 1):
            if not row or not "".join(row).strip():
                continue
            if n == 1 and [c.strip().lower() for c in row[:2]] in (["path"], ["path", "label"]):
                continue
            if len(row) > 2:
                raise DataError(f"{path}:{n}: expected path[,label], got {len(row)} fields")
            yield n, row[0], (row[1] if len(row) == 2 and row[1] != "" else None)


def list_file(path: str | os.PathLike) -> Collection:
    """A .csv or .jsonl list of images (see the module docstring); files are not opened."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such list file")
    base = p.parent
    ids, names = [], []
    try:
        for n, item, label in _rows(p):
            if "\n" in item or "\r" in item:
                raise DataError(f"{p}:{n}: a path with a line break")
            ids.append(item)
            names.append((n, label))
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not UTF-8 text ({e.reason})") from None
    if not ids:
        raise DataError(f"{p}: lists no images")
    given = [lab is not None for _, lab in names]
    if any(given) and not all(given):
        n = next(n for n, lab in names if lab is None)
        raise DataError(f"{p}:{n}: no label, while other lines have one (label all or none)")
    if not any(given):
        return Collection(base, ids, None, [], LeftOut(), str(p))
    classes = sorted({lab for _, lab in names if lab is not None})
    index = {c: k for k, c in enumerate(classes)}
    return Collection(base, ids, [index[lab] for _, lab in names], classes, LeftOut(), str(p))
