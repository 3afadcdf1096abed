"""Where a gallery lives: one small interface (:class:`GalleryStore`), two engines.

``IDX`` picks the engine:

- a path or object-store URI (``gallery/``, ``s3://bucket/gallery``): LanceDB, embedded,
  the default (:mod:`.lancedb`);
- a path ending in ``.db``: a Milvus Lite file, embedded (:mod:`.milvus`);
- ``http://HOST:19530`` (or ``https://``), with a collection name: a Milvus server or
  cluster, through the same client code as Milvus Lite.
"""

from __future__ import annotations

from .base import COLUMNS, MARGIN, GalleryStore, Hits, Rows
from .local import is_remote

__all__ = [
    "COLUMNS",
    "DEFAULT_COLLECTION",
    "DEFAULT_TIMEOUT",
    "MARGIN",
    "GalleryStore",
    "Hits",
    "Rows",
    "create_store",
    "default_dtype",
    "engine_of",
    "index_types",
    "is_remote",
    "open_store",
]

DEFAULT_COLLECTION = "gallery"
"""Collection name of a Milvus Lite gallery (a server needs ``--collection``)."""
DEFAULT_TIMEOUT = 10.0
"""Seconds a Milvus server may take to answer before compatkit gives up (one line, exit 2)."""


def engine_of(uri: str) -> str:
    """``lancedb``, ``milvus-lite`` or ``milvus`` (a server) for an ``IDX``."""
    u = str(uri)
    if u.startswith(("http://", "https://", "tcp://", "grpc://")):
        return "milvus"
    if u.endswith(".db") and not is_remote(u):
        return "milvus-lite"
    return "lancedb"


def _collection(uri: str, collection: str | None) -> str:
    from ...errors import InputError

    if collection is None:
        if engine_of(uri) == "milvus":
            raise InputError(f"index {uri}: a Milvus server needs --collection NAME")
        return DEFAULT_COLLECTION
    if not (collection[:1].isalpha() or collection[:1] == "_") or not all(
        ch.isalnum() or ch == "_" for ch in collection
    ):
        raise InputError(
            f"--collection {collection!r}: letters, digits and '_', starting with a letter"
        )
    return collection


def open_store(
    uri: str, collection: str | None = None, timeout: float = DEFAULT_TIMEOUT
) -> GalleryStore:
    """The gallery at ``uri`` (a DataError when it is not one compatkit wrote)."""
    uri = str(uri)
    if engine_of(uri) == "lancedb":
        from .lancedb import LanceStore

        return LanceStore.open(uri)
    from .milvus import MilvusStore

    return MilvusStore.open(uri, _collection(uri, collection), timeout)


def create_store(
    uri: str,
    dim: int,
    dtype: str,
    collection: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> GalleryStore:
    """A new, empty gallery at ``uri``."""
    uri = str(uri)
    if engine_of(uri) == "lancedb":
        from .lancedb import LanceStore

        return LanceStore.create(uri, dim, dtype)
    from .milvus import MilvusStore

    return MilvusStore.create(uri, _collection(uri, collection), dim, dtype, timeout)


def index_types(uri: str) -> tuple[str, ...]:
    """The approximate index types the engine of ``uri`` offers."""
    if engine_of(uri) == "lancedb":
        from .lancedb import INDEX_TYPES
    else:
        from .milvus import INDEX_TYPES
    return INDEX_TYPES


def default_dtype(uri: str) -> str:
    """float16 where the engine stores it, float32 on Milvus Lite (no FLOAT16_VECTOR)."""
    return "float32" if engine_of(uri) == "milvus-lite" else "float16"
