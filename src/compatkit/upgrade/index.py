"""The versioned gallery: build it in a vector database, search it, and decide which models
may query it.

A retrieval service that adopts a compatible update (Biondi et al., CVPR 2024,
Sec. 1 and Def. 1: the new model's queries against the old model's gallery
must do better than the old model did) serves queries of the new model against
vectors of the old one, and, during a partial backfill, of both. The vectors
live in a vector database (:mod:`.store`: LanceDB by default, Milvus from a file
to a cluster); this module is the layer above them that no database has:

- :func:`build_index`: embed a gallery with a model and store it, each vector
  tagged with the fingerprint of the model that made it;
- :func:`search_index`: embed queries with a model and search, after the
  compatibility gate below; with labelled queries, recall@1 and mAP too;
- :func:`record_check`: store a ``compatkit check`` verdict with the gallery,
  which is what the gate reads.

The gate (:func:`gate_problems`). A model M may search the gallery when, for
every version V that holds vectors in it now:

1. M's contract is compatible with V's (:func:`compatkit.checkpoint.check_compatible`:
   same feature dimension and input channels; for fixed heads the same kind, K,
   and every class on the same vertex), and
2. M *is* V, or the most recent recorded check between V and M (either
   direction) found the pair compatible.

A model refused by (1) or (2) is searched anyway with ``force=True``, with a
warning; a different feature dimension cannot be searched at all. Rule 2 reads
"either direction" because a recorded check measures one pair of models on one
query/gallery pair; the last word on that pair is the most recent verdict.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..checkpoint import check_compatible
from ..errors import DataError, IncompatibleModels
from .ledger import append_check, read_checks, read_gallery, read_versions
from .store import DEFAULT_TIMEOUT, GalleryStore, open_store

__all__ = [
    "Gallery",
    "class_lookup",
    "embed_all",
    "embed_in_chunks",
    "gate_problems",
    "load_for_model",
    "record_check",
    "require_dim",
    "require_searchable",
    "short",
]

EMBED_CHUNK = 8192
"""Images embedded (and vectors written) per step of a build or backfill."""


def short(fingerprint: str) -> str:
    """The first 12 hex digits: enough to tell versions apart in messages."""
    return str(fingerprint)[:12]


# ----------------------------------------------------------------------------- the gallery


@dataclass
class Gallery:
    """An opened gallery: its store and its records, every one checked (see
    :mod:`.ledger`), and how many vectors each version holds now."""

    store: GalleryStore
    doc: dict
    versions: list[dict]
    counts: dict[str, int]

    @classmethod
    def open(
        cls,
        index: str | os.PathLike,
        collection: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Gallery:
        store = open_store(str(index), collection, timeout)
        try:
            doc = read_gallery(store)
            versions = read_versions(store)
            counts = {v["fingerprint"]: store.count([v["fingerprint"]]) for v in versions}
            stray = doc["count"] - sum(counts.values())
            if stray:
                raise DataError(
                    f"index {store.uri}: {stray} vectors carry a model version the gallery "
                    "does not record; the gallery was damaged or edited"
                )
        except BaseException:
            store.close()
            raise
        return cls(store, doc, versions, counts)

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc) -> None:
        self.store.close()

    @property
    def uri(self) -> str:
        return self.store.uri

    @property
    def count(self) -> int:
        return int(self.doc["count"])

    @property
    def dim(self) -> int:
        return self.store.dim

    @property
    def classes(self) -> list[str] | None:
        return self.doc["classes"]

    def version(self, fingerprint: str) -> dict | None:
        return next((v for v in self.versions if v["fingerprint"] == fingerprint), None)

    def live_versions(self) -> list[dict]:
        """The versions that hold at least one vector now."""
        return [v for v in self.versions if self.counts[v["fingerprint"]] > 0]

    def vectors(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        """The stored vectors (float32, exactly the stored values) of ``positions``."""
        return self.store.fetch(positions, ("vector",)).vectors

    def column(self, name: str) -> np.ndarray | list:
        """One column of every item, in position order (a scan)."""
        out: list = [None] * self.count
        for rows in self.store.scan((name,)):
            vals = {"label": rows.labels, "version": rows.versions, "item_id": rows.ids}[name]
            for p, v in zip(rows.pos.tolist(), vals, strict=True):
                out[p] = v
        return np.asarray(out, dtype=np.int64) if name == "label" else out


# ----------------------------------------------------------------------------- data + model


def load_for_model(emb, spec: str, split: str | None = None):
    """``(ImageSet, ids)`` of ``spec`` at the embedder's input size and channels."""
    from .data import load_user_items

    c, h, w = emb.input_size
    size = h if h is not None and h == w else None
    return load_user_items(spec, split, image_size=size, channels=c)


