"""Embeddings of a collection written as files a user scripts around.

For ``--out FEATS`` (``FEATS.npy`` or ``FEATS``):

- ``FEATS.npy``: ``(N, d)`` unit features, float32 or float16, row ``i`` for item ``i``;
- ``FEATS.ids.txt``: one id per line (the file's path relative to the data folder or as the
  list names it; ``split/index`` for a registered dataset), in row order;
- ``FEATS.labels.npy``: int32 class index per row, into ``classes`` of the JSON (only when
  every item has a class);
- ``FEATS.json``: the model (path, fingerprint, preprocessing), the data, the counts, what
  listing left out and the unreadable files skipped.

Rows are written as they are computed: the ``.npy`` header first names the number of items
listed and is rewritten, at the same length, with the number actually read, so memory holds
a few batches and the positions read (8 bytes per item) whatever the collection's size.
Every file is written to a temporary name and renamed when complete.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..data.stream import ReadReport
from ..runtime.files import atomic_write, atomic_write_json
from ..runtime.log import RunLog
from .data import open_items
from .embed import Embedder

__all__ = ["FORMAT", "embed_to_files", "npy_header", "output_paths"]

FORMAT = "compatkit-embeddings"


def output_paths(out: str | os.PathLike) -> dict[str, Path]:
    """The four files of ``--out``: features, ids, labels, json."""
    p = Path(out)
    base = p.with_suffix("") if p.suffix == ".npy" else p
    stem = base.name
    return {
        "features": base.with_name(stem + ".npy"),
        "ids": base.with_name(stem + ".ids.txt"),
        "labels": base.with_name(stem + ".labels.npy"),
        "json": base.with_name(stem + ".json"),
    }


def npy_header(rows: int, cols: int, dtype: np.dtype, length: int | None = None) -> bytes:
    """A version 1.0 ``.npy`` header for a C-order ``(rows, cols)`` array, padded with spaces
    to ``length`` bytes (a multiple of 64) so a smaller row count can overwrite it in place."""
    d = f"{{'descr': '{np.dtype(dtype).str}', 'fortran_order': False, 'shape': ({rows}, {cols}), }}"
    body = d.encode("latin1")
    if length is None:
        length = -(-(10 + len(body) + 1 + 16) // 64) * 64  # room for 16 more digits
    pad = length - 10 - len(body) - 1
    if pad < 0:
        raise ValueError("header longer than its reserved length")
    body += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body


def embed_to_files(
    emb: Embedder,
    data: str,
    out: str | os.PathLike,
    dtype: str = "float32",
    split: str | None = None,
    batch_size: int = 64,
    workers: int = 0,
    strict: bool = False,
    follow_links: bool = False,
    device: str | None = "cpu",
    log: RunLog | None = None,
) -> dict[str, Any]:
    """Embed every item of ``data`` with ``emb`` into the files of :func:`output_paths`;
    returns the JSON document written beside them."""
    log = log or RunLog(None, quiet=True)
    paths = output_paths(out)
    items = open_items(data, split, follow_links)
    if items.left_out():
        log.info(f"{data}: {items.left_out()}")
    n, d, dt = len(items), emb.feat_dim, np.dtype(dtype)
    rep = ReadReport()
    kept = np.empty(n, dtype=np.int64)
    state = {"rows": 0}
    t0 = time.perf_counter()

    def write_ids_and_features(ids_f: BinaryIO, feats_f: BinaryIO) -> None:
        head = npy_header(n, d, dt)
        feats_f.write(head)
        log.start(f"embed {n} images", -(-n // batch_size))
        try:
            for pos, f in emb.embed_items(
                items, batch_size, workers, strict, device, rep, lambda m: log.info(m)
            ):
                r = state["rows"]
                kept[r : r + len(pos)] = pos
                state["rows"] = r + len(pos)
                feats_f.write(np.ascontiguousarray(f.numpy().astype(dt)).tobytes())
                ids_f.write("".join(items.id(int(i)) + "\n" for i in pos).encode("utf-8"))
                rate = state["rows"] / max(1e-9, time.perf_counter() - t0)
                log.advance(f"{state['rows']}/{n} {rate:.0f} img/s")
        finally:
            log.finish()
        rows = state["rows"]
        if rows != n:  # files skipped: the header says the rows actually written
            feats_f.seek(0)
            feats_f.write(npy_header(rows, d, dt, len(head)))
            feats_f.seek(0, os.SEEK_END)

    atomic_write(
        paths["ids"],
        lambda ids_f: atomic_write(
            paths["features"], lambda feats_f: write_ids_and_features(ids_f, feats_f)
        ),
    )
    rows = state["rows"]
    seconds = time.perf_counter() - t0
    labelled = items.labelled
    if labelled:
        labels = items.labels[kept[:rows]].astype(np.int32)
        atomic_write(paths["labels"], lambda f: np.save(f, labels))
    elif paths["labels"].exists():
        paths["labels"].unlink()  # a stale file of an earlier run would pair wrongly
    doc = {
        "format": FORMAT,
        "format_version": 1,
        "model": {
            "path": emb.path,
            "fingerprint": emb.fingerprint,
            "format": emb.meta.get("format", "compatkit-checkpoint"),
            "feat_dim": d,
            "preprocess": emb.preprocess.to_dict() if emb.preprocess is not None else None,
        },
        "data": {"spec": data, "split": split, "listed": n},
        "count": rows,
        "dtype": dtype,
        "normalized": True,
        "classes": list(items.classes) if labelled else None,
        "files": {k: p.name for k, p in paths.items() if k != "labels" or labelled},
        "unreadable": {"count": rep.skipped, "first": rep.errors},
        "left_out": items.collection.left_out.to_dict() if items.collection is not None else {},
        "seconds": round(seconds, 3),
        "images_per_s": rows / max(seconds, 1e-9),
    }
    atomic_write_json(paths["json"], doc)
    return doc
