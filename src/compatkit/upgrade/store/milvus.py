"""The gallery in Milvus, from a file to a cluster, through one ``pymilvus`` client.

``IDX`` ending in ``.db`` is a Milvus Lite database (``milvus-lite``: embedded, a folder on
disk, no server); ``http://HOST:19530`` (with a collection name) is a Milvus server or
cluster. The code path is the same; what differs is what each serves:

- Milvus Lite serves one process at a time (a second opener is refused) and keeps the
  vectors as float32 (it has no FLOAT16_VECTOR); it suits small galleries and tests.
- A server stores float16 vectors, serves many readers and writers, and builds its indexes
  on its own nodes (IVF_FLAT, IVF_SQ8, IVF_PQ, HNSW, and DISKANN on disk).

Two collections: ``NAME`` (one entity per item, primary key ``pos``) and ``NAME_compatkit``
(the records of :mod:`compatkit.upgrade.ledger`; Milvus needs a vector field in every
collection, so it carries a constant 2-d one). Collections are created with Strong
consistency, so a search sees every write acknowledged before it.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from ...errors import DataError, InputError
from .base import SCAN_ROWS, GalleryStore, Rows, pq_sub_vectors, reorder, rescore
from .local import check_tree, is_remote

__all__ = ["INDEX_TYPES", "MilvusStore"]

INDEX_TYPES = ("IVF_FLAT", "IVF_SQ8", "IVF_PQ", "HNSW")
BATCH = 2048
"""Entities per insert or upsert request (8 MiB of float32 at d = 1023, well under the 64 MiB
a gRPC message may carry)."""
QUERY_MAX = 16384
"""Milvus answers at most this many entities per query or search (its topk limit)."""
ID_BYTES, CLASS_BYTES = 4096, 1024
"""Longest item id and class name (UTF-8 bytes) the gallery collection stores."""


def _pymilvus():
    try:
        import pymilvus
    except ImportError:
        raise InputError(
            "compatkit index on Milvus needs pymilvus (and milvus-lite for a .db file): "
            "pip install 'compatkit[milvus]'"
        ) from None
    # pymilvus and milvus-lite log every failure with its traceback: compatkit says one line
    for name in ("pymilvus", "milvus_lite", "grpc._server"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return pymilvus


def _lite_free(path: Path) -> None:
    """Refuse a Milvus Lite database another process holds (its ``LOCK`` flock)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no flock: Milvus Lite itself will refuse
        return
    with open(path / "LOCK", "rb") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(
                f"index {path} is open in another process: Milvus Lite serves one process at "
                "a time (a Milvus server serves many)"
            ) from None
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _check_lite(path: Path) -> None:
    """A Milvus Lite database is a folder with ``LOCK``, ``collections`` and ``databases``."""
    check_tree(path, "Milvus Lite database")
    if not ((path / "LOCK").is_file() and (path / "collections").is_dir()):
        raise DataError(f"index {path}: not a Milvus Lite database (no LOCK and collections)")


def _quote(values: Sequence[str]) -> str:
    """A Milvus filter's list of strings."""
    esc = (str(v).replace("\\", "\\\\").replace('"', '\\"') for v in values)
    return "[" + ", ".join(f'"{v}"' for v in esc) + "]"


