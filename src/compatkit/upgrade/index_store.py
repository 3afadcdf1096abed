"""The versioned gallery on disk: memory-mapped ``.npy`` shards under a JSON manifest.

A retrieval service keeps its gallery's embeddings for years and upgrades the
model that made them now and then (Biondi et al., CVPR 2024, Sec. 1: the point
of compatible representations is never having to re-embed the gallery; when
an update is not compatible, the gallery is re-embedded, "backfilled", part by
part). During such a backfill the gallery holds vectors of two models at once,
so every vector must say which model made it. The layout of an index
directory ``IDX``::

    manifest.json            the root: versions, shards, source data; written last
    items.json               item ids, labels, class names (written once, at build)
    shards/000000.npy        (rows, dim) vectors of ONE model version, float16 or float32
    shards/000007.items.npy  int64 item positions of a backfill shard's rows
    checks.json              recorded `compatkit check` verdicts (see record_check)
    backfill.json            the plan of an unfinished backfill (only while one is pending)
    .lock, .checks.lock      advisory locks of the writers of the manifest, of checks.json

Every shard is written by one model, so a vector's model is its shard's
version (per-vector provenance without a per-vector table); each version's
fingerprint (the checkpoint's stored SHA-256) and contract are recorded once in
the manifest's ``versions`` list. Build shards hold the items in order (item
``start + r`` in row ``r``). A backfill never rewrites a shard: it appends a
shard holding the new vectors of some items, in increasing item order, and the
later shard wins; a shard none of whose rows is still live is dropped. So a
backfill step costs its own vectors in I/O, whatever the policy scattered them
over, and the disk holds at most the old and the new copy of each item.

Atomicity: every file is written to a temporary name in its folder, fsynced,
and renamed into place; the manifest is replaced last, so a reader sees the
old index or the new one, never a half-written shard. Writers hold ``.lock``
(one writer at a time); readers take no lock: they map every shard the
manifest names when they open the index, and a file removed after that stays
readable through its mapping.

Files are standard ``.npy`` (numpy's documented format, readable by any numpy
or by hand: a short header, then row-major little-endian data) and JSON; no
pickle anywhere.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import mmap
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .. import __version__
from ..errors import DataError, InputError
from ..runtime.files import file_lock, fsync_dir

__all__ = [
    "DTYPES",
    "FORMAT",
    "FORMAT_VERSION",
    "Block",
    "Gallery",
    "IndexBuilder",
    "IndexWriter",
    "atomic_write",
    "read_json",
    "write_json",
]

FORMAT = "compatkit-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ITEMS = "items.json"
CHECKS = "checks.json"
PLAN = "backfill.json"
LOCK = ".lock"
CHECKS_LOCK = ".checks.lock"
SHARDS = "shards"

DTYPES = ("float16", "float32")
"""Storage dtypes. float16 (default) halves the disk and the memory a search maps; its
relative rounding (2^-11, about 5e-4) is far below the cosine gaps retrieval decides on."""

DEFAULT_SHARD_ROWS = 65536
"""Rows per build shard: 128 MiB of float16 at d = 1023, so a search maps and releases
the gallery in pieces of that size (the 4 GiB resident-memory budget of a 1M gallery)."""

BLOCK_ROWS = 65536
"""Rows a search scores at once (float32 copy: 256 MiB at d = 1023)."""


def utc_now() -> str:
    """The time of a record, in UTC, to the second (ISO 8601)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- atomic files


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temporary file next to ``path``, fsync it, rename it to ``path``.

    A crash at any point leaves the previous ``path`` (or none) and, at worst, a
    ``.name.*.tmp`` file that the next writer removes; never half a file at ``path``.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as JSON (NaN refused: it is not JSON)."""
    data = json.dumps(obj, indent=1, allow_nan=False).encode() + b"\n"
    atomic_write(path, lambda f: f.write(data))


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file of the index; a missing or malformed file is a DataError naming it."""
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise DataError(f"{what} {path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{what} {path}: not valid JSON ({e}); the file is corrupt") from None


class _HashingWriter:
    """A file wrapper that hashes what goes through it (np.save writes via ``write``)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.h = f, hashlib.sha256()

    def write(self, b) -> int:
        self.h.update(b)
        return self.f.write(b)


def save_npy(path: Path, array: np.ndarray) -> str:
    """Atomically write ``array`` as ``.npy``; returns the SHA-256 of the file's bytes."""
    out: dict[str, str] = {}

    def write(f: BinaryIO) -> None:
        w = _HashingWriter(f)
        np.save(w, np.ascontiguousarray(array), allow_pickle=False)
        out["sha"] = w.h.hexdigest()

    atomic_write(path, write)
    return out["sha"]


