"""The K = 3 picture of a stationary update (``compatkit analyze --simplex-demo OUT_DIR``).

Paper: Biondi et al., "Stationary Representations: Optimally Approximating Compatibility and
Implications for Improved Model Replacements", CVPR 2024, Sec. 3 (d-Simplex fixed
classifier) and Theorem 1. Trains tiny 2-D models (K = 3, so d = K - 1 = 2 and the features
can be drawn as they are) and shows that a d-Simplex model's class centres stay at their
vertices through a HOC update and even through an independent retraining (a replacement),
while a learnable classifier's centres land wherever its training happens to put them.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import OptimConfig
from ..data import DATASET_STATS, ImageSet, Normalize, load_dataset
from ..methods import TaskContext, build_method, load_all
from ..model import ModelSpec, build_model
from ..protocol.trainer import train_task
from ..report.style import new_figure, save
from ..runtime.device import Precision, Runtime
from ..runtime.files import atomic_write_json
from .stats import (
    centre_drift_deg,
    class_mean_directions,
    definition1_pairs,
    stationarity_stats,
    torch_threads,
)

__all__ = ["DemoConfig", "plot_simplex_demo", "simplex_demo"]


@dataclass
class DemoConfig:
    """Settings of :func:`simplex_demo`; defaults take about half a minute on two CPU cores."""

    classes: tuple[int, ...] = (1, 7, 8)
    """Three dataset labels (Fashion-MNIST: trouser, sneaker, bag: separable in few epochs)."""
    old_per_class: int = 150
    """Training images per class of the first model."""
    new_per_class: int = 400
    """Training images per class of the updated and the retrained models ("more data")."""
    test_per_class: int = 200
    """Held-out (test split) images per class that are plotted."""
    epochs: int = 4
    batch_size: int = 64
    lr_scratch: float = 0.05
    """Learning rate of models trained from scratch (as the providers)."""
    lr_finetune: float = 0.01
    """Learning rate of the updates that start from the first model."""
    seed: int = 0
    threads: int | None = 1
    """Torch CPU threads (a 2-D smallcnn on batches of 64 gains nothing from more on a
    shared machine; None leaves the setting alone)."""
    dataset: str = "fashion-mnist"
    root: str | None = None
    backbone: str = "smallcnn"


def _pick(data, classes: Sequence[int], per_class: int | None, gen: torch.Generator):
    """Up to ``per_class`` images of each class (random, reproducible), labels -> 0..K-1."""

    idx, lab = [], []
    for new, c in enumerate(classes):
        pos = torch.nonzero(data.labels == c).flatten()
        if pos.numel() == 0:
            raise ValueError(f"class {c} has no images in {len(data)}-image split")
        pos = pos[torch.randperm(pos.numel(), generator=gen)]
        if per_class is not None:
            pos = pos[:per_class]
        idx.append(pos)
        lab.append(torch.full((pos.numel(),), new, dtype=torch.long))
    sel = torch.cat(idx)
    names = [data.classes[c] if c < len(data.classes) else str(c) for c in classes]
    return ImageSet(data.images[sel].clone(), torch.cat(lab), names)


def simplex_demo(
    out_dir: str | os.PathLike[str],
    cfg: DemoConfig | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict:
    """Train the K = 3 models, write ``simplex_demo.png`` and ``simplex_demo.json``.

    Six models, 2-D features (d = K - 1 = 2, so no projection is needed):

    - d-Simplex head: ``old`` (CoReS: cross-entropy through the fixed simplex,
      trained from scratch), ``update`` (d-Simplex-HOC fine-tuning of ``old``
      on more data, ``old`` as the frozen old model, Eq. 3 / Eq. 4),
      ``retrained`` (CoReS from scratch on the larger data, another seed: a
      replacement by a model trained elsewhere);
    - learnable head: the same three with experience-replay cross-entropy
      (``er``), the non-stationary baseline.

    Returns the JSON written: per model, the class-centre angle to its head
    rows, the feature angle, the class spread and the centre drift from the
    ``old`` model; per updated model, Definition 1 against ``old`` on the
    held-out images.
    """
    cfg = cfg or DemoConfig()
    with torch_threads(cfg.threads):
        return _simplex_demo(out_dir, cfg, log)


def _simplex_demo(out_dir, cfg: DemoConfig, log: Callable[[str], None]) -> dict:

    if len(cfg.classes) != 3 or len(set(cfg.classes)) != 3:
        raise ValueError(f"the K=3 demo needs three distinct classes, got {list(cfg.classes)}")
    if min(cfg.old_per_class, cfg.new_per_class, cfg.test_per_class, cfg.epochs) < 1:
        raise ValueError("demo image counts and epochs must be >= 1")
    t0 = time.perf_counter()
    load_all()
    gen = torch.Generator().manual_seed(cfg.seed)
    train_all = load_dataset(cfg.dataset, "train", cfg.root)
    test_all = load_dataset(cfg.dataset, "test", cfg.root)
    new_data = _pick(train_all, cfg.classes, cfg.new_per_class, gen)
    # The first model sees a subset of the update's data: an update brings *more* data.
    old_idx = torch.cat(
        [torch.nonzero(new_data.labels == c).flatten()[: cfg.old_per_class] for c in range(3)]
    )
    old_data = new_data.subset(old_idx)
    test = _pick(test_all, cfg.classes, cfg.test_per_class, gen)
    mean, std = DATASET_STATS.get(cfg.dataset, ((0.5,) * test.channels, (0.25,) * test.channels))
    normalize = Normalize(mean, std)

    cpu = torch.device("cpu")

    def train(model, method_name: str, data, old, lr: float, seed: int, task: int) -> list:
        method = build_method(method_name)
        ctx = TaskContext(
            model=model,
            old_model=old,
            task_id=task,
            new_classes=[0, 1, 2],
            old_classes=sorted(old.class_map.local) if old is not None else [],
            device=cpu,
            normalize=normalize,
        )
        opt = OptimConfig(
            epochs=cfg.epochs, batch_size=cfg.batch_size, lr=lr, min_lr=lr * 1e-2, pad=2
        )
        g = torch.Generator().manual_seed(seed)
        rt = Runtime(cpu, Precision(None, False), normalize)
        res = train_task(model, method, ctx, data, None, opt, rt, g)
        return res.losses

    def fresh(head: str, seed: int):
        torch.manual_seed(seed)
        spec = ModelSpec(cfg.backbone, test.channels, feat_dim=2, head=head, num_classes=3)
        model = build_model(spec)
        model.add_classes([0, 1, 2], "local")
        return model

    def frozen(model):
        old = copy.deepcopy(model).eval()
        for p in old.parameters():
            p.requires_grad_(False)
        return old

    models: dict[str, Any] = {}
    losses: dict[str, list] = {}
    for head, scratch, update in (("simplex", "cores", "hoc"), ("learnable", "er", "er")):
        key = "simplex" if head == "simplex" else "learnable"
        old = fresh(head, cfg.seed)
        log(f"demo: {key} old model ({scratch}, {len(old_data)} images)")
        losses[f"{key}/old"] = train(old, scratch, old_data, None, cfg.lr_scratch, cfg.seed, 0)
        upd = copy.deepcopy(old)
        ref = frozen(old) if build_method(update).needs_old else None
        log(f"demo: {key} update ({update}, {len(new_data)} images)")
        losses[f"{key}/update"] = train(
            upd, update, new_data, ref, cfg.lr_finetune, cfg.seed + 1, 1
        )
        ret = fresh(head, cfg.seed + 1000)
        log(f"demo: {key} retrained ({scratch} from scratch, {len(new_data)} images)")
        losses[f"{key}/retrained"] = train(
            ret, scratch, new_data, None, cfg.lr_scratch, cfg.seed + 2, 0
        )
        models[f"{key}/old"], models[f"{key}/update"], models[f"{key}/retrained"] = old, upd, ret

    feats: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, model in models.items():
            model.eval()
            feats[name] = torch.cat(
                [
                    model.features(normalize(test.images[i : i + 512]))
                    for i in range(0, len(test), 512)
                ]
            )
    labels = test.labels
    stats: dict[str, Any] = {}
    for name, model in models.items():
        rows = model.class_map.rows(labels, "local")
        verts = model.head.weight.detach().float()[rows]
        s = stationarity_stats(feats[name], labels, verts)
        _, dirs = class_mean_directions(feats[name], labels)
        _, old_dirs = class_mean_directions(feats[name.split("/")[0] + "/old"], labels)
        s["per_class"] = {cfg.classes[c]: v for c, v in s["per_class"].items()}
        s["centre_drift_from_old_deg"] = centre_drift_deg(dirs, old_dirs)
        # row of class 0, 1, 2 in turn (local classes take rows from the bottom: K-1-c)
        s["head_rows"] = (
            model.head.weight.detach()
            .float()[model.class_map.rows(torch.arange(3), "local")]
            .tolist()
        )
        s["head"] = model.spec.head
        s["final_loss"] = losses[name][-1]
        stats[name] = s
    d1 = {}
    for name in models:
        key, role = name.split("/")
        if role == "old":
            continue
        old_f = feats[f"{key}/old"]
        d1[name] = definition1_pairs(
            feats[name], old_f, old_f, labels, labels, metric="cosine", same_set=True
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "settings": {**asdict(cfg), "classes": list(cfg.classes), "names": test.classes},
        "models": stats,
        "definition1_vs_old": d1,
        "seconds": round(time.perf_counter() - t0, 1),
        "files": [str(out / "simplex_demo.png"), str(out / "simplex_demo.json")],
    }
    plot_simplex_demo(
        {k: v.numpy() for k, v in feats.items()},
        labels.numpy(),
        {k: np.asarray(s["head_rows"]) for k, s in stats.items()},
        stats,
        test.classes,
        out / "simplex_demo.png",
    )
    atomic_write_json(out / "simplex_demo.json", result)
    return result


def plot_simplex_demo(
    feats: Mapping[str, np.ndarray],
    labels: np.ndarray,
    head_rows: Mapping[str, np.ndarray],
    stats: Mapping[str, Mapping[str, Any]],
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    max_points: int = 250,
) -> Path:
    """2 x 3 scatter of 2-D features: rows d-Simplex / learnable, columns old / update / retrained.

    Each panel shows held-out features coloured by class, the head's rows as
    rays from the origin (the d-Simplex vertices are the same in every
    panel; the learnable rows are whatever training made them), the class
    centres (crosses) and, in the second and third columns, the ``old``
    model's centre directions as grey dotted rays, so any drift is visible.
    """
    from matplotlib import colormaps

    colors = colormaps["tab10"]
    fig = new_figure(13.5, 9.0)
    rng = np.random.default_rng(0)
    roles = (("old", "first model"), ("update", "updated"), ("retrained", "retrained"))
    kinds = (
        ("simplex", "d-Simplex", {"old": "CoReS", "update": "HOC fine-tune", "retrained": "CoReS"}),
        ("learnable", "learnable", {"old": "ER", "update": "ER fine-tune", "retrained": "ER"}),
    )
    for row, (key, head_name, methods) in enumerate(kinds):
        old_centres = None
        for col, (role, role_name) in enumerate(roles):
            name = f"{key}/{role}"
            if name not in feats:
                continue
            ax = fig.add_subplot(2, 3, row * 3 + col + 1)
            f = np.asarray(feats[name], dtype=float)
            norms = np.linalg.norm(f, axis=1)
            lim = 1.15 * float(np.percentile(norms, 98)) if len(norms) else 1.0
            lim = max(lim, 1e-3)
            centres = []
            for c in range(len(class_names)):
                pts = f[labels == c]
                if len(pts) > max_points:
                    pts = pts[rng.choice(len(pts), max_points, replace=False)]
                ax.scatter(
                    pts[:, 0],
                    pts[:, 1],
                    s=6,
                    alpha=0.35,
                    color=colors(c),
                    lw=0,
                    label=class_names[c] if row == 0 and col == 0 else None,
                )
                centre = f[labels == c].mean(axis=0)
                centres.append(centre)
                ax.scatter(
                    [centre[0]],
                    [centre[1]],
                    marker="X",
                    s=110,
                    color=colors(c),
                    edgecolors="black",
                    linewidths=0.8,
                    zorder=6,
                )
            rows_ = np.asarray(head_rows[name], dtype=float)
            for c, w in enumerate(rows_[: len(class_names)]):
                u = w / max(np.linalg.norm(w), 1e-12)
                ls = "-" if key == "simplex" else "-."
                ax.plot(
                    [0, 1.6 * lim * u[0]],
                    [0, 1.6 * lim * u[1]],
                    ls,
                    color=colors(c),
                    lw=1.6,
                    zorder=4,
                )
                ax.scatter(
                    [lim * 0.92 * u[0]],
                    [lim * 0.92 * u[1]],
                    marker="*",
                    s=140,
                    color=colors(c),
                    edgecolors="black",
                    linewidths=0.6,
                    zorder=7,
                )
            if old_centres is not None and role != "old":
                for c in old_centres:
                    u = c / max(np.linalg.norm(c), 1e-12)
                    ax.plot(
                        [0, 1.6 * lim * u[0]],
                        [0, 1.6 * lim * u[1]],
                        ":",
                        color="0.35",
                        lw=1.3,
                        zorder=5,
                    )
            if role == "old":
                old_centres = centres
            st = stats[name]
            sub = f"centre → {'vertex' if key == 'simplex' else 'own row'} " + (
                f"{st['mean_direction_angle_deg']:.1f}°"
            )
            if role != "old":
                sub += f", drift from first {st['centre_drift_from_old_deg']:.1f}°"
            ax.set_title(f"{head_name}, {role_name} ({methods[role]})\n{sub}", fontsize=9)
            ax.axhline(0, color="0.85", lw=0.6, zorder=0)
            ax.axvline(0, color="0.85", lw=0.6, zorder=0)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.tick_params(labelsize=7)
    handles_ax = fig.axes[0]
    handles_ax.plot([], [], "-", color="0.2", label="head row (d-Simplex: fixed vertex)")
    handles_ax.scatter(
        [], [], marker="X", s=16, color="0.5", edgecolors="black", label="class centre"
    )
    handles_ax.plot([], [], ":", color="0.35", label="first model's centre direction")
    fig.legend(
        *handles_ax.get_legend_handles_labels(),
        loc="lower center",
        ncol=6,
        fontsize=8,
        frameon=False,
        markerscale=2.5,
    )
    fig.suptitle(
        "K = 3, 2-D features of held-out images: stationary (d-Simplex) vs learnable classifier",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    return save(fig, path)
