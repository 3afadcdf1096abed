"""Real checkpoints and an index for the index, backfill and curve tests, made once.

The models are trained by :func:`compatkit.upgrade.train.train_model` on the tiny image
folders of ``folders.py`` (v1: three classes; v2: its HOC successor on five), so the
checkpoints carry what ``compatkit train`` writes: normalisation, input size, class names.
The folders are written with fixed seeds, so models trained on one copy of them serve the
tests of every other copy: they are trained once per session.
"""

from __future__ import annotations

from pathlib import Path

_CACHE: dict[str, dict[str, Path]] = {}


def trained_models(tmp_path_factory, tiny: dict[str, Path]) -> dict[str, Path]:
    """``{"v1", "v2", "other"}`` checkpoint paths (trained on first use in the session).

    ``other``: a first model trained from scratch on v2's classes with another seed: same
    contract as v1 (classes by name on the same vertices), a different fingerprint.
    """
    key = "models"
    if key not in _CACHE:
        from compatkit.runtime.log import RunLog
        from compatkit.upgrade.train import TrainOptions, train_model

        base = tmp_path_factory.mktemp("index-models")
        quiet = RunLog(None, quiet=True)

        def opts(seed: int) -> TrainOptions:
            return TrainOptions(epochs=2, batch_size=32, device="cpu", seed=seed)

        out = {k: base / f"{k}.pt" for k in ("v1", "v2", "other")}
        train_model(str(tiny["v1"]), out["v1"], opts(0), log=quiet)
        train_model(str(tiny["v2new"]), out["v2"], opts(1), old=out["v1"], log=quiet)
        train_model(str(tiny["v1"]), out["other"], opts(2), log=quiet)
        _CACHE[key] = out
    return _CACHE[key]


def wide_model(tiny: dict[str, Path], out: Path) -> Path:
    """A checkpoint with K = 32 (31-dimensional features): another dimension than v1's."""
    from compatkit.runtime.log import RunLog
    from compatkit.upgrade.train import TrainOptions, train_model

    opts = TrainOptions(epochs=1, num_classes=32, device="cpu")
    train_model(str(tiny["v1"]), out, opts, log=RunLog(None, quiet=True))
    return out


ENGINES = ("lancedb", "milvus-lite")
CONTRACT = {"feat_dim": 8, "in_channels": 1, "head": "simplex", "num_classes": 9}
A, B, C = "a" * 64, "b" * 64, "c" * 64


def gallery_uri(base: Path, engine: str, name: str = "g") -> str:
    """Where a test gallery of ``engine`` goes: a folder (LanceDB) or a ``.db`` (Milvus Lite)."""
    return str(base / (f"{name}.db" if engine == "milvus-lite" else name))


def unit_rows(n: int, d: int, seed: int):
    import numpy as np

    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def add_rows(store, x, labels, fingerprint: str = A, step: int = 50) -> None:
    """Add the rows of ``x`` as items ``item0``, ... of classes ``c<label>``."""
    import numpy as np

    from compatkit.upgrade.store import Rows

    for a in range(0, x.shape[0], step):
        p = np.arange(a, min(a + step, x.shape[0]))
        ids = [f"item{i}" for i in p]
        names = [f"c{y}" for y in labels[p]]
        store.add(Rows(p, x[p], ids, labels[p], names, [fingerprint] * p.size))


def make_gallery(uri: str, x, labels=None, fingerprint: str = A, dtype: str | None = None) -> str:
    """A gallery of the rows of ``x`` written through the store and the ledger as a build
    writes it (version ``fingerprint``, classes ``c0``, ``c1``, ...), without a model."""
    import numpy as np

    from compatkit.upgrade.ledger import gallery_record
    from compatkit.upgrade.store import create_store, default_dtype

    n, d = x.shape
    labels = np.arange(n) % 3 if labels is None else np.asarray(labels)
    classes = [f"c{i}" for i in range(int(labels.max()) + 1)]
    store = create_store(uri, d, dtype or default_dtype(uri))
    try:
        add_rows(store, x, labels, fingerprint)
        version = {
            "fingerprint": fingerprint,
            "contract": {**CONTRACT, "feat_dim": d},
            "model": "v1.pt",
            "added": "2026-01-01T00:00:00+00:00",
            "class_names": {},
        }
        store.put_records({f"version/{fingerprint}": version})
        store.put_records({"gallery": gallery_record(store, n, classes, {"kind": "folder"})})
    finally:
        store.close()
    return uri