def map_npy(path: Path, dtype: str, shape: tuple[int, ...]) -> tuple[np.ndarray, mmap.mmap | None]:
    """Memory-map a ``.npy`` file read-only and check its dtype and shape.

    The mapping is made here rather than with ``np.load(mmap_mode="r")`` so that the
    caller holds the ``mmap`` object and can tell the kernel when it has finished with a
    range (:meth:`Gallery.release`): a full scan of a 2 GB gallery then does not keep 2 GB
    of file pages in the process's resident set.
    """
    try:
        f = open(path, "rb")  # closed below; the mapping outlives the file object
    except FileNotFoundError:
        raise DataError(f"index shard {path}: no such file") from None
    with f:
        try:
            major, _ = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0
                if major == 1
                else np.lib.format.read_array_header_2_0
            )
            fshape, fortran, fdtype = read_header(f)
        except (ValueError, OSError) as e:
            raise DataError(f"index shard {path}: not a valid .npy file ({e})") from None
        offset = f.tell()
        size = os.fstat(f.fileno()).st_size
        if fortran or fdtype != np.dtype(dtype) or tuple(fshape) != tuple(shape):
            raise DataError(
                f"index shard {path}: holds {fdtype} {tuple(fshape)}"
                f"{' (Fortran order)' if fortran else ''} but the manifest says "
                f"{dtype} {tuple(shape)}"
            )
        need = offset + int(np.prod(shape)) * np.dtype(dtype).itemsize
        if size < need:
            raise DataError(
                f"index shard {path}: truncated ({size} bytes, {need} expected); "
                "the file is corrupt"
            )
        if size == 0 or np.prod(shape) == 0:
            return np.zeros(shape, dtype=dtype), None  # mmap refuses empty files
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    arr = np.frombuffer(mm, dtype=dtype, count=int(np.prod(shape)), offset=offset)
    return arr.reshape(shape), mm


# ----------------------------------------------------------------------------- the manifest


def _fail(path: Path, why: str) -> DataError:
    return DataError(f"index manifest {path}: {why}")


def _check_manifest(m: Any, path: Path) -> dict:
    """Validate the manifest's structure; every problem names the file and the field."""
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise _fail(path, f"not a compatkit index (format is not {FORMAT!r})")
    v = m.get("format_version")
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise _fail(path, f"invalid format_version {v!r}")
    if v > FORMAT_VERSION:
        raise _fail(
            path,
            f"format version {v} is newer than this compatkit ({__version__}) reads "
            f"(up to {FORMAT_VERSION}); upgrade compatkit",
        )
    for key, typ in (
        ("count", int),
        ("dim", int),
        ("dtype", str),
        ("generation", int),
        ("next_shard", int),
        ("versions", list),
        ("shards", list),
        ("source", dict),
    ):
        if not isinstance(m.get(key), typ) or isinstance(m.get(key), bool):
            raise _fail(path, f"field {key!r} is missing or not a {typ.__name__}")
    if m["dtype"] not in DTYPES:
        raise _fail(path, f"dtype {m['dtype']!r} is not one of {list(DTYPES)}")
    if m["count"] < 1 or m["dim"] < 1:
        raise _fail(path, f"count {m['count']} and dim {m['dim']} must be positive")
    for i, ver in enumerate(m["versions"]):
        if not (
            isinstance(ver, dict)
            and isinstance(ver.get("fingerprint"), str)
            and isinstance(ver.get("contract"), dict)
        ):
            raise _fail(path, f"versions[{i}] lacks a fingerprint or contract")
    for i, sh in enumerate(m["shards"]):
        ok = (
            isinstance(sh, dict)
            and isinstance(sh.get("file"), str)
            and isinstance(sh.get("rows"), int)
            and sh["rows"] >= 1
            and isinstance(sh.get("version"), int)
            and 0 <= sh["version"] < len(m["versions"])
            and (isinstance(sh.get("start"), int) or isinstance(sh.get("items"), str))
        )
        if not ok:
            raise _fail(path, f"shards[{i}] is malformed ({sh!r:.120})")
        for key in ("file", "items"):
            name = sh.get(key)
            if isinstance(name, str) and (Path(name).is_absolute() or ".." in Path(name).parts):
                raise _fail(path, f"shards[{i}].{key} {name!r} points outside the index")
    return m


