"""A training loss that turns non-finite stops the task with one line: step and last finite loss.

Issue 10, item 6. The watch runs on the device without a per-step synchronisation (see
``train.FINITE_CHECK_EVERY``); these tests check that it still names the exact step.
"""

from __future__ import annotations

import pytest
import torch

from compatkit.config import OptimConfig
from compatkit.data import ImageSet
from compatkit.losses import cross_entropy
from compatkit.methods import Method, TaskContext
from compatkit.model import ModelSpec, build_model
from compatkit.protocol.trainer import FINITE_CHECK_EVERY, TrainingDiverged, train_task
from compatkit.runtime.device import Precision, Runtime


class _PoisonedCE(Method):
    """Cross-entropy, multiplied by ``poison`` from step ``bad`` on (1-based)."""

    name = "_poisoned"
    head = "simplex"

    def __init__(self, bad: int, poison: float) -> None:
        super().__init__()
        self.bad, self.poison, self.step = bad, poison, 0
        self.seen: list[float] = []

    def loss(self, step):
        self.step += 1
        ce = cross_entropy(step.out.logits, step.targets)
        self.seen.append(float(ce.detach()))
        if self.step >= self.bad:
            ce = ce * self.poison
        return ce, {"ce": ce.detach()}


def _train(method: Method, epochs: int, n: int = 64, batch: int = 16):
    torch.manual_seed(0)
    model = build_model(ModelSpec("smallcnn", 1, 5, "simplex", 6))
    model.add_classes([0, 1], "local")
    g = torch.Generator().manual_seed(0)
    data = ImageSet(
        torch.randint(0, 255, (n, 1, 28, 28), dtype=torch.uint8, generator=g),
        torch.arange(n) % 2,
        ["a", "b"],
    )
    ctx = TaskContext(model, None, 0, [0, 1], [])
    opt = OptimConfig(epochs=epochs, batch_size=batch, lr=0.01, pad=0, flip=False)
    return train_task(
        model,
        method,
        ctx,
        data,
        None,
        opt,
        Runtime(torch.device("cpu"), Precision(None, False), lambda x: x.float() / 255.0),
        torch.Generator().manual_seed(1),
    )


@pytest.mark.parametrize(
    ("bad", "poison"), [(3, float("nan")), (6, float("inf")), (1, float("nan"))]
)
def test_names_the_step_and_the_last_finite_loss(bad, poison):
    m = _PoisonedCE(bad, poison)
    with pytest.raises(TrainingDiverged) as e:
        _train(m, epochs=3)  # 4 steps per epoch, 12 in all
    msg = str(e.value)
    assert f"non-finite at step {bad}/12" in msg
    if bad == 1:
        assert "not finite from the first step" in msg
    else:
        assert f"the last finite loss was {m.seen[bad - 2]:.4g} (step {bad - 1})" in msg
    assert "\n" not in msg
    # Stopped at the first check after the bad step (the end of its epoch here), not at the end.
    assert m.step <= max(4 * ((bad + 3) // 4), bad + FINITE_CHECK_EVERY)


def test_is_a_config_error_of_the_user_family():
    from compatkit.errors import CompatkitError, ConfigError

    assert issubclass(TrainingDiverged, ConfigError) and issubclass(
        TrainingDiverged, CompatkitError
    )


def test_finite_training_is_untouched():
    m = _PoisonedCE(bad=10**9, poison=1.0)
    res = _train(m, epochs=2)
    assert len(res.losses) == 2 and all(torch.isfinite(torch.tensor(res.losses)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_watch_does_not_synchronise_on_cuda():
    """The per-step part of the watch stays on the device: torch raises on any host sync."""
    from compatkit.protocol.trainer import _watch

    dev = torch.device("cuda")
    bad = torch.full((), -1, dtype=torch.long, device=dev)
    last = torch.full((), float("nan"), device=dev)
    losses = torch.tensor([2.0, 1.5, float("nan"), 1.0], device=dev)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step, loss in enumerate(losses, start=1):
            _watch(loss, step, bad, last)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert int(bad) == 3 and float(last) == 1.5
