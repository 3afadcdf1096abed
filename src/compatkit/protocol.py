"""The IAM-CL2R task sequence (Biondi et al., CVPR 2024, Sec. 5; METHOD.md Sec. 4).

For each method and seed: task 0 starts from provider 0; at each replacement
task the model is replaced by the next provider (a model "pre-trained
elsewhere"); otherwise a task starts from the previous task's model. Each
task trains with the method's loss on the task's classes, half of every batch
from the rehearsal memory after the first task; the old model of the
compatibility term follows the reference rule (at a replacement, the new
provider itself; otherwise the previous task's model) or, optionally, is
always the previous model. Every task ends with a checkpoint and the memory's
state, so an interrupted run resumes from the last completed task with the
same final numbers.
"""

from __future__ import annotations

import copy
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from . import __version__
from .backbones import backbone_out_dim
from .checkpoint import load_checkpoint, read_contract, save_checkpoint
from .config import OptimConfig, RunConfig, to_dict
from .data import ImageSet, Normalize, RehearsalMemory, steps_per_epoch
from .distributed import Dist
from .distributed import init as init_distributed
from .errors import CheckpointError, ConfigError
from .methods import METHODS, Method, TaskContext, build_method, load_all
from .model import CompatModel, ModelSpec, build_model
from .plan import Plan, make_plan, provider_key
from .progress import RunLog
from .rundir import (
    check_identity,
    ensure_run_record,
    load_memory,
    providers_cache,
    read_run_id,
    result_changes,
    save_memory,
)
from .simplex import ClassMap
from .train import Precision, TrainingDiverged, resolve_precision, train_task

__all__ = ["Runner", "resolve_device", "seed_dir", "task_seed"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} asked for, but CUDA is not available here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(
            f"device: {name!r} asked for, but this machine has {torch.cuda.device_count()} "
            "CUDA device(s), numbered from 0"
        )
    return dev


def task_seed(seed: int, task: int, salt: int = 0) -> int:
    """A seed per (run seed, task): resuming at task t replays exactly what t would have done."""
    return (seed * 1_000_003 + task * 7919 + salt) % (2**63 - 1)


def seed_dir(run_dir: Path, method: str, seed: int) -> Path:
    return run_dir / method / f"seed_{seed}"


class _Supervised(Method):
    """Cross-entropy only: how providers are trained (not a registered method)."""

    name = "_provider"

    def loss(self, step):
        from .losses import cross_entropy

        ce = cross_entropy(step.out.logits, step.targets)
        return ce, {"ce": ce.detach()}


@dataclass
class _Env:
    device: torch.device
    precision: Precision
    normalize: Callable[[torch.Tensor], torch.Tensor]