@dataclass(frozen=True)
class Block:
    """Consecutive rows of one shard, as a search scans them."""

    vectors: np.ndarray
    """``(rows, dim)`` stored vectors (a view of the mapped file; float16 or float32)."""
    items: np.ndarray
    """``(rows,)`` int64 item positions of those rows, increasing."""
    live: np.ndarray
    """``(rows,)`` bool: whether the row is its item's current vector (not superseded)."""
    version: int
    """Index into the manifest's ``versions`` of the model that wrote the rows."""


class Gallery:
    """A read-only snapshot of an index: the manifest of one moment and its mapped shards.

    Opening maps every shard the manifest names (nothing is read yet), so a writer that
    commits and deletes files afterwards cannot pull them from under this snapshot.
    """

    def __init__(self, root: Path, manifest: dict, items: dict) -> None:
        self.root = root
        self.manifest = manifest
        self.ids: list[str] = items["ids"]
        self.labels: np.ndarray | None = (
            None if items.get("labels") is None else np.asarray(items["labels"], dtype=np.int64)
        )
        self.classes: list[str] | None = items.get("classes")
        self.items = items
        self._maps: list[tuple[np.ndarray, mmap.mmap | None]] = []
        self._positions: list[np.ndarray] = []
        for i, sh in enumerate(manifest["shards"]):
            self._positions.append(self._read_positions(i, sh))
            self._maps.append(map_npy(root / sh["file"], self.dtype, (sh["rows"], self.dim)))
        self._locate()

    # --- opening
    @classmethod
    def open(cls, root: str | os.PathLike, retries: int = 3) -> Gallery:
        """Open the index at ``root``. A shard deleted by a concurrent writer between the
        manifest read and its mapping means a newer manifest exists: read it again."""
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"index {root}: no such directory")
        path = root / MANIFEST
        for attempt in range(retries + 1):
            manifest = _check_manifest(read_json(path, "index manifest"), path)
            items = _read_items(root, manifest)
            try:
                return cls(root, manifest, items)
            except DataError:
                newer = read_json(path, "index manifest").get("generation")
                if attempt == retries or newer == manifest["generation"]:
                    raise
        raise AssertionError("unreachable")

    def _read_positions(self, i: int, sh: dict) -> np.ndarray:
        if isinstance(sh.get("start"), int):
            start = sh["start"]
            if start < 0 or start + sh["rows"] > self.count:
                raise _fail(self.root / MANIFEST, f"shards[{i}] covers items past {self.count}")
            return np.arange(start, start + sh["rows"], dtype=np.int64)
        path = self.root / sh["items"]
        try:
            pos = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise DataError(f"index shard items {path}: no such file") from None
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"index shard items {path}: not a valid .npy file ({e})") from None
        ok = (
            pos.dtype == np.int64
            and pos.shape == (sh["rows"],)
            and (pos.size == 0 or (pos[0] >= 0 and pos[-1] < self.count))
            and bool(np.all(np.diff(pos) > 0))
        )
        if not ok:
            raise DataError(
                f"index shard items {path}: expected {sh['rows']} increasing int64 item "
                f"positions below {self.count}, got {pos.dtype} {pos.shape}"
            )
        return pos

    def _locate(self) -> None:
        """Where each item's current vector is: the last shard (in manifest order) holding it."""
        n = self.count
        self.shard_of = np.full(n, -1, dtype=np.int64)
        self.row_of = np.zeros(n, dtype=np.int64)
        for s, pos in enumerate(self._positions):
            self.shard_of[pos] = s
            self.row_of[pos] = np.arange(pos.size)
        missing = np.flatnonzero(self.shard_of < 0)
        if missing.size:
            raise _fail(
                self.root / MANIFEST,
                f"{missing.size} item(s) have no vector (first: position {int(missing[0])})",
            )
        shard_version = np.array([sh["version"] for sh in self.shards], dtype=np.int64)
        self.version_of = shard_version[self.shard_of]
        """Per item: index into ``versions`` of the model its current vector comes from."""

    # --- facts
    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def dtype(self) -> str:
        return str(self.manifest["dtype"])

    @property
    def versions(self) -> list[dict]:
        return self.manifest["versions"]

    @property
    def shards(self) -> list[dict]:
        return self.manifest["shards"]

    @property
    def generation(self) -> int:
        return int(self.manifest["generation"])

    def version_index(self, fingerprint: str) -> int | None:
        """Index of the version with this fingerprint, or None."""
        for i, v in enumerate(self.versions):
            if v["fingerprint"] == fingerprint:
                return i
        return None

    def counts_by_version(self) -> dict[int, int]:
        """Live vectors per version index (versions with none are left out)."""
        vals, counts = np.unique(self.version_of, return_counts=True)
        return {int(v): int(c) for v, c in zip(vals, counts, strict=True)}

    def live_versions(self) -> list[int]:
        """Indices of the versions that hold at least one current vector."""
        return sorted(self.counts_by_version())

    def live_mask(self, s: int) -> np.ndarray:
        return self.shard_of[self._positions[s]] == s

    # --- reading vectors
    def blocks(self, rows: int = BLOCK_ROWS) -> Iterator[Block]:
        """The live and dead rows of every shard, ``rows`` at a time, in manifest order.

        After a shard is scanned its pages are handed back to the kernel
        (``madvise(MADV_DONTNEED)``): they stay in the page cache for the next search
        but leave this process's resident set.
        """
        for s in range(len(self.shards)):
            arr = self._maps[s][0]
            pos, live = self._positions[s], self.live_mask(s)
            for a in range(0, pos.size, rows):
                yield Block(
                    arr[a : a + rows],
                    pos[a : a + rows],
                    live[a : a + rows],
                    self.shards[s]["version"],
                )
            self.release(s)

    def release(self, s: int) -> None:
        """Drop shard ``s``'s pages from the resident set (they stay in the page cache)."""
        mm = self._maps[s][1]
        if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            mm.madvise(mmap.MADV_DONTNEED)

    def vectors(
        self, positions: Sequence[int] | np.ndarray | None = None, dtype=np.float32
    ) -> np.ndarray:
        """The current vectors of the items at ``positions`` (all items by default), in
        that order, as ``dtype`` (float32: the stored float16 values exactly)."""
        pos = (
            np.arange(self.count, dtype=np.int64)
            if positions is None
            else np.asarray(positions, dtype=np.int64)
        )
        out = np.empty((pos.size, self.dim), dtype=dtype)
        shard = self.shard_of[pos]
        for s in np.unique(shard):
            sel = np.flatnonzero(shard == s)
            rows = self.row_of[pos[sel]]
            order = np.argsort(rows, kind="stable")  # read the file front to back
            out[sel[order]] = self._maps[s][0][rows[order]]
            self.release(int(s))
        return out

    def file_sizes(self) -> int:
        """Bytes of the shard files this snapshot maps."""
        return sum((self.root / sh["file"]).stat().st_size for sh in self.shards)


