"""Evaluation helpers: feature extraction order and the local-class accuracy."""

from __future__ import annotations

import torch

from compatkit.data import ImageSet
from compatkit.model import ModelSpec, build_model
from compatkit.protocol.evaluate import extract_features, local_accuracy
from compatkit.runtime.device import Precision, Runtime

FP32 = Precision(None, False)


def _data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % 4
    return ImageSet(images, labels, [f"c{i}" for i in range(4)])


def _norm(x):
    return x.float() / 255.0


RT = Runtime(torch.device("cpu"), FP32, _norm)


def test_extract_features_is_batched_in_order():
    torch.manual_seed(0)
    model = build_model(ModelSpec("smallcnn", 1, 7, "simplex", 8)).eval()
    data = _data()
    a = extract_features(model, data, RT, batch_size=7)
    with torch.no_grad():
        b = model.features(_norm(data.images))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_local_accuracy_against_a_loop():
    torch.manual_seed(1)
    model = build_model(ModelSpec("smallcnn", 1, 7, "simplex", 8)).eval()
    model.add_classes([0, 1, 2, 3], "local")
    data = _data()
    seen = [0, 2, 3]
    got = local_accuracy(model, data, seen, RT, 5)
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
    assert local_accuracy(model, data.select_classes([1]), [0, 2], RT, 5) is None


def test_start_accuracy_of_a_task_with_many_classes_is_cached_under_a_short_name(tmp_path):
    """A CIFAR-100 task sees up to 100 local classes; the start model's cache file is named by a
    digest of the class set (listing the classes made a name the file system refused), and the
    class set inside the file decides a cache hit."""
    from compatkit.checkpoint import save_checkpoint
    from compatkit.protocol.evaluate import cached_local_accuracy

    torch.manual_seed(2)
    n_cls = 120
    model = build_model(ModelSpec("smallcnn", 1, 2 * n_cls - 1, "simplex", 2 * n_cls)).eval()
    ckpt = tmp_path / "task_4.pt"
    save_checkpoint(ckpt, model)
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(2 * n_cls) % n_cls
    images = torch.randint(0, 256, (len(labels), 1, 28, 28), dtype=torch.uint8, generator=g)
    data = ImageSet(images, labels, [f"c{i}" for i in range(n_cls)])
    seen = list(range(n_cls))
    cache = tmp_path / "features"
    args = (data, seen, RT, 64, cache)
    acc = cached_local_accuracy(ckpt, *args, start=True)
    files = list(cache.glob("task_4.start-*.local.json"))
    assert len(files) == 1 and len(files[0].name) < 64
    # the start model gets its rows exactly as the task did: the same number by hand
    fresh = build_model(ModelSpec("smallcnn", 1, 2 * n_cls - 1, "simplex", 2 * n_cls))
    fresh.load_state_dict(model.state_dict())
    fresh.add_classes(seen, "local")
    assert acc == local_accuracy(fresh.eval(), data, seen, RT, 64)
    # a hit returns the stored number; another class set is another file
    import json

    stored = json.loads(files[0].read_text())
    files[0].write_text(json.dumps({**stored, "accuracy": -1.0}))
    assert cached_local_accuracy(ckpt, *args, start=True) == -1.0
    cached_local_accuracy(ckpt, data, seen[:60], *args[2:], start=True)
    assert len(list(cache.glob("task_4.start-*.local.json"))) == 2