class Runner:
    """Runs a configuration end to end: providers, task sequences, evaluation, report."""

    def __init__(self, cfg: RunConfig, run_dir: Path, log: RunLog | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.dist: Dist = init_distributed(cfg.device)
        if log is None:
            log = RunLog(
                self.run_dir / "log.txt" if self.dist.main else None, quiet=not self.dist.main
            )
        self.log = log
        load_all()
        self.device = resolve_device(cfg.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.precision = resolve_precision(cfg.precision, self.device)
        if cfg.num_workers_threads:
            torch.set_num_threads(cfg.num_workers_threads)
        self.providers_dir = Path(cfg.providers_dir) if cfg.providers_dir else providers_cache()
        self._plan: Plan | None = None
        self._data_sha: dict[int, str] = {}
        self._run_id: str | None = None

    # ------------------------------------------------------------------ setup
    @property
    def plan(self) -> Plan:
        if self._plan is None:
            self._plan = make_plan(self.cfg)
        return self._plan

    def env(self) -> _Env:
        cl = self.cfg.channels_last and self.device.type == "cuda"
        return _Env(self.device, self.precision, Normalize(self.plan.mean, self.plan.std, cl))

    def spec(self, head: str, backbone: str | None = None) -> ModelSpec:
        m = self.cfg.model
        k = m.num_classes
        backbone = backbone or m.backbone
        channels = self.plan.local.channels
        # The released learnable-head models have no junction: their feature is the backbone's.
        junction = not (head == "learnable" and m.learnable_feature == "backbone")
        if not junction:
            feat = backbone_out_dim(backbone, channels)
        else:
            feat = m.feat_dim if m.feat_dim is not None else k - 1
        return ModelSpec(
            backbone=backbone,
            in_channels=channels,
            feat_dim=feat,
            head=head,
            num_classes=k,
            etf_seed=m.etf_seed,
            junction=junction,
        )

    def write_config(self) -> None:
        """Create the run's records (config.yaml, environment.json, run.json), or check them.

        A run's config.yaml is never overwritten: when it exists (a resume), the
        settings must agree on every key that shapes the results, and the precision
        this machine resolves must be the one the run was trained with.
        """
        cfg_file = self.run_dir / "config.yaml"
        env_file = self.run_dir / "environment.json"
        if cfg_file.is_file():
            self._check_existing_records(cfg_file, env_file)
        else:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            tmp = cfg_file.with_suffix(".yaml.tmp")
            tmp.write_text(yaml.safe_dump(to_dict(self.cfg), sort_keys=False))
            tmp.replace(cfg_file)
        self._run_id = ensure_run_record(self.run_dir)
        if env_file.is_file():
            return
        env = {
            "compatkit": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": str(self.device),
            "precision": self.precision.name,
            "cuda_device": torch.cuda.get_device_name(self.device)
            if self.device.type == "cuda"
            else None,
        }
        env_file.write_text(json.dumps(env, indent=2))

    def _check_existing_records(self, cfg_file: Path, env_file: Path) -> None:
        from .config import load_config
        from .rundir import format_changes

        changes = result_changes(load_config(cfg_file), self.cfg)
        if changes:
            raise ConfigError(
                f"{cfg_file} holds other settings: {format_changes(changes)}; a run's config is "
                "never rewritten (resume with its own settings, or start a new run)"
            )
        if env_file.is_file():
            try:
                saved = json.loads(env_file.read_text()).get("precision")
            except (ValueError, AttributeError):
                saved = None
            if saved and saved != self.precision.name:
                raise ConfigError(
                    f"precision: this run was trained in {saved} ({env_file}), this machine "
                    f"resolves {self.precision.name}; resume where the run started, or set "
                    f"device/precision so that it resolves to {saved}"
                )

    @property
    def run_id(self) -> str | None:
        """The run's identity (run.json); None for a run made before run ids existed."""
        if self._run_id is None:
            self._run_id = read_run_id(self.run_dir)
        return self._run_id

    def ensure_run_id(self) -> str:
        """Create run.json if the run has none (rank 0), so every file it writes says whose it
        is; every rank must call it at the same point (it waits for rank 0)."""
        if self.dist.main and read_run_id(self.run_dir) is None:
            ensure_run_record(self.run_dir)
        self.dist.barrier()
        self._run_id = read_run_id(self.run_dir)
        assert self._run_id is not None
        return self._run_id

    def heads_needed(self) -> list[str]:
        return sorted({METHODS[m].head for m in self.cfg.methods})

    # ------------------------------------------------------------------ providers
    def provider_count(self) -> int:
        return 1 if self.cfg.no_replacement else len(self.cfg.replacement_tasks) + 1

    def provider_data_sha256(self, index: int) -> str | None:
        """SHA-256 of provider ``index``'s training images and labels (None: a configured file).

        Part of the recipe key: the cache is shared by every run on the machine, and the same
        config on other data files (a test's tiny dataset, another root) is another provider.
        """
        if index not in self._data_sha:
            data = self.plan.providers[index]
            if data is None:
                return None
            self._data_sha[index] = _imageset_sha256(data)
        return self._data_sha[index]

    def provider_recipe(self, index: int, head: str) -> str:
        """The recipe key of a trained provider: everything that decides its weights."""
        return provider_key(
            self.cfg, index, head, self.provider_data_sha256(index), self.precision.name
        )

    def provider_path(self, index: int, head: str) -> Path:
        p = self.cfg.providers[index]
        if p.checkpoint and head in p.checkpoint:
            return Path(p.checkpoint[head])
        name = p.name or f"provider{index}"
        return self.providers_dir / f"{name}-{head}-{self.provider_recipe(index, head)}.pt"

    def check_providers(self, heads: list[str] | None = None) -> dict[tuple[int, str], str]:
        """Verify every provider file that would be reused; train nothing.

        Returns ``{(index, head): "configured" | "cached" | "train"}``. A configured or
        cached file that does not hold what the plan needs is refused here, before a run
        creates anything.
        """
        status = {}
        for i in range(self.provider_count()):
            pc = self.cfg.providers[i]
            for h in heads or self.heads_needed():
                if pc.checkpoint and h not in pc.checkpoint:
                    raise ConfigError(
                        f"providers[{i}].checkpoint has no {h!r} file, needed by "
                        f"{[m for m in self.cfg.methods if METHODS[m].head == h]}"
                    )
                path = self.provider_path(i, h)
                if pc.checkpoint:
                    self.verify_provider(path, i, h)
                    status[(i, h)] = "configured"
                elif path.is_file():
                    self.verify_provider(path, i, h)
                    status[(i, h)] = "cached"
                else:
                    status[(i, h)] = "train"
        return status

    def ensure_providers(self, heads: list[str] | None = None) -> dict[tuple[int, str], Path]:
        """Train (or reuse, after checking) every provider in every head version needed."""
        out = {}
        for (i, h), state in self.check_providers(heads).items():
            path = self.provider_path(i, h)
            if state == "cached":
                self.log.info(f"provider {i} ({h}): reusing {path}")
            elif state == "train":
                self._train_provider(i, h, path)
            out[(i, h)] = path
        return out

    def load_provider(self, index: int, head: str, map_location="cpu") -> CompatModel:
        """Provider ``index`` in its ``head`` version, checked against the plan."""
        return self.verify_provider(self.provider_path(index, head), index, head, map_location)

    def verify_provider(self, path: Path, index: int, head: str, map_location="cpu") -> CompatModel:
        """Load a provider file and refuse, in one line naming it, anything but what the plan
        needs: the model's contract (backbone, input channels, feature size, head, K, ETF
        seed), provider classes only (none of the local learner), on rows that the local
        classes do not use, and for a cached file the classes it was trained on and the
        recipe key its name promises."""
        pc = self.cfg.providers[index]
        configured = bool(pc.checkpoint)
        where = (
            f"providers[{index}].checkpoint.{head}" if configured else f"provider {index} ({head})"
        )
        spec = self.spec(head, pc.backbone)
        expect: dict = spec.to_dict()
        if configured and head == "learnable":
            del expect["num_classes"]  # initial rows of a growing head: any file may differ
        if configured and head != "etf":
            del expect["etf_seed"]  # no frame to agree on
        if not configured:
            classes = self.plan.provider_classes[index]
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
        shared = set(model.class_map.provider) if self.cfg.local.keep_provider_rows else set()
        local_rows = {k - 1 - c for c in self.plan.class_order if c not in shared}
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
        if not configured and extra.get("recipe") != self.provider_recipe(index, head):
            raise CheckpointError(
                f"{where}: checkpoint {path} was trained by recipe {extra.get('recipe')!r}, "
                f"not {self.provider_recipe(index, head)!r} as its name says{fix}"
            )
        return model

    def provider_optim(self, index: int) -> OptimConfig:
        """How provider ``index`` is trained: its own epochs, batch and rate, from scratch."""
        pc = self.cfg.providers[index]
        return OptimConfig(
            epochs=pc.epochs,
            batch_size=pc.batch_size,
            lr=pc.lr,
            min_lr=pc.lr * 1e-3,
            momentum=self.cfg.train.momentum,
            weight_decay=self.cfg.train.weight_decay,
            pad=self.cfg.train.pad,
            flip=self.cfg.train.flip,
        )

    def _train_provider(self, index: int, head: str, path: Path) -> None:
        pc = self.cfg.providers[index]
        data = self.plan.providers[index]
        assert data is not None
        env = self.env()
        seed = task_seed(self.cfg.data_seed, 10_000 + index)
        torch.manual_seed(seed)
        model = build_model(self.spec(head, pc.backbone)).to(env.device)
        model.add_classes(sorted(set(data.labels.tolist())), "provider")
        model.to(env.device)
        opt = self.provider_optim(index)
        ctx = TaskContext(model, None, -1, [], [], device=env.device, normalize=env.normalize)
        label = f"provider {index} ({head}, {len(data)} images, {pc.epochs} epochs)"
        res = self._train(
            model,
            _Supervised(),
            ctx,
            data.to(env.device),
            None,
            opt,
            env,
            label,
            seed,
            space="provider",
        )
        self._save(
            path,
            model,
            extra={
                "role": "provider",
                "index": index,
                "name": pc.name,
                "recipe": self.provider_recipe(index, head),
                "data_sha256": self.provider_data_sha256(index),
                "losses": res.losses,
                "normalize": {"mean": list(self.plan.mean), "std": list(self.plan.std)},
            },
        )
        self.log.info(
            f"provider {index} ({head}): trained in {res.seconds:.1f}s "
            f"({res.images_per_s:.0f} img/s), final loss {res.losses[-1]:.3f} -> {path.name}"
        )

    def _save(self, path: Path, model: CompatModel, extra: dict) -> None:
        """Rank 0 writes; every rank waits until the file is there."""
        if self.dist.main:
            save_checkpoint(path, model, extra=extra)
        self.dist.barrier()

    def _train(self, model, method, ctx, data, memory, opt, env, label, seed, space="local"):
        gen = torch.Generator(device=env.device).manual_seed(seed)
        n_mem = len(memory) if memory is not None else 0
        total = opt.epochs * steps_per_epoch(len(data), n_mem, opt.batch_size, opt.sampler)
        self.log.start(label, total)
        state = {"t": time.perf_counter()}

        def on_step(s: dict) -> None:
            if s["step"] % 10 == 0 or s["step"] == s["total"]:
                rate = s["seen"] / max(1e-9, time.perf_counter() - state["t"])
                self.log.advance(
                    f"ep {s['epoch'] + 1} loss {float(s['loss'].detach()):.3f} {rate:.0f} img/s"
                )
            else:
                self.log.advance()

        try:
            ddp = None
            if self.dist.enabled:
                from torch.nn.parallel import DistributedDataParallel

                if env.device.type == "cuda":
                    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
                ids = [env.device.index] if env.device.type == "cuda" else None
                ddp = DistributedDataParallel(model, device_ids=ids)
            return train_task(
                model,
                method,
                ctx,
                data,
                memory,
                opt,
                env.normalize,
                env.precision,
                gen,
                space=space,
                on_step=on_step,
                ddp_model=ddp,
                dist=self.dist,
            )
        except TrainingDiverged as e:
            raise TrainingDiverged(f"{label}: {e}") from None
        finally:
            self.log.finish()

    # ------------------------------------------------------------------ task sequence
    def completed_tasks(
        self, method_name: str, seed: int
    ) -> tuple[int, CompatModel | None, dict | None]:
        """The finished prefix of a sequence, checked: ``(tasks done, last model, memory state)``.

        A task counts as done when its checkpoint and memory file are both there; only
        a contiguous prefix counts. Every checkpoint of the prefix must be this run's
        file for this method, seed and task, and the last memory file must read back
        intact; anything else is refused naming the file, before any training.
        """
        out = seed_dir(self.run_dir, method_name, seed)
        n = self.plan.num_tasks
        done = 0
        while (
            done < n
            and (out / f"task_{done}.pt").is_file()
            and (out / f"memory_{done}.pt").is_file()
        ):
            done += 1
        run_id = self.run_id
        for t in range(done):
            self.check_task_checkpoint(read_contract(out / f"task_{t}.pt"), method_name, seed, t)
        if not done:
            return 0, None, None
        last = done - 1
        model, _ = load_checkpoint(out / f"task_{last}.pt", map_location="cpu")
        state, extra = load_memory(out / f"memory_{last}.pt")
        if extra:  # a memory file of compatkit 0.1.0 carries no identity
            check_identity(
                extra,
                out / f"memory_{last}.pt",
                "memory file",
                method=method_name,
                seed=seed,
                task=last,
                run_id=run_id,
                role="memory",
            )
        return done, model, state

    def check_task_checkpoint(self, meta: dict, method_name: str, seed: int, task: int) -> None:
        """Refuse a task checkpoint that is not this run's file for (method, seed, task)."""
        check_identity(
            meta["extra"],
            meta["path"],
            "checkpoint",
            method=method_name,
            seed=seed,
            task=task,
            run_id=self.run_id,
        )

    def run_sequence(self, method_name: str, seed: int, resume: bool = True) -> list[Path]:
        """Train one method through every task for one seed; returns the task checkpoints."""
        cfg, plan = self.cfg, self.plan
        env = self.env()
        method = build_method(method_name, cfg.method_options.get(method_name))
        head = method.head
        out = seed_dir(self.run_dir, method_name, seed)
        run_id = self.ensure_run_id()
        out.mkdir(parents=True, exist_ok=True)
        segments = plan.segments(cfg)
        per_class = cfg.local.memory_per_class
        memory = RehearsalMemory(per_class, seed=seed) if per_class > 0 else None
        prev: CompatModel | None = None
        start = 0
        n_tasks = plan.num_tasks
        paths = [out / f"task_{t}.pt" for t in range(n_tasks)]
        if resume:
            start, prev, state = self.completed_tasks(method_name, seed)
            if prev is not None:
                prev.to(env.device).eval()
            if memory is not None and state is not None:
                try:
                    memory.load_state_dict(state)
                except (KeyError, ValueError, TypeError, RuntimeError) as e:
                    raise CheckpointError(
                        f"memory file {out / f'memory_{start - 1}.pt'}: not a memory state ({e})"
                    ) from None
            if 0 < start < n_tasks:
                self.log.info(f"{method_name} seed {seed}: resuming after task {start}/{n_tasks}")
        for t in range(start, plan.num_tasks):
            task = plan.scenario[t]
            torch.manual_seed(task_seed(seed, t, 1))
            replaced = t == 0 or segments[t] != segments[t - 1]
            provider_model = None
            if replaced:
                model = self.load_provider(segments[t], head)
                provider_model = model
                if head == "learnable" and cfg.model.learnable_replacement == "fresh":
                    model = model.with_fresh_head()  # the provider's classifier is dropped
                else:
                    model = copy.deepcopy(model)
            else:
                assert prev is not None
                model = copy.deepcopy(prev)
            seen = [c for i in range(t + 1) for c in plan.scenario[i].classes]
            model.add_classes(seen, "local", cfg.local.keep_provider_rows)
            model.to(env.device)
            old = None
            if method.needs_old:
                rule = method.old_rule or cfg.old_model
                if replaced and (rule == "reference" or prev is None):
                    old = provider_model
                else:
                    old = prev
                old = copy.deepcopy(old).to(env.device).eval()
                for p in old.parameters():
                    p.requires_grad_(False)
            use_mem = memory is not None and method.uses_memory and t > 0
            mem = memory.as_imageset() if use_mem else None
            ctx = TaskContext(
                model=model,
                old_model=old,
                task_id=t,
                new_classes=list(task.classes),
                old_classes=sorted(old.class_map.local) if old is not None else [],
                memory_images=mem.images.to(env.device) if mem is not None else None,
                memory_labels=mem.labels.to(env.device) if mem is not None else None,
                device=env.device,
                normalize=env.normalize,
            )
            label = f"{method_name} seed {seed} task {t + 1}/{n_tasks}" + (
                " (replacement)" if replaced and t else ""
            )
            res = self._train(
                model,
                method,
                ctx,
                task.data.to(env.device),
                mem.to(env.device) if mem is not None else None,
                cfg.train,
                env,
                label,
                task_seed(seed, t, 2),
            )
            parts = " ".join(f"{k} {v:.3f}" for k, v in res.parts[-1].items())
            self.log.info(
                f"{label}: classes {task.classes}, provider {segments[t]}, "
                f"loss {res.losses[0]:.3f} -> {res.losses[-1]:.3f} ({parts}), "
                f"{res.images_per_s:.0f} img/s, {res.seconds:.1f}s"
            )
            self._save(
                paths[t],
                model,
                extra={
                    "role": "task",
                    "method": method_name,
                    "seed": seed,
                    "task": t,
                    "run_id": run_id,
                    "provider": segments[t],
                    "replaced": bool(replaced),
                    "classes": list(task.classes),
                    "losses": res.losses,
                    "loss_parts": res.parts,
                    "images_per_s": res.images_per_s,
                    "normalize": {"mean": list(plan.mean), "std": list(plan.std)},
                },
            )
            if memory is not None:
                memory.update(task.data)
            if self.dist.main:
                save_memory(
                    out / f"memory_{t}.pt",
                    memory.state_dict() if memory is not None else {},
                    {
                        "role": "memory",
                        "method": method_name,
                        "seed": seed,
                        "task": t,
                        "run_id": run_id,
                    },
                )
            self.dist.barrier()
            prev = model
        return paths


def _imageset_sha256(data: ImageSet) -> str:
    """SHA-256 of a set's images and labels, read in blocks of CPU memory."""
    import hashlib

    h = hashlib.sha256()
    for name, t in (("images", data.images), ("labels", data.labels)):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{list(t.shape)}".encode())
        flat = t.reshape(-1).view(torch.uint8) if t.numel() else t.reshape(-1)
        for i in range(0, flat.numel(), 1 << 26):
            h.update(flat[i : i + (1 << 26)].numpy().tobytes())
    return h.hexdigest()


def evaluate_run(runner: Runner, methods: list[str] | None = None) -> dict:
    """Compute every method's matrices and metrics from the run's checkpoints; write JSON."""
    from .evaluate import evaluate_sequence, summarize, task_contract

    cfg, plan, log = runner.cfg, runner.plan, runner.log
    device = runner.device
    norm = Normalize(plan.mean, plan.std)
    query, gallery = plan.query.to(device), plan.gallery.to(device)
    local_test = plan.local_test.to(device) if plan.local_test is not None else None
    seen = [
        [c for i in range(t + 1) for c in plan.scenario[i].classes] for t in range(plan.num_tasks)
    ]
    results: dict = {}
    extractions = 0
    t0 = time.perf_counter()
    segs = plan.segments(cfg)
    firsts = {t for t in range(plan.num_tasks) if t == 0 or segs[t] != segs[t - 1]}
    for m in methods or cfg.methods:
        runs = []
        for seed in cfg.seeds:
            d = seed_dir(runner.run_dir, m, seed)
            ckpts = [d / f"task_{t}.pt" for t in range(plan.num_tasks)]
            missing = [p.name for p in ckpts if not p.is_file()]
            if missing:
                raise CheckpointError(
                    f"{m} seed {seed}: missing checkpoints {missing} in {d}; finish the run with "
                    f"compatkit run --out {runner.run_dir} --resume"
                )
            for t, c in enumerate(ckpts):
                runner.check_task_checkpoint(read_contract(c), m, seed, t)
            starts = [
                runner.provider_path(segs[t], METHODS[m].head) if t in firsts else ckpts[t - 1]
                for t in range(plan.num_tasks)
            ]
            label = f"evaluating {m} seed {seed}"
            steps = len(ckpts) * (2 if local_test is not None else 1)
            log.start(label, steps)
            try:
                res, n = evaluate_sequence(
                    ckpts,
                    query,
                    gallery,
                    norm,
                    cfg.eval.batch_size,
                    runner.precision,
                    device,
                    d / "features",
                    cfg.eval.full_gallery,
                    runner.dist,
                    local_test,
                    seen,
                    starts,
                    cfg.local.keep_provider_rows,
                    progress=log.advance,
                    expect=task_contract(cfg, m),
                )
            finally:
                log.finish()
            extractions += n
            runs.append({"seed": seed, **res})
            log.info(
                f"{m} seed {seed}: AC {res['AC']:.2f}  AM {res['AM']:.2f}  "
                f"final self-test {res['final_self']:.2f}"
            )
        results[m] = {**runs[0], "seeds": list(cfg.seeds), "runs": runs, "summary": summarize(runs)}
    results["_meta"] = {
        "seeds": list(cfg.seeds),
        "num_tasks": plan.num_tasks,
        "replacement_tasks": [0] + ([] if cfg.no_replacement else sorted(cfg.replacement_tasks)),
        "methods": list(methods or cfg.methods),
        "dataset": cfg.local.data.dataset,
        "class_order": plan.class_order,
        "tasks": [list(plan.scenario[t].classes) for t in range(plan.num_tasks)],
        "query_images": len(plan.query),
        "gallery_images": len(plan.gallery),
        "local_test_images": len(plan.local_test) if plan.local_test is not None else 0,
        "no_replacement": cfg.no_replacement,
        "compatkit_version": __version__,
        "device": str(device),
        "precision": runner.precision.name,
        "feature_extractions": extractions,
        "eval_seconds": round(time.perf_counter() - t0, 2),
    }
    return results


def write_metrics(run_dir: Path, results: dict) -> Path:
    path = Path(run_dir) / "metrics.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(path)
    return path