def _read_items(root: Path, manifest: dict) -> dict:
    path = root / ITEMS
    items = read_json(path, "index items")
    n = manifest["count"]
    if not isinstance(items, dict) or not isinstance(items.get("ids"), list):
        raise DataError(f"index items {path}: no 'ids' list")
    if len(items["ids"]) != n:
        raise DataError(f"index items {path}: {len(items['ids'])} ids but the index holds {n}")
    labels, classes = items.get("labels"), items.get("classes")
    if labels is not None:
        if not isinstance(labels, list) or len(labels) != n:
            raise DataError(f"index items {path}: 'labels' must be a list of {n} ints")
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise DataError(f"index items {path}: labels without a 'classes' list of names")
        lab = np.asarray(labels)
        if lab.dtype.kind not in "iu" or (
            lab.size and (lab.min() < 0 or lab.max() >= len(classes))
        ):
            raise DataError(f"index items {path}: labels must index the {len(classes)} classes")
    return items


# ----------------------------------------------------------------------------- writing


@contextlib.contextmanager
def locked(root: Path, name: str = LOCK, wait_s: float = 30.0) -> Iterator[None]:
    """Hold the lock file ``name`` of the index; refuse after ``wait_s`` seconds of waiting."""
    try:
        import fcntl  # noqa: F401  (file_lock needs it)
    except ImportError:  # pragma: no cover - no advisory locks: a single writer is assumed
        yield
        return

    def refuse() -> InputError:
        return InputError(
            f"index {root}: another compatkit process is writing it (lock {name} "
            f"held for {wait_s:.0f} s); wait for it to finish"
        )

    with file_lock(root / name, wait_s, refuse):
        yield


def _version_entry(fingerprint: str, contract: dict, model: str, extra: dict | None) -> dict:
    return {
        "fingerprint": str(fingerprint),
        "contract": contract,
        "model": str(model),
        "added": utc_now(),
        **(extra or {}),
    }


