"""TensorBoard, through ``torch.utils.tensorboard``: event files under ``RUN_DIR/tensorboard``.

Each logged run is a folder ``RUN_DIR/tensorboard/<name>`` (``hoc/seed_42``, ...), so
``tensorboard --logdir RUN_DIR/tensorboard`` lists the runs of one compatkit run, and
``--logdir SWEEP_DIR`` every setting of a sweep. The config and the environment are text
entries; the compatibility matrix an image and a markdown table.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import yaml

from .base import RunInfo, Tracker

__all__ = ["TensorBoardTracker", "log_dir"]


def log_dir(info: RunInfo):
    """The event folder of a logged run."""
    return info.root / "tensorboard" / info.name


def _code(text: str) -> str:
    """Markdown code block (TensorBoard's text plugin renders markdown; indentation is the
    form every version of it reads)."""
    return "\n".join("    " + line for line in text.splitlines())


class TensorBoardTracker(Tracker):
    def __init__(self, info: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir(info)))
        meta = {"group": info.group, "name": info.name, "kind": info.kind, **info.tags}
        self.writer.add_text("run", _code(yaml.safe_dump(meta, sort_keys=False)), 0)
        self.writer.add_text("config", _code(yaml.safe_dump(dict(info.config), sort_keys=False)))
        self.writer.add_text("environment", _code(json.dumps(info.environment, indent=2)), 0)

    def log_scalars(self, values: Mapping[str, float], step: int, axis: str) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def log_image(self, tag: str, png: bytes, step: int) -> None:
        from matplotlib.image import imread

        rgba = imread(io.BytesIO(png), format="png")
        rgb = (np.asarray(rgba)[..., :3] * 255).round().astype(np.uint8)
        self.writer.add_image(tag, rgb, step, dataformats="HWC")

    def log_table(self, tag: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        lines = ["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join("" if v is None else str(v) for v in r) + " |" for r in rows]
        self.writer.add_text(tag, "\n".join(lines), 0)

    def log_summary(self, values: Mapping[str, float]) -> None:
        for k, v in values.items():
            self.writer.add_scalar(f"result/{k}", v, 0)

    def close(self, failed: bool = False) -> None:
        if failed:
            self.writer.add_text("run", "the work failed before it finished", 1)
        self.writer.close()
