"""``compatkit index build``: embed a gallery and write it into a vector database.

Each item becomes one entity: its position (the key of every later write), its id (the
image's path in the folder, or ``split/index`` of a dataset), label and class name, the
fingerprint of the model that embedded it, and its unit vector (float16 where the engine
stores it). The records of :mod:`.ledger` follow the vectors, the ``gallery`` record last:
a gallery without it is an interrupted build, refused by every reader. A local gallery
(a LanceDB folder, a Milvus Lite file) is written under a temporary name beside ``IDX``
and renamed into place at the end, so an interrupted build leaves nothing at ``IDX``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from ..errors import InputError
from .index import Gallery, embed_in_chunks, load_for_model, progress
from .ledger import gallery_record, version_record
from .store import (
    DEFAULT_TIMEOUT,
    Rows,
    create_store,
    default_dtype,
    engine_of,
    index_types,
    is_remote,
)

__all__ = ["build_index", "optimize_index", "source_of"]

DTYPES = ("auto", "float16", "float32")


def source_of(spec: str, split: str | None) -> dict:
    """Where the gallery's images come from, so that a backfill can read them again."""
    from .data import parse_spec

    kind, where, chosen = parse_spec(spec, split)
    if kind == "folder":
        where = str(Path(where).resolve())
    return {"kind": kind, "data": where, "split": chosen}


def _check_out(out: str) -> None:
    if engine_of(out) != "milvus" and not is_remote(out) and os.path.lexists(out):
        raise InputError(f"--out {out}: already exists; choose a new path or delete it first")


def build_index(
    model: str | os.PathLike,
    data: str,
    out: str | os.PathLike,
    dtype: str = "auto",
    split: str | None = None,
    batch_size: int = 256,
    device: str | None = "cpu",
    collection: str | None = None,
    index_type: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Embed the images of ``data`` with ``model`` into a new gallery ``out``; returns what
    ``index info`` shows of it."""
    from .embed import load_embedder
    from .info import describe

    say = progress(log)
    out = str(out)
    if dtype not in DTYPES:
        raise InputError(f"--dtype {dtype!r}: use one of {list(DTYPES)}")
    dtype = default_dtype(out) if dtype == "auto" else dtype
    if index_type is not None and index_type.upper() not in index_types(out):
        offered = list(index_types(out))
        raise InputError(f"--index-type {index_type!r}: this engine offers {offered}")
    _check_out(out)
    emb = load_embedder(model)
    images, ids = load_for_model(emb, data, split)
    if len(ids) == 0:
        raise InputError(f"data {data}: no image to index")
    if len(set(ids)) != len(ids):
        raise InputError(f"data {data}: item ids are not distinct")
    src = source_of(data, split)
    local = engine_of(out) != "milvus" and not is_remote(out)
    where = out
    if local:  # build beside OUT under a temporary name, renamed at the end
        parent = Path(out).resolve().parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{Path(out).name}.building-", dir=parent))
        tmp.rmdir()
        where = str(tmp) + (".db" if engine_of(out) == "milvus-lite" else "")
    store = create_store(where, emb.feat_dim, dtype, collection, timeout)
    try:
        labels = images.labels.numpy().astype(np.int64)
        names = [str(c) for c in images.classes]
        for pos, vec in embed_in_chunks(emb, images, batch_size=batch_size, device=device):
            store.add(
                Rows(
                    pos,
                    vec,
                    [ids[i] for i in pos],
                    labels[pos],
                    [names[labels[i]] for i in pos],
                    [emb.fingerprint] * pos.size,
                )
            )
            say(f"embedded {pos[-1] + 1}/{len(ids)} images")
        store.put_records({f"version/{emb.fingerprint}": version_record(emb, str(model))})
        store.put_records({"gallery": gallery_record(store, len(ids), names, src)})
        if index_type:
            say(f"building the {index_type.upper()} vector index")
            store.create_index(index_type)
    except BaseException:
        store.close()
        if local:
            shutil.rmtree(where, ignore_errors=True)
        raise
    store.close()
    if local:
        try:
            os.rename(where, out)  # atomic; refused if OUT appeared meanwhile
        except OSError as e:
            shutil.rmtree(where, ignore_errors=True)
            raise InputError(f"--out {out}: cannot create the gallery there ({e})") from None
    return describe(out, collection=collection, timeout=timeout)


def optimize_index(
    index: str | os.PathLike,
    index_type: str | None = None,
    params: Mapping | None = None,
    collection: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict | None:
    """Build (or replace) the approximate vector index, or bring it up to date."""
    with Gallery.open(index, collection, timeout) as g:
        if index_type:
            g.store.create_index(index_type, params)
        else:
            g.store.optimize()
        return g.store.index_info()
