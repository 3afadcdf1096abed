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
from .checkpoint import load_checkpoint, save_checkpoint
from .config import ConfigError, OptimConfig, RunConfig, to_dict
from .data import RehearsalMemory, steps_per_epoch
from .distributed import Dist
from .distributed import init as init_distributed
from .methods import METHODS, Method, TaskContext, build_method, load_all
from .model import CompatModel, ModelSpec, build_model
from .plan import Plan, make_plan, provider_key
from .progress import RunLog
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
        self.providers_dir = (
            Path(cfg.providers_dir) if cfg.providers_dir else self.run_dir.parent / "providers"
        )
        self._plan: Plan | None = None

    # ------------------------------------------------------------------ setup
    @property
    def plan(self) -> Plan:
        if self._plan is None:
            self._plan = make_plan(self.cfg)
        return self._plan

    def env(self) -> _Env:
        p = self.plan
        mean = torch.tensor(p.mean, device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(p.std, device=self.device).view(1, -1, 1, 1)
        cl = self.cfg.channels_last and self.device.type == "cuda"

        def normalize(x: torch.Tensor) -> torch.Tensor:
            y = (x.float() / 255.0 - mean) / std
            return y.contiguous(memory_format=torch.channels_last) if cl else y

        return _Env(self.device, self.precision, normalize)

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
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(
            yaml.safe_dump(to_dict(self.cfg), sort_keys=False)
        )
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
        (self.run_dir / "environment.json").write_text(json.dumps(env, indent=2))

    def heads_needed(self) -> list[str]:
        return sorted({METHODS[m].head for m in self.cfg.methods})

    # ------------------------------------------------------------------ providers
    def provider_path(self, index: int, head: str) -> Path:
        p = self.cfg.providers[index]
        if p.checkpoint and head in p.checkpoint:
            return Path(p.checkpoint[head])
        name = p.name or f"provider{index}"
        return self.providers_dir / f"{name}-{head}-{provider_key(self.cfg, index, head)}.pt"

    def ensure_providers(self, heads: list[str] | None = None) -> dict[tuple[int, str], Path]:
        """Train (or reuse) every provider in every head version the methods need."""
        heads = heads or self.heads_needed()
        n = 1 if self.cfg.no_replacement else len(self.cfg.replacement_tasks) + 1
        out = {}
        for i in range(n):
            for h in heads:
                path = self.provider_path(i, h)
                pc = self.cfg.providers[i]
                if pc.checkpoint:
                    if h not in pc.checkpoint:
                        raise ValueError(
                            f"providers[{i}].checkpoint has no {h!r} file, needed by "
                            f"{[m for m in self.cfg.methods if METHODS[m].head == h]}"
                        )
                    self._check_provider_file(path, h, i)
                elif path.is_file():
                    self.log.info(f"provider {i} ({h}): reusing {path.name}")
                else:
                    self._train_provider(i, h, path)
                out[(i, h)] = path
        return out

    def _check_provider_file(self, path: Path, head: str, index: int) -> None:
        spec = self.spec(head)
        expect = {"head": head, "feat_dim": spec.feat_dim, "in_channels": spec.in_channels}
        expect["junction"] = spec.junction
        if head != "learnable":
            expect["num_classes"] = spec.num_classes
        if head == "etf":
            expect["etf_seed"] = spec.etf_seed
        try:
            model, _ = load_checkpoint(path, expect=expect)
        except ValueError as e:
            raise ValueError(f"providers[{index}].checkpoint.{head}: {e}") from e
        k = spec.num_classes
        local_rows = {k - 1 - c for c in self.plan.class_order}
        clash = (
            local_rows & set(model.class_map.provider.values()) if head != "learnable" else set()
        )
        if clash or model.class_map.local:
            raise ValueError(
                f"providers[{index}].checkpoint.{head}: its classes occupy rows {sorted(clash)} "
                "reserved for the local classes, or it already has local classes"
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
        opt = OptimConfig(
            epochs=pc.epochs,
            batch_size=pc.batch_size,
            lr=pc.lr,
            min_lr=pc.lr * 1e-3,
            momentum=self.cfg.train.momentum,
            weight_decay=self.cfg.train.weight_decay,
            pad=self.cfg.train.pad,
            flip=self.cfg.train.flip,
        )
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
    def run_sequence(self, method_name: str, seed: int, resume: bool = True) -> list[Path]:
        """Train one method through every task for one seed; returns the task checkpoints."""
        cfg, plan = self.cfg, self.plan
        env = self.env()
        method = build_method(method_name, cfg.method_options.get(method_name))
        head = method.head
        out = seed_dir(self.run_dir, method_name, seed)
        out.mkdir(parents=True, exist_ok=True)
        segments = plan.segments(cfg)
        per_class = cfg.local.memory_per_class
        memory = RehearsalMemory(per_class, seed=seed) if per_class > 0 else None
        prev: CompatModel | None = None
        start = 0
        paths = [out / f"task_{t}.pt" for t in range(plan.num_tasks)]
        if resume:
            done = [
                t
                for t in range(plan.num_tasks)
                if paths[t].is_file() and (out / f"memory_{t}.pt").is_file()
            ]
            while done and done[-1] != len(done) - 1:  # only a contiguous prefix counts
                done.pop()
            if done:
                last = done[-1]
                prev, _ = load_checkpoint(paths[last], map_location=env.device)
                prev.to(env.device).eval()
                if memory is not None:
                    memory.load_state_dict(
                        torch.load(out / f"memory_{last}.pt", weights_only=True, map_location="cpu")
                    )
                start = last + 1
                if start < plan.num_tasks:
                    self.log.info(f"{method_name} seed {seed}: resuming after task {last}")
        for t in range(start, plan.num_tasks):
            task = plan.scenario[t]
            torch.manual_seed(task_seed(seed, t, 1))
            replaced = t == 0 or segments[t] != segments[t - 1]
            provider_model = None
            if replaced:
                ppath = self.provider_path(segments[t], head)
                model, _ = load_checkpoint(ppath, map_location="cpu")
                provider_model = model
                if head == "learnable" and cfg.model.learnable_replacement == "fresh":
                    model = model.with_fresh_head()  # the provider's classifier is dropped
                else:
                    model = copy.deepcopy(model)
            else:
                assert prev is not None
                model = copy.deepcopy(prev)
            seen = [c for i in range(t + 1) for c in plan.scenario[i].classes]
            model.add_classes(seen, "local")
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
            label = (
                f"{method_name} seed {seed} task {t + 1}/{plan.num_tasks}"
                f"{' (replaced)' if replaced and t else ''}"
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
                f"{method_name} seed {seed} task {t}: classes {task.classes}, "
                f"provider {segments[t]}{' (replacement)' if replaced else ''}, "
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
                _atomic_torch_save(
                    memory.state_dict() if memory is not None else {}, out / f"memory_{t}.pt"
                )
            self.dist.barrier()
            prev = model
        return paths


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _eval_normalize(plan: Plan, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    mean = torch.tensor(plan.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(plan.std, device=device).view(1, -1, 1, 1)
    return lambda x: (x.float() / 255.0 - mean) / std


def evaluate_run(runner: Runner, methods: list[str] | None = None) -> dict:
    """Compute every method's matrices and metrics from the run's checkpoints; write JSON."""
    from .evaluate import evaluate_sequence, summarize, task_contract

    cfg, plan, log = runner.cfg, runner.plan, runner.log
    device = runner.device
    norm = _eval_normalize(plan, device)
    query, gallery = plan.query.to(device), plan.gallery.to(device)
    local_test = plan.local_test.to(device) if plan.local_test is not None else None
    seen = [
        [c for i in range(t + 1) for c in plan.scenario[i].classes] for t in range(plan.num_tasks)
    ]
    results: dict = {}
    extractions = 0
    t0 = time.perf_counter()
    for m in methods or cfg.methods:
        runs = []
        for seed in cfg.seeds:
            d = seed_dir(runner.run_dir, m, seed)
            ckpts = [d / f"task_{t}.pt" for t in range(plan.num_tasks)]
            missing = [p.name for p in ckpts if not p.is_file()]
            if missing:
                raise FileNotFoundError(f"{m} seed {seed}: missing checkpoints {missing} in {d}")
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
                task_contract(cfg, m),
            )
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
