"""A tracking session: the logged runs of one compatkit run, in every backend asked for.

:class:`Tracking` opens a logged run the first time something is written to it and fans each
call out to the backends; :meth:`Tracking.training` records every optimiser step of the
training loops inside it (through :func:`compatkit.runtime.steps.observe_steps`), so the
pipeline only says which logged run a phase belongs to. A session with no backend does
nothing and costs nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..runtime.steps import observe_steps
from .base import RunInfo, Tracker, check_backends

__all__ = ["ENV_VAR", "FLUSH_EVERY", "StepRecorder", "Tracking", "backends_from_env"]

ENV_VAR = "COMPATKIT_LOG"
"""Backends for runs that are not started by a command with ``--log`` (the jobs of a sweep,
which inherit it): comma-separated, as ``--log`` takes them."""

FLUSH_EVERY = 25
"""Steps whose values are read from the device at once: one host synchronisation per this
many steps (a per-step read would stall a GPU at every step); every step is still logged."""


def backends_from_env() -> list[str]:
    """The backends named by ``$COMPATKIT_LOG`` (checked), or none."""
    value = os.environ.get(ENV_VAR, "").strip()
    return check_backends([value]) if value else []


def _open(name: str, info: RunInfo) -> Tracker:
    if name == "tensorboard":
        from .tensorboard import TensorBoardTracker

        return TensorBoardTracker(info)
    if name == "wandb":
        from .wandb import WandbTracker

        return WandbTracker(info)
    from .mlflow import MlflowTracker

    return MlflowTracker(info)


class _Fanout(Tracker):
    """One logged run in several backends."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers

    def log_scalars(self, values: Mapping[str, float], step: int, axis: str) -> None:
        for t in self.trackers:
            t.log_scalars(values, step, axis)

    def log_steps(self, rows: Sequence[tuple[int, Mapping[str, float]]], axis: str) -> None:
        for t in self.trackers:
            t.log_steps(rows, axis)

    def log_image(self, tag: str, png: bytes, step: int) -> None:
        for t in self.trackers:
            t.log_image(tag, png, step)

    def log_table(self, tag: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        for t in self.trackers:
            t.log_table(tag, columns, rows)

    def log_summary(self, values: Mapping[str, float]) -> None:
        for t in self.trackers:
            t.log_summary(values)

    def close(self, failed: bool = False) -> None:
        for t in self.trackers:
            t.close(failed)


class StepRecorder:
    """Training-loop observer: every step's loss (``train/loss``), its parts
    (``train/loss_ce``, ``train/loss_hoc``, ...), learning rate and images/s, logged against
    ``train/step`` counted from ``step0`` (the steps of earlier tasks, so a sequence reads as
    one curve and a resumed one continues it)."""

    def __init__(self, tracker: Tracker | None, step0: int = 0) -> None:
        self.tracker = tracker
        self.step0 = step0
        self._rows: list[tuple[int, torch.Tensor, dict[str, torch.Tensor], float]] = []
        self._mark: tuple[float, int] | None = None  # (time, images seen) at the last flush

    def __call__(self, s: dict) -> None:
        if self.tracker is None:
            return
        if self._mark is None:  # images/s counts from the end of the first step
            self._mark = (time.perf_counter(), int(s["seen"]))
        parts = {k: v.detach() for k, v in s["parts"].items() if isinstance(v, torch.Tensor)}
        self._rows.append((s["step"], s["loss"].detach(), parts, float(s["lr"])))
        self._seen = int(s["seen"])
        if len(self._rows) >= FLUSH_EVERY or s["step"] == s["total"]:
            self.flush()

    def task_done(self, task: int, result: Any) -> None:
        """Per task (one-based): the mean loss of the last epoch, images/s and seconds of a
        finished :class:`~compatkit.protocol.trainer.TaskResult`."""
        if self.tracker is None:
            return
        self.flush()
        values = {
            "task/train_loss": float(result.losses[-1]),
            "task/images_per_s": float(result.images_per_s),
            "task/train_seconds": float(result.seconds),
        }
        self.tracker.log_scalars(values, task, "task")

    def flush(self) -> None:
        """Read the buffered steps from the device (one synchronisation) and log them."""
        if self.tracker is None or not self._rows:
            return
        cells = [(i, "loss", r[1]) for i, r in enumerate(self._rows)]
        cells += [(i, f"loss_{k}", v) for i, r in enumerate(self._rows) for k, v in r[2].items()]
        values = torch.stack([v.float().reshape(()) for _, _, v in cells]).tolist()
        rows: list[tuple[int, dict[str, float]]] = [
            (self.step0 + step, {"train/lr": lr}) for step, _, _, lr in self._rows
        ]
        for (i, key, _), v in zip(cells, values, strict=True):
            rows[i][1][f"train/{key}"] = v
        t0, seen0 = self._mark or (time.perf_counter(), 0)
        now = time.perf_counter()
        rows[-1][1]["train/images_per_s"] = (self._seen - seen0) / max(now - t0, 1e-9)
        self._mark = (now, self._seen)
        self._rows = []
        self.tracker.log_steps(rows, "train/step")


class Tracking:
    """The logged runs of one compatkit run (``group``) in ``backends``; local files under
    ``root``. ``config`` and ``environment`` (or a function that returns it, called when the
    first run opens: the thread counts are then the training's) go to every logged run."""

    def __init__(
        self,
        backends: Sequence[str],
        root: str | os.PathLike[str],
        group: str,
        config: Mapping[str, Any],
        environment: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
    ) -> None:
        self.backends = check_backends(backends)
        self.root = Path(root)
        self.group = group
        self.config = config
        self._environment = environment
        self._runs: dict[str, Tracker] = {}

    @classmethod
    def off(cls) -> Tracking:
        """A session that logs nothing."""
        return cls([], ".", "", {}, {})

    @property
    def enabled(self) -> bool:
        return bool(self.backends)

    def environment(self) -> Mapping[str, Any]:
        if callable(self._environment):
            self._environment = self._environment()
        return self._environment

    def run(self, name: str, kind: str, **tags: Any) -> Tracker | None:
        """The logged run ``name`` (opened on first use), or None when nothing is tracked."""
        if not self.enabled:
            return None
        if name not in self._runs:
            info = RunInfo(self.root, self.group, name, kind, self.config, self.environment(), tags)
            opened: list[Tracker] = []
            try:
                for b in self.backends:
                    opened.append(_open(b, info))
            except BaseException:
                for t in opened:
                    t.close(failed=True)
                raise
            self._runs[name] = _Fanout(opened)
        return self._runs[name]

    @contextmanager
    def training(self, name: str, kind: str, step0: int = 0, **tags: Any) -> Iterator[StepRecorder]:
        """Within the block, every training step is logged to the run ``name``."""
        rec = StepRecorder(self.run(name, kind, **tags), step0)
        if rec.tracker is None:
            yield rec
            return
        try:
            with observe_steps(rec):
                yield rec
        finally:
            rec.flush()  # a diverged task keeps its curve up to the failure

    def close(self, failed: bool = False) -> None:
        """Finish every logged run (marked failed when the work raised)."""
        runs, self._runs = self._runs, {}
        for t in runs.values():
            t.close(failed)