class IndexWriter:
    """The one writer of an existing index: holds its lock; each change is one commit.

    Use as a context manager. On entry, files a killed writer left behind (temporary
    files, shards written but never committed) are removed.
    """

    def __init__(self, root: str | os.PathLike, wait_s: float = 30.0) -> None:
        self.root = Path(root)
        self._lock = locked(self.root, LOCK, wait_s) if self.root.is_dir() else None
        self.gallery: Gallery

    def __enter__(self) -> IndexWriter:
        if self._lock is None:
            raise DataError(f"index {self.root}: no such directory")
        self._lock.__enter__()
        try:
            self.gallery = Gallery.open(self.root)
            self._sweep()
        except BaseException as e:
            self._lock.__exit__(type(e), e, e.__traceback__)
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._lock.__exit__(*exc)

    @property
    def manifest(self) -> dict:
        return self.gallery.manifest

    def _sweep(self) -> None:
        """Remove shard files no manifest names, and temporary files (a killed writer's)."""
        keep = {sh["file"] for sh in self.manifest["shards"]}
        keep |= {sh["items"] for sh in self.manifest["shards"] if "items" in sh}
        shards = self.root / SHARDS
        for p in shards.iterdir() if shards.is_dir() else ():
            if f"{SHARDS}/{p.name}" not in keep:
                p.unlink(missing_ok=True)
        for p in self.root.glob(".*.tmp"):
            p.unlink(missing_ok=True)

    def add_version(
        self, fingerprint: str, contract: dict, model: str, extra: dict | None = None
    ) -> int:
        """Index of the version ``fingerprint``; a new one is recorded in the next commit."""
        known = self.gallery.version_index(fingerprint)
        if known is not None:
            return known
        self.manifest["versions"].append(_version_entry(fingerprint, contract, model, extra))
        return len(self.manifest["versions"]) - 1

    def write_vectors(self, positions: np.ndarray, vectors: np.ndarray, version: int) -> None:
        """Replace the vectors of the items at ``positions`` (increasing) in one commit.

        The new shard and its item list are written and fsynced first, then the manifest
        that names them; shards left without a live row are dropped from the manifest and
        their files deleted after it. A crash before the manifest is replaced loses only
        this step (the next writer sweeps its files); after, the step is durable.
        """
        pos = np.asarray(positions, dtype=np.int64)
        vec = np.asarray(vectors)
        if pos.ndim != 1 or pos.size == 0 or np.any(np.diff(pos) <= 0):
            raise ValueError("positions must be a non-empty increasing sequence")
        if vec.shape != (pos.size, self.gallery.dim):
            raise ValueError(f"vectors must be ({pos.size}, {self.gallery.dim}), got {vec.shape}")
        if pos[0] < 0 or pos[-1] >= self.gallery.count:
            raise ValueError(f"positions must lie in [0, {self.gallery.count})")
        m = json.loads(json.dumps(self.manifest))  # a copy to edit; the old stays valid
        seq = m["next_shard"]
        name = f"{SHARDS}/{seq:06d}.npy"
        items = f"{SHARDS}/{seq:06d}.items.npy"
        save_npy(self.root / items, pos)
        sha = save_npy(self.root / name, vec.astype(m["dtype"], copy=False))
        m["shards"].append(
            {"file": name, "items": items, "rows": int(pos.size), "version": version, "sha256": sha}
        )
        m["next_shard"] = seq + 1
        m["generation"] += 1
        m["updated"] = utc_now()
        # Which shards still hold a live row once this one is added?
        shard_of = self.gallery.shard_of.copy()
        shard_of[pos] = len(m["shards"]) - 1
        alive = np.zeros(len(m["shards"]), dtype=bool)
        alive[np.unique(shard_of)] = True
        dropped = [sh for s, sh in enumerate(m["shards"]) if not alive[s]]
        m["shards"] = [sh for s, sh in enumerate(m["shards"]) if alive[s]]
        write_json(self.root / MANIFEST, m)
        for sh in dropped:
            for key in ("file", "items"):
                if key in sh:
                    (self.root / sh[key]).unlink(missing_ok=True)
        self.gallery = Gallery(self.root, m, self.gallery.items)

    # --- side files (written under the same lock)
    def write_side(self, name: str, obj: Any) -> None:
        write_json(self.root / name, obj)

    def remove_side(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)
        fsync_dir(self.root)


