"""The task sequence of IAM-CL2R: one method through every task, for one seed.

Task 1 starts from provider 0; at each replacement task the model is replaced by the next
provider (a model "pre-trained elsewhere"); otherwise a task starts from the previous task's
model. Each task trains with the method's loss on the task's classes, half of every batch from
the rehearsal memory after the first task. The old model of a compatibility term follows the
reference rule (at a replacement, the new provider itself; otherwise the previous task's model)
or, with ``old_model: previous``, is always the previous model. Every task ends with a
checkpoint and the memory's state, so an interrupted run resumes after its last completed task
and ends with the same numbers.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..checkpoint import CheckpointError, load_checkpoint, read_contract
from ..data import RehearsalMemory
from ..methods import TaskContext, build_method
from ..model import CompatModel
from .records import check_identity, load_memory, save_memory
from .trainer import fit, save_on_main, task_seed

if TYPE_CHECKING:
    from .experiment import Experiment

__all__ = ["check_task_checkpoint", "completed_tasks", "run_sequence"]


def completed_tasks(
    exp: Experiment, method_name: str, seed: int
) -> tuple[int, CompatModel | None, dict | None]:
    """The finished prefix of a sequence, checked: ``(tasks done, last model, memory state)``.

    A task counts as done when its checkpoint and memory file are both there; only
    a contiguous prefix counts. Every checkpoint of the prefix must be this run's
    file for this method, seed and task, and the last memory file must read back
    intact; anything else is refused naming the file, before any training.
    """
    runs = exp.dirs
    n = exp.plan.num_tasks
    done = 0
    while (
        done < n
        and runs.task(method_name, seed, done).is_file()
        and runs.memory(method_name, seed, done).is_file()
    ):
        done += 1
    for t in range(done):
        check_task_checkpoint(
            exp, read_contract(runs.task(method_name, seed, t)), method_name, seed, t
        )
    if not done:
        return 0, None, None
    last = done - 1
    model, _ = load_checkpoint(runs.task(method_name, seed, last), map_location="cpu")
    state, extra = load_memory(runs.memory(method_name, seed, last))
    check_identity(
        extra,
        runs.memory(method_name, seed, last),
        "memory file",
        method=method_name,
        seed=seed,
        task=last,
        run_id=exp.run_id,
        role="memory",
    )
    return done, model, state


def check_task_checkpoint(
    exp: Experiment, meta: dict, method_name: str, seed: int, task: int
) -> None:
    """Refuse a task checkpoint that is not this run's file for (method, seed, task)."""
    check_identity(
        meta["extra"],
        meta["path"],
        "checkpoint",
        method=method_name,
        seed=seed,
        task=task,
        run_id=exp.run_id,
    )


def run_sequence(exp: Experiment, method_name: str, seed: int, resume: bool = True) -> list[Path]:
    """Train one method through every task for one seed; returns the task checkpoints."""
    cfg, plan, log = exp.cfg, exp.plan, exp.log
    rt = exp.runtime
    method = build_method(method_name, cfg.method_options.get(method_name))
    head = method.head
    runs = exp.dirs
    run_id = exp.ensure_run_id()
    runs.seed(method_name, seed).mkdir(parents=True, exist_ok=True)
    segments = plan.segments(cfg)
    per_class = cfg.local.memory_per_class
    memory = RehearsalMemory(per_class, seed=seed) if per_class > 0 else None
    prev: CompatModel | None = None
    start = 0
    n_tasks = plan.num_tasks
    paths = runs.tasks(method_name, seed, n_tasks)
    # Tracked steps count through the whole sequence: task t starts after the earlier tasks'.
    task_steps = [cfg.train.epochs * n for n in plan.epoch_steps(cfg, method.uses_memory)]
    if resume:
        start, prev, state = completed_tasks(exp, method_name, seed)
        if prev is not None:
            prev.to(rt.device).eval()
        if memory is not None and state is not None:
            try:
                memory.load_state_dict(state)
            except (KeyError, ValueError, TypeError, RuntimeError) as e:
                raise CheckpointError(
                    f"memory file {runs.memory(method_name, seed, start - 1)}: not a memory "
                    f"state ({e})"
                ) from None
        if 0 < start < n_tasks:
            log.info(f"{method_name} seed {seed}: resuming after task {start}/{n_tasks}")
    for t in range(start, plan.num_tasks):
        task = plan.scenario[t]
        torch.manual_seed(task_seed(seed, t, 1))
        replaced = t == 0 or segments[t] != segments[t - 1]
        provider_model = None
        if replaced:
            model = exp.providers.load(segments[t], head)
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
        model.to(rt.device)
        old = None
        if method.needs_old:
            rule = method.old_rule or cfg.old_model
            if replaced and (rule == "reference" or prev is None):
                old = provider_model
            else:
                old = prev
            old = copy.deepcopy(old).to(rt.device).eval()
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
            memory_images=mem.images.to(rt.device) if mem is not None else None,
            memory_labels=mem.labels.to(rt.device) if mem is not None else None,
            device=rt.device,
            normalize=rt.normalize,
        )
        label = f"{method_name} seed {seed} task {t + 1}/{n_tasks}" + (
            " (replacement)" if replaced and t else ""
        )
        with exp.tracking.training(
            f"{method_name}/seed_{seed}",
            "sequence",
            step0=sum(task_steps[:t]),
            method=method_name,
            seed=seed,
        ) as steps:
            res = fit(
                model,
                method,
                ctx,
                task.data.to(rt.device),
                mem.to(rt.device) if mem is not None else None,
                cfg.train,
                rt,
                log,
                label,
                task_seed(seed, t, 2),
            )
            steps.task_done(t + 1, res)
        parts = " ".join(f"{k} {v:.3f}" for k, v in res.parts[-1].items())
        log.info(
            f"{label}: classes {task.classes}, provider {segments[t]}, "
            f"loss {res.losses[0]:.3f} -> {res.losses[-1]:.3f} ({parts}), "
            f"{res.images_per_s:.0f} img/s, {res.seconds:.1f}s"
        )
        save_on_main(
            rt.dist,
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
        if rt.dist.main:
            save_memory(
                runs.memory(method_name, seed, t),
                memory.state_dict() if memory is not None else {},
                {
                    "role": "memory",
                    "method": method_name,
                    "seed": seed,
                    "task": t,
                    "run_id": run_id,
                },
            )
        rt.dist.barrier()
        prev = model
    return paths
