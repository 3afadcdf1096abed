"""Export Fashion-MNIST to image folders (PNG files, one sub-folder per class) for the example.

Folders written under OUT (class names are Fashion-MNIST's, "/" replaced by "-"):

- ``v1/``          the first model's data: the OLD classes, ``--v1`` images each;
- ``v2-data/``     more data, same classes: the OLD classes, ``--v2`` images each
                   (v1's images included, as a service keeps what it had);
- ``v2-classes/``  more classes: v1's images plus ``--v1`` images of each NEW class;
- ``query/``, ``gallery/``  the test split, all classes, disjoint: ``--query`` and
                   ``--gallery`` images per class (what the retrieval service serves).

Images are drawn at random (seeded) without replacement, so no image is in two
roles except v1's, which v2 keeps on purpose. Fashion-MNIST is found where
compatkit looks for it (``COMPATKIT_FASHION_MNIST``, the Debian package
dataset-fashion-mnist, the cache).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from compatkit.data import load_dataset


def _write(root: Path, name: str, images: np.ndarray, ids: np.ndarray) -> None:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for i in ids:
        Image.fromarray(images[i]).save(folder / f"{int(i):05d}.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--old-classes", type=int, default=5, help="classes 0..N-1 are v1's")
    p.add_argument("--v1", type=int, default=400, help="training images per class for v1")
    p.add_argument("--v2", type=int, default=800, help="per OLD class in v2-data")
    p.add_argument("--query", type=int, default=200, help="query images per class")
    p.add_argument("--gallery", type=int, default=300, help="gallery images per class")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    rng = np.random.default_rng(a.seed)
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    names = [c.replace("/", "-") for c in train.classes]
    tr_img, tr_lab = train.images[:, 0].numpy(), train.labels.numpy()
    te_img, te_lab = test.images[:, 0].numpy(), test.labels.numpy()
    counts = {}
    for c, name in enumerate(names):
        pool = rng.permutation(np.flatnonzero(tr_lab == c))
        if c < a.old_classes:
            if len(pool) < a.v2:
                raise SystemExit(f"class {name}: {len(pool)} training images, --v2 {a.v2} asked")
            _write(a.out / "v1", name, tr_img, pool[: a.v1])
            _write(a.out / "v2-data", name, tr_img, pool[: a.v2])
            _write(a.out / "v2-classes", name, tr_img, pool[: a.v1])
        else:
            _write(a.out / "v2-classes", name, tr_img, pool[: a.v1])
        held = rng.permutation(np.flatnonzero(te_lab == c))
        if len(held) < a.query + a.gallery:
            raise SystemExit(f"class {name}: {len(held)} test images < query + gallery")
        _write(a.out / "query", name, te_img, held[: a.query])
        _write(a.out / "gallery", name, te_img, held[a.query : a.query + a.gallery])
        counts[name] = "old" if c < a.old_classes else "new"
    old = [n for n, k in counts.items() if k == "old"]
    new = [n for n, k in counts.items() if k == "new"]
    print(f"exported to {a.out}: OLD classes {old}, NEW classes {new}")


if __name__ == "__main__":
    main()