def embed_in_chunks(
    emb,
    data,
    positions: Sequence[int] | np.ndarray | None = None,
    chunk: int = EMBED_CHUNK,
    batch_size: int = 256,
    device: str | None = "cpu",
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(positions, float32 unit vectors)`` of ``data``'s items, ``chunk`` items at a time.
    A model that outputs NaN or infinity is refused before anything is stored."""
    pos = np.arange(len(data)) if positions is None else np.asarray(positions, dtype=np.int64)
    for a in range(0, pos.size, chunk):
        p = pos[a : a + chunk]
        v = emb.embed(data.subset(torch.from_numpy(p)), batch_size=batch_size, device=device)
        v = v.numpy()
        if not np.isfinite(v).all():
            bad = int(p[~np.isfinite(v).all(axis=1)][0])
            raise DataError(f"model {emb.path}: the features of item {bad} are not finite")
        yield p, v


def embed_all(emb, data, batch_size: int = 256, device: str | None = "cpu") -> np.ndarray:
    """``(N, d)`` float32 unit vectors of every item of ``data``."""
    return np.concatenate(
        [v for _, v in embed_in_chunks(emb, data, None, EMBED_CHUNK, batch_size, device)]
    )


def class_lookup(gallery: Gallery, names: Sequence[str]) -> np.ndarray:
    """Per name, its class id in the gallery, or -1 when the gallery has no such class."""
    index = {n: i for i, n in enumerate(gallery.classes or [])}
    return np.array([index.get(n, -1) for n in names], dtype=np.int64)


# ----------------------------------------------------------------------------- checks + gate


def record_check(
    index: str | os.PathLike,
    verdict: Mapping,
    collection: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict:
    """Record a ``compatkit check`` verdict with the gallery; returns the stored entry."""
    with Gallery.open(index, collection, timeout) as g:
        return append_check(g.store, verdict)


def _latest(checks: Sequence[Mapping], a: str, b: str) -> Mapping | None:
    """The most recent verdict between fingerprints ``a`` and ``b``, either direction."""
    pair = {a, b}
    for v in reversed(checks):
        if {v["old"]["fingerprint"], v["new"]["fingerprint"]} == pair:
            return v
    return None


def gate_problems(
    gallery: Gallery, fingerprint: str, contract: Mapping, checks: Sequence[Mapping]
) -> list[str]:
    """Why the model (``fingerprint``, ``contract``) may not search ``gallery``; [] when it may."""
    problems = []
    for v in gallery.live_versions():
        name = f"version {short(v['fingerprint'])} ({gallery.counts[v['fingerprint']]} vectors)"
        try:
            check_compatible(v["contract"], contract, names=(name, "the model"))
        except IncompatibleModels as e:
            problems.append(str(e))
            continue
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise DataError(
                f"index {gallery.uri}: the contract of {name} is malformed ({e}); the gallery "
                "was damaged or edited"
            ) from None
        if v["fingerprint"] == fingerprint:
            continue
        verdict = _latest(checks, v["fingerprint"], fingerprint)
        if verdict is None:
            problems.append(
                f"no recorded check between {name} and the model "
                f"(run `compatkit check OLD NEW ... --record INDEX`)"
            )
        elif not verdict["compatible"]:
            problems.append(f"the latest recorded check found {name} and the model incompatible")
    return problems


def require_dim(gallery: Gallery, feat_dim: int, what: str, remedy: str = "") -> None:
    """Refuse a model whose features have another dimension than the gallery's vectors:
    nothing, not even ``--force``, can compare them."""
    if int(feat_dim) != gallery.dim:
        raise IncompatibleModels(
            f"{what} makes {feat_dim}-dimensional features but index {gallery.uri} holds "
            f"{gallery.dim}-dimensional vectors; they cannot be compared{remedy}"
        )


def require_searchable(
    gallery: Gallery,
    fingerprint: str,
    contract: Mapping,
    feat_dim: int,
    force: bool = False,
    what: str = "model",
) -> list[str]:
    """Raise :class:`IncompatibleModels` unless the gate lets the model in (or ``force``).

    Returns the problems ``force`` overrode (the caller prints them as warnings).
    """
    require_dim(gallery, feat_dim, what)
    problems = gate_problems(gallery, fingerprint, contract, read_checks(gallery.store))
    if problems and not force:
        raise IncompatibleModels(
            f"index {gallery.uri} refuses {what} {short(fingerprint)}: "
            + "; ".join(problems)
            + "; pass --force to search anyway"
        )
    return problems


def load_checks(gallery: Gallery) -> list[dict]:
    """The recorded verdicts, oldest first (each one checked)."""
    return read_checks(gallery.store)


def progress(say: Callable[[str], None] | None) -> Callable[[str], None]:
    return say or (lambda _msg: None)
