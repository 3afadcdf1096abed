"""Tracking ``compatkit train``: one logged run per model trained, named after its file.

The training loop is observed as a run's is (every step's loss, parts, learning rate,
images/s); when the model is written, its per-epoch validation accuracy and final numbers
follow. TensorBoard files go to ``<folder of MODEL.pt>/tensorboard/<MODEL>``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .session import Tracking, backends_from_env

__all__ = ["track_train"]


@contextmanager
def track_train(
    backends: Sequence[str], out: str | Path, options: Any
) -> Iterator[Callable[[Mapping[str, Any]], None]]:
    """Track the training of ``out`` (``options``: its ``TrainOptions``) in ``backends``
    (none given: ``$COMPATKIT_LOG``). Yields ``done(extra)``, to call with the written
    checkpoint's ``extra`` metadata."""
    from ..runtime.device import resolve_device, resolve_precision
    from ..runtime.environment import describe_environment

    out = Path(out)

    def environment() -> Mapping[str, Any]:
        device = resolve_device(options.device)
        return describe_environment(device, resolve_precision(options.precision, device))

    tracking = Tracking(
        list(backends) or backends_from_env(),
        out.parent,
        out.stem,
        options.to_dict(),
        environment,
    )

    def done(extra: Mapping[str, Any]) -> None:
        tracker = tracking.run(out.stem, "train")
        if tracker is None:
            return
        for epoch, acc in enumerate(extra.get("val_accuracy") or [], start=1):
            if acc is not None:
                tracker.log_scalars({"epoch/val_accuracy": float(acc)}, epoch, "epoch")
        for epoch, loss in enumerate(extra.get("losses") or [], start=1):
            tracker.log_scalars({"epoch/train_loss": float(loss)}, epoch, "epoch")
        final = {"images_per_s": extra.get("images_per_s"), "seconds": extra.get("seconds")}
        if extra.get("val_accuracy"):
            final["val_accuracy"] = extra["val_accuracy"][-1]
        tracker.log_summary({k: float(v) for k, v in final.items() if v is not None})

    failed = True
    try:
        with tracking.training(out.stem, "train"):
            yield done
        failed = False
    finally:
        tracking.close(failed)
