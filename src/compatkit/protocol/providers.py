"""The providers: models "pre-trained elsewhere" that start the sequence and replace it.

Provider i starts segment i of the task sequence (task 1, and every replacement task). A
provider is trained once from scratch with cross-entropy on its own images (no image of the
local learner or of the evaluation) and kept in a cache every run on the machine shares. Its
file name carries its *recipe key*: everything that decides its weights (its config, the data
partition, a digest of its training images, the model, the precision), so runs of different
configs never mix providers, and every reuse checks the file's contract before trusting it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..checkpoint import CheckpointError, load_checkpoint
from ..config import OptimConfig
from ..data import ImageSet
from ..errors import ConfigError
from ..losses import cross_entropy
from ..methods import METHODS, Method, TaskContext
from ..model import CompatModel, build_model
from ..runtime.files import unwritable_dir
from ..simplex import ClassMap
from .plan import provider_key
from .records import providers_cache
from .trainer import fit, save_on_main, task_seed

if TYPE_CHECKING:
    from .experiment import Experiment

__all__ = ["Providers", "imageset_sha256"]


class _Supervised(Method):
    """Cross-entropy only: how providers are trained (not a registered method)."""

    name = "_provider"

    def loss(self, step):
        ce = cross_entropy(step.out.logits, step.targets)
        return ce, {"ce": ce.detach()}


def imageset_sha256(data: ImageSet) -> str:
    """SHA-256 of a set's images and labels, read in blocks of CPU memory."""
    h = hashlib.sha256()
    for name, t in (("images", data.images), ("labels", data.labels)):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{list(t.shape)}".encode())
        flat = t.reshape(-1).view(torch.uint8) if t.numel() else t.reshape(-1)
        for i in range(0, flat.numel(), 1 << 26):
            h.update(flat[i : i + (1 << 26)].numpy().tobytes())
    return h.hexdigest()