class IndexBuilder:
    """Writes a new index into a temporary folder, shard by shard, and renames it into place.

    ``add`` takes vectors in item order as they are embedded (a gallery larger than
    memory streams through); ``finish`` writes the items, then the manifest, then renames
    the folder to ``out``: until then nothing exists at ``out``.
    """

    def __init__(
        self,
        out: str | os.PathLike,
        dim: int,
        dtype: str = "float16",
        shard_rows: int = DEFAULT_SHARD_ROWS,
        source: dict | None = None,
    ) -> None:
        self.out = Path(out)
        if dtype not in DTYPES:
            raise InputError(f"--dtype {dtype!r}: use one of {list(DTYPES)}")
        if shard_rows < 1:
            raise InputError(f"shard rows must be positive, got {shard_rows}")
        if self.out.exists():
            raise InputError(
                f"--out {self.out}: already exists; choose a new path or delete it first"
            )
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", dir=self.out.parent))
        (self.tmp / SHARDS).mkdir()
        self.dim, self.dtype, self.shard_rows = int(dim), dtype, int(shard_rows)
        self.manifest: dict = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "compatkit_version": __version__,
            "created": utc_now(),
            "generation": 0,
            "count": 0,
            "dim": self.dim,
            "dtype": dtype,
            "next_shard": 0,
            "source": source or {},
            "versions": [],
            "shards": [],
        }
        self._buf: list[np.ndarray] = []
        self._buffered = 0
        self._version: int | None = None

    def __enter__(self) -> IndexBuilder:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:
            self.abort()

    def set_version(
        self, fingerprint: str, contract: dict, model: str, extra: dict | None = None
    ) -> None:
        """The model that embeds what follows (a build has one)."""
        self.manifest["versions"].append(_version_entry(fingerprint, contract, model, extra))
        self._version = len(self.manifest["versions"]) - 1

    def add(self, vectors: np.ndarray) -> None:
        """Append the vectors of the next items (float32 or narrower, ``(n, dim)``)."""
        v = np.asarray(vectors)
        if v.ndim != 2 or v.shape[1] != self.dim:
            raise ValueError(f"vectors must be (n, {self.dim}), got {v.shape}")
        if self._version is None:
            raise RuntimeError("set_version before add")
        self._buf.append(v.astype(self.dtype))
        self._buffered += v.shape[0]
        while self._buffered >= self.shard_rows:
            self._flush(self.shard_rows)

    def _flush(self, rows: int) -> None:
        data = np.concatenate(self._buf) if len(self._buf) > 1 else self._buf[0]
        shard, rest = data[:rows], data[rows:]
        self._buf, self._buffered = ([rest] if rest.shape[0] else []), rest.shape[0]
        m = self.manifest
        name = f"{SHARDS}/{m['next_shard']:06d}.npy"
        sha = save_npy(self.tmp / name, shard)
        m["shards"].append(
            {
                "file": name,
                "start": m["count"],
                "rows": int(rows),
                "version": self._version,
                "sha256": sha,
            }
        )
        m["count"] += int(rows)
        m["next_shard"] += 1

    def finish(
        self, ids: Sequence[str], labels: Sequence[int] | None, classes: Sequence[str] | None
    ) -> Path:
        """Write the remaining shard, ``items.json`` and the manifest; rename into place."""
        if self._buffered:
            self._flush(self._buffered)
        n = self.manifest["count"]
        if n == 0:
            raise InputError("the gallery is empty: no item to index")
        ids = [str(i) for i in ids]
        if len(ids) != n or len(set(ids)) != n:
            raise InputError(
                f"need {n} distinct item ids, got {len(ids)} ({len(set(ids))} distinct)"
            )
        items = {"ids": ids, "labels": None, "classes": None}
        if labels is not None:
            items["labels"] = [int(x) for x in labels]
            items["classes"] = [str(c) for c in classes or []]
            if len(items["labels"]) != n:
                raise InputError(f"need {n} labels, got {len(items['labels'])}")
            if not all(0 <= y < len(items["classes"]) for y in items["labels"]):
                raise InputError(f"labels must index the {len(items['classes'])} class names")
        write_json(self.tmp / ITEMS, items)
        write_json(self.tmp / MANIFEST, self.manifest)
        fsync_dir(self.tmp / SHARDS)
        try:
            os.rename(self.tmp, self.out)  # atomic; fails if out appeared meanwhile
        except OSError as e:
            self.abort()
            raise InputError(f"--out {self.out}: cannot create the index there ({e})") from None
        fsync_dir(self.out.parent)
        return self.out

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
