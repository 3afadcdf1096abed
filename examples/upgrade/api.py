"""The upgrade workflow from Python, with the objects the command line uses.

    python examples/upgrade/api.py [WORK_DIR]

A service runs a model compatkit did not train (here: an ONNX file with its preprocessing
JSON, made from a small model so the example needs no download), and keeps a gallery of
photos of every size. The script:

1. trains a stand-in "production" model and exports it to ONNX (``export_model``): v1;
2. embeds the gallery with v1 into a versioned index (``build_index``);
3. trains v2 in v1's feature space against the foreign v1 (``train_model(old=...)``);
4. embeds a few images with both (``load_embedder`` -> ``Embedder.embed_items``);
5. asks the gate whether v2 may query v1's gallery (``run_check``) and records the verdict;
6. backfills part of the gallery with v2 (``backfill``) and searches it.

Without WORK_DIR it works in a temporary folder; about a minute on one CPU core.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from compatkit.upgrade.backfill import backfill
from compatkit.upgrade.build import build_index
from compatkit.upgrade.data import open_items
from compatkit.upgrade.embed import load_embedder
from compatkit.upgrade.export import export_checkpoint
from compatkit.upgrade.gate import render, run_check
from compatkit.upgrade.index import record_check
from compatkit.upgrade.search import search_index
from compatkit.upgrade.train import TrainOptions, train_model

CLASSES = ("red", "green", "blue", "grey")


def photos(root: Path, per_class: int, seed: int) -> Path:
    """JPEGs of random sizes: each class a tint, with noise."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = (int(v) for v in rng.integers(48, 160, size=2))
            a = rng.integers(0, 110, size=(h, w, 3), dtype=np.uint8)
            if k < 3:
                a[:, :, k] += 140
            Image.fromarray(a).save(root / name / f"{i:03d}.jpg", quality=90)
    return root


def main(work: Path) -> int:
    data, gallery, query = (photos(work / n, c, s) for n, c, s in
                            (("train", 30, 0), ("gallery", 20, 1), ("query", 10, 2)))  # fmt: skip
    fast = {"epochs": 2, "batch_size": 32, "device": "cpu", "image_size": 32}

    # 1. the production model compatkit did not train: an ONNX file + its JSON
    train_model(str(data), work / "prod.pt", TrainOptions(**fast))
    v1 = export_checkpoint(work / "prod.pt", "onnx", work / "v1.onnx", name="prod-v1").path
    print(f"v1: {v1} (+ {v1.with_suffix('.json').name})")

    # 2. the service's gallery, embedded by v1
    index = work / "index"
    build_index(v1, str(gallery), index, device="cpu")

    # 3. v2 in v1's feature space (d-Simplex head of K = d + 1; v1 runs as the frozen old model)
    opts = TrainOptions(**{**fast, "image_size": None, "epochs": 3})
    res = train_model(str(data), work / "v2.pt", opts, old=v1)
    print(f"v2: {res.path} ({res.extra['method']}, K={res.model.spec.num_classes})")

    # 4. embeddings with any model, streamed: positions and unit vectors a batch at a time
    items = open_items(str(query))
    for name, path in (("v1", v1), ("v2", res.path)):
        emb = load_embedder(path)
        feats = np.concatenate([f.numpy() for _, f in emb.embed_items(items, workers=0)])
        print(f"{name} {emb.fingerprint[:12]}: {feats.shape[0]} x {emb.feat_dim} features")

    # 5. the gate, recorded in the index (the index then lets v2 search v1's vectors)
    verdict = run_check(str(v1), str(res.path), str(query), str(gallery), device="cpu")
    print(render(verdict).splitlines()[-1])
    record_check(index, verdict)

    # 6. re-embed half the gallery with v2, then search the mixed gallery with v2
    backfill(index, res.path, fraction=0.5, device="cpu")
    found = search_index(index, res.path, str(query), k=5, force=not verdict["compatible"])
    print(f"search with v2: recall@1 {found['metrics']['recall@1']:.1f} %")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1:
        sys.exit(main(Path(sys.argv[1])))
    with tempfile.TemporaryDirectory() as tmp:
        sys.exit(main(Path(tmp)))