class Providers:
    """The providers of one experiment: where each is cached, checked, trained and loaded."""

    def __init__(self, exp: Experiment) -> None:
        self.exp = exp
        cfg = exp.cfg
        self.folder = Path(cfg.providers_dir) if cfg.providers_dir else providers_cache()
        self._data_sha: dict[int, str] = {}

    @property
    def count(self) -> int:
        """Providers the sequence uses: one per segment (one without replacements)."""
        cfg = self.exp.cfg
        return 1 if cfg.no_replacement else len(cfg.replacement_tasks) + 1

    def heads_needed(self) -> list[str]:
        """Head kinds of the configured methods: each provider is trained in each of them."""
        return sorted({METHODS[m].head for m in self.exp.cfg.methods})

    def data_sha256(self, index: int) -> str | None:
        """SHA-256 of provider ``index``'s training images and labels (None: a configured file).

        Part of the recipe key: the cache is shared by every run on the machine, and the same
        config on other data files (a test's tiny dataset, another root) is another provider.
        """
        if index not in self._data_sha:
            data = self.exp.plan.providers[index]
            if data is None:
                return None
            self._data_sha[index] = imageset_sha256(data)
        return self._data_sha[index]

    def recipe(self, index: int, head: str) -> str:
        """The recipe key of a trained provider: everything that decides its weights."""
        return provider_key(
            self.exp.cfg, index, head, self.data_sha256(index), self.exp.precision.name
        )

    def path(self, index: int, head: str) -> Path:
        """The configured file of provider ``index``, else its file in the cache."""
        p = self.exp.cfg.providers[index]
        if p.checkpoint and head in p.checkpoint:
            return Path(p.checkpoint[head])
        name = p.name or f"provider{index}"
        return self.folder / f"{name}-{head}-{self.recipe(index, head)}.pt"

    def check(
        self, heads: list[str] | None = None, create_folder: bool = True
    ) -> dict[tuple[int, str], str]:
        """Verify every provider file that would be reused; train nothing.

        Returns ``{(index, head): "configured" | "cached" | "train"}``. A configured or
        cached file that does not hold what the plan needs is refused here, before a run
        creates anything, and so is a cache folder where a provider to train could not be
        saved (made, and tried, with ``create_folder``; only looked at without).
        """
        cfg = self.exp.cfg
        status = {}
        for i in range(self.count):
            pc = cfg.providers[i]
            for h in heads or self.heads_needed():
                if pc.checkpoint and h not in pc.checkpoint:
                    raise ConfigError(
                        f"providers[{i}].checkpoint has no {h!r} file, needed by "
                        f"{[m for m in cfg.methods if METHODS[m].head == h]}"
                    )
                path = self.path(i, h)
                if pc.checkpoint:
                    self.verify(path, i, h)
                    status[(i, h)] = "configured"
                elif path.is_file():
                    self.verify(path, i, h)
                    status[(i, h)] = "cached"
                else:
                    status[(i, h)] = "train"
        if "train" in status.values():
            why = unwritable_dir(self.folder, create=create_folder)
            if why:
                what = "providers_dir" if cfg.providers_dir else "the providers cache"
                raise ConfigError(
                    f"{what} {self.folder}: {why}; providers to train could not be saved there"
                )
        return status

    def ensure(self, heads: list[str] | None = None) -> dict[tuple[int, str], Path]:
        """Train (or reuse, after checking) every provider in every head version needed."""
        out = {}
        for (i, h), state in self.check(heads).items():
            path = self.path(i, h)
            if state == "cached":
                self.exp.log.info(f"provider {i} ({h}): reusing {path}")
            elif state == "train":
                self.train(i, h, path)
            out[(i, h)] = path
        return out

    def load(self, index: int, head: str, map_location="cpu") -> CompatModel:
        """Provider ``index`` in its ``head`` version, checked against the plan."""
        return self.verify(self.path(index, head), index, head, map_location)

    def verify(self, path: Path, index: int, head: str, map_location="cpu") -> CompatModel:
        """Load a provider file and refuse, in one line naming it, anything but what the plan
        needs: the model's contract (backbone, input channels, feature size, head, K, ETF
        seed), provider classes only (none of the local learner), on rows that the local
        classes do not use, and for a cached file the classes it was trained on and the
        recipe key its name promises."""
        pc = self.exp.cfg.providers[index]
        configured = bool(pc.checkpoint)
        where = (
            f"providers[{index}].checkpoint.{head}" if configured else f"provider {index} ({head})"
        )
        spec = self.exp.spec(head, pc.backbone)
        expect: dict = spec.to_dict()
        if configured and head == "learnable":
            del expect["num_classes"]  # initial rows of a growing head: any file may differ
        if configured and head != "etf":
            del expect["etf_seed"]  # no frame to agree on
        if not configured:
            classes = self.exp.plan.provider_classes[index]
            cmap = ClassMap(spec.num_classes if head != "learnable" else None)
            cmap.add_provider(classes)
            expect["class_map"] = cmap.to_dict()
        fix = "" if configured else "; delete it and compatkit trains it again"
        try:
            model, meta = load_checkpoint(path, expect=expect, map_location=map_location)
        except CheckpointError as e:
            raise CheckpointError(f"{where}: {e}{fix}") from None
        extra = meta["extra"]
        if extra.get("role") not in (None, "provider"):
            raise CheckpointError(
                f"{where}: checkpoint {path} is a {extra.get('role')} checkpoint, not a provider"
            )
        k = spec.num_classes
        shared = set(model.class_map.provider) if self.exp.cfg.local.keep_provider_rows else set()
        local_rows = {k - 1 - c for c in self.exp.plan.class_order if c not in shared}
        clash = (
            local_rows & set(model.class_map.provider.values()) if head != "learnable" else set()
        )
        if model.class_map.local or clash:
            raise CheckpointError(
                f"{where}: checkpoint {path} "
                + (
                    f"holds local classes {sorted(model.class_map.local)}"
                    if model.class_map.local
                    else f"puts provider classes on rows {sorted(clash)}, which the local "
                    "classes use"
                )
            )
        if not configured and extra.get("recipe") != self.recipe(index, head):
            raise CheckpointError(
                f"{where}: checkpoint {path} was trained by recipe {extra.get('recipe')!r}, "
                f"not {self.recipe(index, head)!r} as its name says{fix}"
            )
        return model

    def optim(self, index: int) -> OptimConfig:
        """How provider ``index`` is trained: its own epochs, batch and rate, from scratch."""
        cfg = self.exp.cfg
        pc = cfg.providers[index]
        return OptimConfig(
            epochs=pc.epochs,
            batch_size=pc.batch_size,
            lr=pc.lr,
            min_lr=pc.lr * 1e-3,
            momentum=cfg.train.momentum,
            weight_decay=cfg.train.weight_decay,
            pad=cfg.train.pad,
            flip=cfg.train.flip,
        )

    def train(self, index: int, head: str, path: Path) -> None:
        """Train provider ``index`` in its ``head`` version from scratch and cache it."""
        exp = self.exp
        pc = exp.cfg.providers[index]
        data = exp.plan.providers[index]
        assert data is not None
        rt = exp.runtime
        seed = task_seed(exp.cfg.data_seed, 10_000 + index)
        torch.manual_seed(seed)
        model = build_model(exp.spec(head, pc.backbone)).to(rt.device)
        model.add_classes(sorted(set(data.labels.tolist())), "provider")
        model.to(rt.device)
        ctx = TaskContext(model, None, -1, [], [], device=rt.device, normalize=rt.normalize)
        label = f"provider {index} ({head}, {len(data)} images, {pc.epochs} epochs)"
        tracked = f"providers/{pc.name or f'provider{index}'}-{head}"
        with exp.tracking.training(tracked, "provider", provider=index, head=head) as steps:
            res = fit(
                model,
                _Supervised(),
                ctx,
                data.to(rt.device),
                None,
                self.optim(index),
                rt,
                exp.log,
                label,
                seed,
                space="provider",
            )
            steps.task_done(1, res)
        save_on_main(
            rt.dist,
            path,
            model,
            extra={
                "role": "provider",
                "index": index,
                "name": pc.name,
                "recipe": self.recipe(index, head),
                "data_sha256": self.data_sha256(index),
                "losses": res.losses,
                "normalize": {"mean": list(exp.plan.mean), "std": list(exp.plan.std)},
            },
        )
        exp.log.info(
            f"provider {index} ({head}): trained in {res.seconds:.1f}s "
            f"({res.images_per_s:.0f} img/s), final loss {res.losses[-1]:.3f} -> {path.name}"
        )
