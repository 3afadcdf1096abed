"""The gallery in LanceDB, the embedded default: a database folder (or object-store URI)
holding two tables, ``gallery`` (one row per item, vectors as a fixed-size list of float16
or float32) and ``compatkit`` (the records of :mod:`compatkit.upgrade.ledger`, key -> JSON).

Every write is one commit of a new table version (``merge_insert`` for a backfill chunk),
so a reader that opened the table keeps a consistent gallery while a writer commits, and a
killed writer leaves the last committed version. The approximate indexes are LanceDB's own
(IVF_FLAT, IVF_SQ, IVF_PQ, and HNSW inside IVF partitions: IVF_HNSW_SQ/PQ/FLAT); rows
written after an index was built are searched exhaustively until :meth:`optimize`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from ...errors import DataError, InputError
from .base import SCAN_ROWS, GalleryStore, Rows, pq_sub_vectors, reorder
from .local import check_tree, is_remote

__all__ = ["INDEX_TYPES", "LanceStore"]

GALLERY = "gallery"
RECORDS = "compatkit"
INDEX_TYPES = ("IVF_FLAT", "IVF_SQ", "IVF_PQ", "IVF_HNSW_SQ", "IVF_HNSW_PQ", "IVF_HNSW_FLAT")
IN_LIST = 8192
"""Positions per ``pos IN (...)`` filter of a fetch."""


def _lancedb():
    try:
        import lancedb
        import pyarrow
    except ImportError:
        raise InputError(
            "compatkit index on LanceDB needs lancedb: pip install 'compatkit[lancedb]'"
        ) from None
    return lancedb, pyarrow


def _quote(values: Sequence[str]) -> str:
    return ", ".join("'" + str(v).replace("'", "''") + "'" for v in values)


def _versions_filter(versions: Sequence[str] | None) -> str | None:
    if versions is None:
        return None
    return f"version IN ({_quote(versions) or repr('')})"


class LanceStore(GalleryStore):
    engine = "lancedb"

    def __init__(self, uri: str, db, dtype: str, dim: int) -> None:
        self.uri, self._db, self.dtype, self.dim = uri, db, dtype, dim
        self._t = db.open_table(GALLERY)
        self._r = db.open_table(RECORDS)

    # ------------------------------------------------------------------ open / create
    @classmethod
    def schemas(cls, dim: int, dtype: str):
        _, pa = _lancedb()
        vec = pa.float16() if dtype == "float16" else pa.float32()
        gallery = pa.schema(
            [
                pa.field("pos", pa.int64(), nullable=False),
                pa.field("item_id", pa.string(), nullable=False),
                pa.field("label", pa.int32(), nullable=False),
                pa.field("class_name", pa.string(), nullable=False),
                pa.field("version", pa.string(), nullable=False),
                pa.field("vector", pa.list_(vec, dim), nullable=False),
            ]
        )
        records = pa.schema(
            [
                pa.field("key", pa.string(), nullable=False),
                pa.field("value", pa.large_string(), nullable=False),
            ]
        )
        return gallery, records

    @classmethod
    def create(cls, uri: str, dim: int, dtype: str) -> LanceStore:
        lancedb, _ = _lancedb()
        if not is_remote(uri):
            Path(uri).mkdir(parents=True, exist_ok=False)
        db = lancedb.connect(uri)
        g, r = cls.schemas(dim, dtype)
        db.create_table(GALLERY, schema=g)
        db.create_table(RECORDS, schema=r)
        return cls(uri, db, dtype, dim)

    @classmethod
    def open(cls, uri: str) -> LanceStore:
        lancedb, pa = _lancedb()
        if not is_remote(uri):
            check_tree(Path(uri), "LanceDB database")
        try:
            db = lancedb.connect(uri)
            tables = set(db.list_tables().tables)
        except (OSError, RuntimeError, ValueError) as e:
            raise DataError(f"index {uri}: not a LanceDB database ({e})") from None
        if not {GALLERY, RECORDS} <= tables:
            raise DataError(
                f"index {uri}: not a compatkit gallery (a LanceDB database with tables "
                f"{sorted(tables)}; compatkit writes {GALLERY!r} and {RECORDS!r})"
            )
        try:
            schema = db.open_table(GALLERY).schema
            rschema = db.open_table(RECORDS).schema
        except (OSError, RuntimeError, ValueError) as e:
            raise DataError(f"index {uri}: its tables cannot be read ({e}); damaged") from None
        vec = schema.field("vector").type if "vector" in schema.names else None
        if not isinstance(vec, pa.FixedSizeListType) or str(vec.value_type) not in (
            "halffloat",
            "float",
        ):
            raise DataError(f"index {uri}: table {GALLERY!r} has no fixed-size vector column")
        dtype = "float16" if str(vec.value_type) == "halffloat" else "float32"
        want_g, want_r = cls.schemas(vec.list_size, dtype)
        if not schema.equals(want_g) or not rschema.equals(want_r):
            raise DataError(
                f"index {uri}: the tables' columns are not the ones compatkit writes "
                f"({', '.join(schema.names)}); damaged or foreign"
            )
        return cls(uri, db, dtype, vec.list_size)

    # ------------------------------------------------------------------ entities
    def _arrow(self, rows: Rows):
        _, pa = _lancedb()
        n = len(rows)
        vec = np.ascontiguousarray(rows.vectors, dtype=self.dtype).reshape(-1)
        return pa.table(
            {
                "pos": pa.array(rows.pos, pa.int64()),
                "item_id": pa.array(rows.ids, pa.string()),
                "label": pa.array(np.asarray(rows.labels, dtype=np.int32), pa.int32()),
                "class_name": pa.array(rows.classes or [""] * n, pa.string()),
                "version": pa.array(rows.versions, pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vec), self.dim),
            },
            schema=self.schemas(self.dim, self.dtype)[0],
        )

    def add(self, rows: Rows) -> None:
        self._t.add(self._arrow(rows))

    def upsert(self, rows: Rows) -> None:
        self._t.merge_insert("pos").when_matched_update_all().execute(self._arrow(rows))

    def delete(self, positions: Sequence[int]) -> None:
        pos = [int(p) for p in positions]
        for a in range(0, len(pos), IN_LIST):
            self._t.delete(f"pos IN ({', '.join(map(str, pos[a : a + IN_LIST]))})")

    def count(self, versions: Sequence[str] | None = None) -> int:
        return int(self._t.count_rows(_versions_filter(versions)))

    def _rows(self, batch, columns: Sequence[str]) -> Rows:
        cols = {name: batch.column(name) for name in columns}
        out = Rows(np.asarray(cols["pos"].to_numpy(zero_copy_only=False), dtype=np.int64))
        if "vector" in cols:
            v = cols["vector"]
            if v.null_count:
                raise DataError(f"index {self.uri}: {v.null_count} vectors are missing (null)")
            flat = v.flatten().to_numpy(zero_copy_only=False).reshape(-1, self.dim)
            out.vectors = flat.astype(np.float32)
        if "item_id" in cols:
            out.ids = cols["item_id"].to_pylist()
        if "label" in cols:
            out.labels = np.asarray(cols["label"].to_numpy(zero_copy_only=False), np.int64)
        if "class_name" in cols:
            out.classes = cols["class_name"].to_pylist()
        if "version" in cols:
            out.versions = cols["version"].to_pylist()
        return out

    def fetch(self, positions: Sequence[int], columns: Sequence[str]) -> Rows:
        _, pa = _lancedb()
        want = np.asarray(positions, dtype=np.int64)
        cols = list(dict.fromkeys(["pos", *columns]))
        parts = []
        uniq = np.unique(want)
        for a in range(0, uniq.size, IN_LIST):
            sel = ", ".join(map(str, uniq[a : a + IN_LIST].tolist()))
            q = self._t.search().where(f"pos IN ({sel})").select(cols).limit(None)
            parts.append(q.to_arrow())
        got = Rows(np.zeros(0, dtype=np.int64))
        table = pa.concat_tables(parts) if parts else None
        if table is not None and table.num_rows:
            got = self._rows(table.combine_chunks().to_batches()[0], cols)
        return reorder(got, want, self.uri)

    def scan(
        self, columns: Sequence[str], versions: Sequence[str] | None = None, rows: int = SCAN_ROWS
    ) -> Iterator[Rows]:
        """By ranges of positions, one query each: LanceDB's reader would otherwise hold the
        whole result in memory before its first batch. The table handle stays on one
        version, so the ranges read one consistent gallery; a last query picks up entities
        whose position lies outside 0..count-1 (damage, which ``verify`` reports)."""
        cols = list(dict.fromkeys(["pos", *columns]))
        vf = _versions_filter(versions)
        n = self.count()
        ranges = [f"pos >= {a} AND pos < {a + rows}" for a in range(0, n, rows)]
        for where in [*ranges, f"pos < 0 OR pos >= {n}"]:
            q = self._t.search().where(where if vf is None else f"({where}) AND {vf}")
            t = q.select(cols).limit(None).to_arrow()
            if t.num_rows:
                yield self._rows(t.combine_chunks().to_batches()[0], cols)

    def _index_candidates(
        self, q: np.ndarray, kk: int, versions: Sequence[str] | None, params: Mapping
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.index_info() is None:
            raise InputError(
                f"index {self.uri} has no approximate vector index: build one with "
                "`compatkit index optimize IDX --index-type TYPE`, or search exactly"
            )
        s = self._t.search(q, vector_column_name="vector").metric("dot").limit(kk)
        if params.get("nprobes"):
            s = s.nprobes(int(params["nprobes"]))
        if params.get("refine_factor"):
            s = s.refine_factor(int(params["refine_factor"]))
        if params.get("ef"):
            s = s.ef(max(int(params["ef"]), kk * int(params.get("refine_factor") or 1)))
        where = _versions_filter(versions)
        if where:
            s = s.where(where, prefilter=True)
        res = s.select(["pos", "vector"]).to_arrow()
        nq = q.shape[0]
        pos = np.zeros((nq, kk), dtype=np.int64)
        vec = np.zeros((nq, kk, self.dim), dtype=np.float32)
        valid = np.zeros((nq, kk), dtype=bool)
        if res.num_rows:
            got = self._rows(res.combine_chunks().to_batches()[0], ["pos", "vector"])
            qi = np.zeros(res.num_rows, dtype=np.int64)
            if "query_index" in res.column_names:
                qi = res.column("query_index").to_numpy()
            slot = np.zeros(nq, dtype=np.int64)
            for r in range(res.num_rows):
                i, j = int(qi[r]), int(slot[qi[r]])
                if j < kk:
                    pos[i, j], vec[i, j], valid[i, j] = got.pos[r], got.vectors[r], True
                    slot[i] += 1
        return pos, vec, valid

    # ------------------------------------------------------------------ vector index
    def create_index(self, index_type: str, params: Mapping | None = None) -> None:
        from lancedb import index as li

        t = str(index_type).upper()
        if t not in INDEX_TYPES:
            raise InputError(f"--index-type {index_type!r}: LanceDB offers {list(INDEX_TYPES)}")
        params = params or {}
        n = self.count()
        # IVF partitions: about sqrt(n), with at least 256 rows each on average
        parts = params.get("partitions") or max(1, min(round(math.sqrt(n)), n // 256))
        kw: dict = {"distance_type": "dot", "num_partitions": int(parts)}
        if params.get("iterations"):  # k-means training (LanceDB's defaults: 50 and 256)
            kw["max_iterations"] = int(params["iterations"])
        if params.get("sample_rate"):
            kw["sample_rate"] = int(params["sample_rate"])
        if t.endswith("PQ"):
            kw["num_sub_vectors"] = int(params.get("sub_vectors") or pq_sub_vectors(self.dim))
        config = {
            "IVF_FLAT": li.IvfFlat,
            "IVF_SQ": li.IvfSq,
            "IVF_PQ": li.IvfPq,
            "IVF_HNSW_SQ": li.IvfHnswSq,
            "IVF_HNSW_PQ": li.IvfHnswPq,
            "IVF_HNSW_FLAT": li.IvfHnswFlat,
        }[t](**kw)
        try:
            self._t.create_index("vector", config=config, replace=True)
        except (RuntimeError, ValueError, OSError) as e:
            raise InputError(f"index {self.uri}: LanceDB cannot build {t} here ({e})") from None

    def index_info(self) -> dict | None:
        for ix in self._t.list_indices():
            if list(ix.columns) == ["vector"]:
                stats = self._t.index_stats(ix.name)
                return {
                    "type": str(stats.index_type),
                    "indexed": int(stats.num_indexed_rows),
                    "unindexed": int(stats.num_unindexed_rows),
                }
        return None

    def optimize(self) -> None:
        self._t.optimize()

    def table_version(self) -> int:
        return int(self._t.version)

    # ------------------------------------------------------------------ records
    def _get_rows(self, keys: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        keys = list(keys)
        for a in range(0, len(keys), IN_LIST):
            q = self._r.search().where(f"key IN ({_quote(keys[a : a + IN_LIST])})")
            t = q.select(["key", "value"]).limit(None).to_arrow()
            keys_, values = t.column("key").to_pylist(), t.column("value").to_pylist()
            for k, v in zip(keys_, values, strict=True):
                if k in out:
                    raise DataError(f"index {self.uri}: record {k!r} is stored twice (damaged)")
                out[k] = v
        return out

    def _list_keys(self, prefix: str) -> list[str]:
        keys = self._r.search().select(["key"]).limit(None).to_arrow().column("key").to_pylist()
        return [k for k in keys if k.startswith(prefix)]

    def _put_rows(self, rows: Mapping[str, str]) -> None:
        _, pa = _lancedb()
        t = pa.table(
            {"key": list(rows), "value": list(rows.values())},
            schema=self.schemas(self.dim, self.dtype)[1],
        )
        (
            self._r.merge_insert("key")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute(t)
        )

    def _delete_rows(self, keys: Sequence[str]) -> None:
        keys = list(keys)
        for a in range(0, len(keys), IN_LIST):
            self._r.delete(f"key IN ({_quote(keys[a : a + IN_LIST])})")

    def size_bytes(self) -> int | None:
        """Bytes of the database folder (None on object storage)."""
        if is_remote(self.uri):
            return None
        return sum(
            os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(self.uri) for f in fs
        )
