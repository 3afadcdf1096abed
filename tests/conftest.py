"""Shared test set-up: one torch thread (tiny tensors on 2 shared cores run faster without a
thread pool) and a small dataset in the exact Fashion-MNIST file format."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from compatkit.data import write_idx

torch.set_num_threads(1)


def write_fake_fashion(
    root: Path,
    n_classes: int = 6,
    train_per_class: int = 40,
    test_per_class: int = 12,
    seed: int = 0,
) -> Path:
    """Write idx-gz files of 28x28 images whose class is visible (a bright square whose
    position depends on the class) so that a model can learn something in a few steps."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, per in (("train", train_per_class), ("t10k", test_per_class)):
        labels = np.repeat(np.arange(n_classes, dtype=np.uint8), per)
        rng.shuffle(labels)
        images = rng.integers(0, 60, size=(len(labels), 28, 28), dtype=np.uint8)
        for i, y in enumerate(labels):
            r, c = divmod(int(y), 3)
            images[i, 4 + 10 * r : 12 + 10 * r, 2 + 9 * c : 10 + 9 * c] = 220
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Providers go to compatkit's cache: give the tests their own, never the user's (and
    subprocesses of the real CLI inherit it through the environment)."""
    old = os.environ.get("COMPATKIT_CACHE")
    os.environ["COMPATKIT_CACHE"] = str(tmp_path_factory.mktemp("compatkit-cache"))
    yield Path(os.environ["COMPATKIT_CACHE"])
    if old is None:
        os.environ.pop("COMPATKIT_CACHE", None)
    else:
        os.environ["COMPATKIT_CACHE"] = old


@pytest.fixture(scope="session")
def fake_fashion(tmp_path_factory) -> Path:
    return write_fake_fashion(tmp_path_factory.mktemp("fashion"))
