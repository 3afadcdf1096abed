"""Evaluation helpers: feature extraction order and the local-class accuracy."""

from __future__ import annotations

import torch

from compatkit.data import ImageSet
from compatkit.evaluate import extract_features, local_accuracy
from compatkit.model import ModelSpec, build_model
from compatkit.train import Precision

FP32 = Precision(None, False)


def _data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % 4
    return ImageSet(images, labels, [f"c{i}" for i in range(4)])


def _norm(x):
    return x.float() / 255.0


def test_extract_features_is_batched_in_order():
    torch.manual_seed(0)
    model = build_model(ModelSpec("smallcnn", 1, 7, "simplex", 8)).eval()
    data = _data()
    a = extract_features(model, data, _norm, batch_size=7, precision=FP32)
    with torch.no_grad():
        b = model.features(_norm(data.images))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_local_accuracy_against_a_loop():
    torch.manual_seed(1)
    model = build_model(ModelSpec("smallcnn", 1, 7, "simplex", 8)).eval()
    model.add_classes([0, 1, 2, 3], "local")
    data = _data()
    seen = [0, 2, 3]
    got = local_accuracy(model, data, seen, _norm, 5, FP32)
    rows = {c: model.class_map.local[c] for c in seen}
    correct = total = 0
    with torch.no_grad():
        for x, y in zip(data.images, data.labels.tolist(), strict=True):
            if y not in seen:
                continue
            logits = model(_norm(x[None])).logits[0]
            best = max(seen, key=lambda c: float(logits[rows[c]]))
            correct += best == y
            total += 1
    assert got == 100.0 * correct / total
    assert local_accuracy(model, data.select_classes([1]), [0, 2], _norm, 5, FP32) is None