class MilvusStore(GalleryStore):
    engine = "milvus"

    def __init__(self, uri: str, client, name: str, dtype: str, dim: int) -> None:
        self.uri, self._c, self.name, self.dtype, self.dim = uri, client, name, dtype, dim
        self.records = f"{name}_compatkit"
        self.lite = not is_remote(uri)

    # ------------------------------------------------------------------ open / create
    @staticmethod
    def connect(uri: str, timeout: float):
        pm = _pymilvus()
        if not is_remote(uri) and (Path(uri) / "LOCK").is_file():
            _lite_free(Path(uri))
        try:
            return pm.MilvusClient(uri=uri, timeout=timeout)
        except Exception as e:  # pymilvus and milvus-lite raise many kinds for one cause
            text = str(e)
            if "milvus-lite" in text.lower() or "milvus_lite" in text.lower():
                raise InputError(f"index {uri}: {text.strip()}; pip install milvus-lite") from None
            raise InputError(
                f"index {uri}: Milvus does not answer within {timeout:g} s ({type(e).__name__})"
            ) from None

    @classmethod
    def create(cls, uri: str, name: str, dim: int, dtype: str, timeout: float) -> MilvusStore:
        pm = _pymilvus()
        if not is_remote(uri) and dtype == "float16":
            raise InputError(
                "--dtype float16: Milvus Lite stores float32 vectors only (a Milvus server "
                "stores float16)"
            )
        c = cls.connect(uri, timeout)
        for n in (name, f"{name}_compatkit"):
            if c.has_collection(n):
                raise InputError(f"index {uri}: collection {n!r} already exists; choose another")
        dt = pm.DataType
        s = c.create_schema(auto_id=False, enable_dynamic_field=False)
        s.add_field("pos", dt.INT64, is_primary=True)
        s.add_field("item_id", dt.VARCHAR, max_length=ID_BYTES)
        s.add_field("label", dt.INT32)
        s.add_field("class_name", dt.VARCHAR, max_length=CLASS_BYTES)
        s.add_field("version", dt.VARCHAR, max_length=64)
        vt = dt.FLOAT16_VECTOR if dtype == "float16" else dt.FLOAT_VECTOR
        s.add_field("vector", vt, dim=dim)
        ip = c.prepare_index_params()
        ip.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
        c.create_collection(name, schema=s, index_params=ip, consistency_level="Strong")
        r = c.create_schema(auto_id=False, enable_dynamic_field=False)
        r.add_field("key", dt.VARCHAR, is_primary=True, max_length=512)
        r.add_field("value", dt.VARCHAR, max_length=65535)
        r.add_field("v", dt.FLOAT_VECTOR, dim=2)
        rp = c.prepare_index_params()
        rp.add_index(field_name="v", index_type="FLAT", metric_type="L2")
        c.create_collection(
            f"{name}_compatkit", schema=r, index_params=rp, consistency_level="Strong"
        )
        return cls(uri, c, name, dtype, dim)

    @classmethod
    def open(cls, uri: str, name: str, timeout: float) -> MilvusStore:
        pm = _pymilvus()
        if not is_remote(uri):
            _check_lite(Path(uri))
        c = cls.connect(uri, timeout)
        if not (c.has_collection(name) and c.has_collection(f"{name}_compatkit")):
            have = sorted(c.list_collections())
            raise DataError(
                f"index {uri}: no compatkit gallery {name!r} (collections: {have}; compatkit "
                f"writes {name!r} and {name + '_compatkit'!r})"
            )
        fields = {f["name"]: f for f in c.describe_collection(name)["fields"]}
        vec = fields.get("vector", {})
        kinds = {pm.DataType.FLOAT_VECTOR: "float32", pm.DataType.FLOAT16_VECTOR: "float16"}
        want = {"pos", "item_id", "label", "class_name", "version", "vector"}
        if set(fields) != want or vec.get("type") not in kinds:
            raise DataError(
                f"index {uri}: collection {name!r} has fields {sorted(fields)}, not the ones "
                "compatkit writes; damaged or foreign"
            )
        dim = int(vec.get("params", {}).get("dim", 0))
        for n in (name, f"{name}_compatkit"):
            c.load_collection(n)
        return cls(uri, c, name, kinds[vec["type"]], dim)

    def close(self) -> None:
        """Close the client; for Milvus Lite also stop its in-process server, which releases
        the database's lock for the next process."""
        with contextlib.suppress(Exception):
            self._c.close()
        if self.lite:
            with contextlib.suppress(Exception):
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(self.uri)

    # ------------------------------------------------------------------ entities
    def _entities(self, rows: Rows) -> list[dict]:
        vec = np.asarray(rows.vectors, dtype=np.float16 if self.dtype == "float16" else np.float32)
        n = len(rows)
        classes = rows.classes or [""] * n
        for i in range(n):
            if len(rows.ids[i].encode()) > ID_BYTES or len(classes[i].encode()) > CLASS_BYTES:
                raise InputError(
                    f"item {rows.ids[i][:80]!r}: ids of more than {ID_BYTES} bytes or class "
                    f"names of more than {CLASS_BYTES} do not fit a Milvus gallery"
                )
        return [
            {
                "pos": int(rows.pos[i]),
                "item_id": rows.ids[i],
                "label": int(rows.labels[i]),
                "class_name": classes[i],
                "version": rows.versions[i],
                "vector": vec[i],
            }
            for i in range(n)
        ]

    def add(self, rows: Rows) -> None:
        ents = self._entities(rows)
        for a in range(0, len(ents), BATCH):
            self._c.insert(self.name, ents[a : a + BATCH])

    def upsert(self, rows: Rows) -> None:
        ents = self._entities(rows)
        for a in range(0, len(ents), BATCH):
            self._c.upsert(self.name, ents[a : a + BATCH])

    def delete(self, positions: Sequence[int]) -> None:
        pos = [int(p) for p in positions]
        for a in range(0, len(pos), QUERY_MAX):
            self._c.delete(self.name, ids=pos[a : a + QUERY_MAX])

    def count(self, versions: Sequence[str] | None = None) -> int:
        where = "" if versions is None else f"version in {_quote(versions)}"
        res = self._c.query(self.name, filter=where, output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def _rows(self, ents: list[dict], columns: Sequence[str]) -> Rows:
        out = Rows(np.array([e["pos"] for e in ents], dtype=np.int64))
        if "vector" in columns:
            v = [np.asarray(e["vector"]) for e in ents]
            if v and v[0].dtype == np.uint8:  # float16 vectors come back as raw bytes
                v = [x.view(np.float16) for x in v]
            out.vectors = np.asarray(v, dtype=np.float32).reshape(len(ents), self.dim)
        if "item_id" in columns:
            out.ids = [e["item_id"] for e in ents]
        if "label" in columns:
            out.labels = np.array([e["label"] for e in ents], dtype=np.int64)
        if "class_name" in columns:
            out.classes = [e["class_name"] for e in ents]
        if "version" in columns:
            out.versions = [e["version"] for e in ents]
        return out

    def fetch(self, positions: Sequence[int], columns: Sequence[str]) -> Rows:
        want = np.asarray(positions, dtype=np.int64)
        cols = list(dict.fromkeys(["pos", *columns]))
        uniq = np.unique(want).tolist()
        ents: list[dict] = []
        for a in range(0, len(uniq), QUERY_MAX):
            ents += self._c.query(self.name, ids=uniq[a : a + QUERY_MAX], output_fields=cols)
        return reorder(self._rows(ents, cols), want, self.uri)

    def scan(
        self, columns: Sequence[str], versions: Sequence[str] | None = None, rows: int = SCAN_ROWS
    ) -> Iterator[Rows]:
        cols = list(dict.fromkeys(["pos", *columns]))
        where = "" if versions is None else f"version in {_quote(versions)}"
        it = self._c.query_iterator(
            self.name, batch_size=min(rows, QUERY_MAX), filter=where, output_fields=cols
        )
        try:
            while True:
                ents = it.next()
                if not ents:
                    break
                yield self._rows(ents, cols)
        finally:
            it.close()

    def _native(
        self, q: np.ndarray, kk: int, versions: Sequence[str] | None, params: Mapping
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidates from the engine's own search (its index, FLAT included)."""
        if kk > QUERY_MAX:
            raise InputError(f"-k {kk}: Milvus returns at most {QUERY_MAX - 16} neighbours")
        data = q.astype(np.float16) if self.dtype == "float16" else q
        sp: dict = {"metric_type": "IP", "params": {}}
        if params.get("nprobes"):
            sp["params"]["nprobe"] = int(params["nprobes"])
        if params.get("ef"):
            sp["params"]["ef"] = max(int(params["ef"]), kk)
        where = "" if versions is None else f"version in {_quote(versions)}"
        nq = q.shape[0]
        pos = np.zeros((nq, kk), dtype=np.int64)
        vec = np.zeros((nq, kk, self.dim), dtype=np.float32)
        valid = np.zeros((nq, kk), dtype=bool)
        step = max(1, QUERY_MAX // kk)  # nq x kk per request within Milvus's limit
        for a in range(0, nq, step):
            res = self._c.search(
                self.name,
                data=list(data[a : a + step]),
                limit=kk,
                filter=where,
                output_fields=["pos", "vector"],
                search_params=sp,
            )
            for i, hits in enumerate(res):
                if not hits:
                    continue
                got = self._rows([h["entity"] for h in hits], ["pos", "vector"])
                m = len(hits)
                pos[a + i, :m], vec[a + i, :m], valid[a + i, :m] = got.pos, got.vectors, True
        return pos, vec, valid

    def _index_candidates(self, q, kk, versions, params):
        if self.index_info() is None:
            raise InputError(
                f"index {self.uri} has no approximate vector index: build one with "
                "`compatkit index optimize IDX --index-type TYPE`, or search exactly"
            )
        return self._native(q, kk, versions, params)

    def _exact_candidates(self, q, kk, versions):
        if self.index_info() is not None:  # the field's one index is approximate: scan
            return super()._exact_candidates(q, kk, versions)
        pos, vec, valid = self._native(q, kk, versions, {})
        s, p = rescore(q, vec, pos, valid)
        order = np.lexsort((p, -s), axis=1)
        return np.take_along_axis(s, order, axis=1), np.take_along_axis(p, order, axis=1)

    # ------------------------------------------------------------------ vector index
    def create_index(self, index_type: str, params: Mapping | None = None) -> None:
        t = str(index_type).upper()
        if t not in INDEX_TYPES:
            raise InputError(f"--index-type {index_type!r}: Milvus offers {list(INDEX_TYPES)}")
        params = params or {}
        n = max(1, self.count())
        p: dict = {}
        if t.startswith("IVF"):
            nlist = params.get("partitions") or max(1, min(65536, round(4 * math.sqrt(n))))
            p["nlist"] = int(nlist)
        if t == "IVF_PQ":
            p["m"] = int(params.get("sub_vectors") or pq_sub_vectors(self.dim))
        if t == "HNSW":
            p.update(M=16, efConstruction=200)
        self._c.release_collection(self.name)
        self._c.drop_index(self.name, "vector")
        ip = self._c.prepare_index_params()
        # the build parameters both as keys (how pymilvus 3 sends them) and as one "params"
        # value (how Milvus Lite and earlier clients read them)
        ip.add_index(field_name="vector", index_type=t, metric_type="IP", params={**p, "params": p})
        try:
            self._c.create_index(self.name, ip)
        except Exception as e:
            # a build of minutes can outlast the client's gRPC keepalive; pymilvus then
            # repeats the request, which finds the index its first attempt made
            if "already exists" not in str(e) or self.index_info() is None:
                raise
        self._c.load_collection(self.name)

    def index_info(self) -> dict | None:
        d = self._c.describe_index(self.name, "vector")
        t = str(d.get("index_type", "FLAT")).upper()
        if t == "FLAT":
            return None
        return {
            "type": t,
            "indexed": d.get("indexed_rows"),
            "unindexed": d.get("pending_index_rows"),
        }

    # ------------------------------------------------------------------ records
    def _get_rows(self, keys: Sequence[str]) -> dict[str, str]:
        keys = list(keys)
        out: dict[str, str] = {}
        for a in range(0, len(keys), QUERY_MAX):
            got = self._c.query(
                self.records, ids=keys[a : a + QUERY_MAX], output_fields=["key", "value"]
            )
            out.update({e["key"]: e["value"] for e in got})
        return out

    def _list_keys(self, prefix: str) -> list[str]:
        it = self._c.query_iterator(
            self.records, batch_size=QUERY_MAX, filter="", output_fields=["key"]
        )
        keys: list[str] = []
        try:
            while ents := it.next():
                keys += [e["key"] for e in ents if e["key"].startswith(prefix)]
        finally:
            it.close()
        return keys

    def _put_rows(self, rows: Mapping[str, str]) -> None:
        ents = [{"key": k, "value": v, "v": [0.0, 0.0]} for k, v in rows.items()]
        self._c.upsert(self.records, ents)

    def _delete_rows(self, keys: Sequence[str]) -> None:
        keys = list(keys)
        for a in range(0, len(keys), QUERY_MAX):
            self._c.delete(self.records, ids=keys[a : a + QUERY_MAX])
