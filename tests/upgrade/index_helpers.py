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
