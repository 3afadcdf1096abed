"""Tiny image folders for the upgrade workflow: classes a model learns in a few steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# Each class is a bright 6x6 square at its own place on a noisy 28x28 image.
SPOTS = {
    "ant": (3, 3),
    "bee": (3, 19),
    "cat": (19, 3),
    "dog": (19, 19),
    "aardvark": (11, 11),
    "eel": (3, 11),
}


def write_class_images(
    root: Path, name: str, n: int, rng: np.random.Generator, noise: int = 90
) -> None:
    """``n`` images of class ``name``; ``noise``: the background's brightest value (0-255),
    the harder to tell from the square the closer it gets to the square's 150-255."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    r, c = SPOTS[name]
    for i in range(n):
        img = rng.integers(0, noise, size=(28, 28), dtype=np.uint8)
        dr, dc = rng.integers(-2, 3, size=2)
        img[r + dr : r + dr + 6, c + dc : c + dc + 6] = rng.integers(150, 256)
        Image.fromarray(img).save(folder / f"{i:03d}.png")


def write_folder(root: Path, classes: dict[str, int], seed: int, noise: int = 90) -> Path:
    rng = np.random.default_rng(seed)
    for name, n in classes.items():
        write_class_images(root, name, n, rng, noise)
    return root


def tiny_folders(base: Path) -> dict[str, Path]:
    """v1: ant, bee, cat; v2: the same with more images; v2new: + aardvark (sorts first, so
    every folder label shifts) and dog; query and gallery: all five plus eel, which no
    model is trained on."""
    return {
        "v1": write_folder(base / "v1", {"ant": 24, "bee": 24, "cat": 24}, 1),
        "v2": write_folder(base / "v2", {"ant": 60, "bee": 60, "cat": 60}, 2),
        "v2new": write_folder(
            base / "v2new", {"aardvark": 30, "ant": 30, "bee": 30, "cat": 30, "dog": 30}, 3
        ),
        "query": write_folder(base / "query", dict.fromkeys(SPOTS, 10), 4),
        "gallery": write_folder(base / "gallery", dict.fromkeys(SPOTS, 12), 5),
    }


def write_varied_folder(root: Path, classes: dict[str, int], seed: int) -> Path:
    """Like :func:`write_folder`, but each image scaled to its own size (28 to 44 pixels a
    side) and saved as a grayscale PNG or an RGB JPEG in turn: files as they come, which a
    model reads resized and cropped to its input."""
    rng = np.random.default_rng(seed)
    for name, n in classes.items():
        write_class_images(root, name, n, rng)
        for i in range(n):
            png = root / name / f"{i:03d}.png"
            h, w = (int(v) for v in rng.integers(28, 45, size=2))
            img = Image.open(png).resize((w, h), Image.BILINEAR)
            if i % 2:
                png.unlink()
                img.convert("RGB").save(png.with_suffix(".jpg"), quality=95)
            else:
                img.save(png)
    return root
