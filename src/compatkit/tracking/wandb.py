"""Weights & Biases: one W&B run per logged run, in the group of its compatkit run.

Where runs go is W&B's own configuration: ``WANDB_PROJECT`` (default ``compatkit``),
``WANDB_ENTITY``, ``WANDB_MODE=offline`` to write only local files (``wandb sync`` uploads
them later). Local files go to ``RUN_DIR/wandb``. Every metric is declared against its axis
(``train/step``, ``task`` or ``epoch``), so per-step losses and per-task accuracies each get
their own x axis, as W&B requires steps to increase within a run.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

from .base import RunInfo, Tracker

__all__ = ["WandbTracker"]


class WandbTracker(Tracker):
    def __init__(self, info: RunInfo) -> None:
        import wandb

        self._wandb = wandb
        self._defined: set[str] = set()
        info.root.mkdir(parents=True, exist_ok=True)
        config = {**dict(info.config), "run": {"kind": info.kind, **info.tags}}
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "compatkit",
            group=info.group,
            name=f"{info.group}/{info.name}",
            job_type=info.kind,
            dir=str(info.root),
            config={**config, "environment": dict(info.environment)},
            tags=[info.kind, *(f"{k}:{v}" for k, v in info.tags.items())],
            reinit="create_new",  # several logged runs open at once in one process
            # the run's log.txt keeps the output; W&B's own lines would repeat for every run
            settings=wandb.Settings(console="off", silent=True),
        )

    def _define(self, key: str, axis: str) -> None:
        if key not in self._defined:
            if axis not in self._defined:
                self.run.define_metric(axis, hidden=True)
                self._defined.add(axis)
            self.run.define_metric(key, step_metric=axis)
            self._defined.add(key)

    def log_scalars(self, values: Mapping[str, float], step: int, axis: str) -> None:
        for k in values:
            self._define(k, axis)
        self.run.log({**values, axis: step})

    def log_image(self, tag: str, png: bytes, step: int) -> None:
        from PIL import Image

        self.run.log({tag: self._wandb.Image(Image.open(io.BytesIO(png)).convert("RGB"))})

    def log_table(self, tag: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        data = [list(r) for r in rows]  # None (the blank upper triangle) is a typed gap
        self.run.log({tag: self._wandb.Table(columns=[str(c) for c in columns], data=data)})

    def log_summary(self, values: Mapping[str, float]) -> None:
        self.run.summary.update(dict(values))

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)
