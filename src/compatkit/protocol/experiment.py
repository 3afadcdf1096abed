"""One experiment, end to end: the object every command shares and the one pipeline.

:class:`Experiment` is a configuration bound to a run directory: it resolves where and how
the computation runs (device, precision, processes), loads and partitions the data once
(:mod:`~compatkit.protocol.plan`), and gives the steps their shared context: the providers
(:mod:`~compatkit.protocol.providers`), the task sequence
(:mod:`~compatkit.protocol.sequence`), the evaluation (:mod:`~compatkit.protocol.evaluate`)
and the run's records (:mod:`~compatkit.protocol.records`).

:func:`run_experiment` is the pipeline ``providers -> sequences -> evaluation -> metrics.json
-> report``: ``compatkit run``, ``compatkit eval`` and each job of ``compatkit sweep`` call it,
choosing which steps run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..backbones import backbone_out_dim
from ..config import RunConfig
from ..data import Normalize
from ..methods import load_plugins
from ..model import CompatModel, ModelSpec
from ..report import write_report  # the report renders the results: it comes last
from ..runtime.device import Runtime, resolve_device, resolve_precision
from ..runtime.distributed import Dist
from ..runtime.distributed import init as init_distributed
from ..runtime.environment import describe_environment
from ..runtime.files import atomic_write_json
from ..runtime.layout import RunDir
from ..runtime.log import RunLog
from ..tracking import Tracking, backends_from_env, check_backends, log_results
from .evaluate import evaluate_experiment
from .plan import Plan, make_plan
from .providers import Providers
from .records import ensure_run_record, read_run_id, write_run_records
from .sequence import check_task_checkpoint, completed_tasks, run_sequence

__all__ = ["Experiment", "run_experiment", "write_metrics"]


class Experiment:
    """A configuration bound to a run directory, with everything its steps share."""

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: str | os.PathLike[str],
        log: RunLog | None = None,
        tracking: Tracking | None = None,
    ):
        self.cfg = cfg
        self.tracking = tracking or Tracking.off()
        """Where training steps and results are tracked (nothing by default)."""
        self.dirs = RunDir(run_dir)
        self.dist: Dist = init_distributed(cfg.device)
        if log is None:
            log = RunLog(self.dirs.log if self.dist.main else None, quiet=not self.dist.main)
        self.log = log
        load_plugins(cfg.plugins)
        self.device = resolve_device(cfg.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.precision = resolve_precision(cfg.precision, self.device)
        if cfg.num_workers_threads:
            torch.set_num_threads(cfg.num_workers_threads)
        self.providers = Providers(self)
        self._plan: Plan | None = None
        self._run_id: str | None = None

    @property
    def run_dir(self) -> Path:
        return self.dirs.root

    @property
    def plan(self) -> Plan:
        """The data of the scenario, loaded and checked on first use."""
        if self._plan is None:
            self._plan = make_plan(self.cfg)
        return self._plan

    @property
    def runtime(self) -> Runtime:
        """How training runs: the device, precision, the data's scaling (channels-last on
        CUDA when configured) and the process group."""
        cl = self.cfg.channels_last and self.device.type == "cuda"
        norm = Normalize(self.plan.mean, self.plan.std, cl)
        return Runtime(self.device, self.precision, norm, self.dist)

    @property
    def eval_runtime(self) -> Runtime:
        """How evaluation runs: as training, in the default memory format."""
        norm = Normalize(self.plan.mean, self.plan.std)
        return Runtime(self.device, self.precision, norm, self.dist)

    def spec(self, head: str, backbone: str | None = None) -> ModelSpec:
        """The model of this configuration with ``head`` (and a provider's own backbone)."""
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

    # ------------------------------------------------------------------ records
    def write_records(self) -> None:
        """Create the run's records (config.yaml, run.json, environment.json), or check them."""
        self._run_id = write_run_records(self.dirs, self.cfg, self.device, self.precision)

    @property
    def run_id(self) -> str | None:
        """The run's identity (run.json); None while the folder has no run record."""
        if self._run_id is None:
            self._run_id = read_run_id(self.dirs.root)
        return self._run_id

    def ensure_run_id(self) -> str:
        """Create run.json if the run has none (rank 0), so every file it writes says whose it
        is; every rank must call it at the same point (it waits for rank 0)."""
        if self.dist.main and read_run_id(self.dirs.root) is None:
            ensure_run_record(self.dirs.root)
        self.dist.barrier()
        self._run_id = read_run_id(self.dirs.root)
        assert self._run_id is not None
        return self._run_id

    # ------------------------------------------------------------------ steps
    def completed_tasks(self, method: str, seed: int) -> tuple[int, CompatModel | None, Any]:
        return completed_tasks(self, method, seed)

    def check_task_checkpoint(self, meta: dict, method: str, seed: int, task: int) -> None:
        check_task_checkpoint(self, meta, method, seed, task)

    def run_sequence(self, method: str, seed: int, resume: bool = True) -> list[Path]:
        return run_sequence(self, method, seed, resume)

    def evaluate(self, methods: list[str] | None = None) -> dict:
        return evaluate_experiment(self, methods)

    def start_tracking(
        self, backends: Sequence[str], group: str | None = None, root: Path | None = None
    ) -> None:
        """Track this experiment in ``backends`` (main process only), local files under
        ``root`` (default: the run directory): every logged run gets the resolved config and
        the environment, measured when the first one opens."""
        if not backends or not self.dist.main:
            return
        from ..config import to_dict

        self.tracking = Tracking(
            backends,
            root or self.run_dir,
            group or self.run_dir.resolve().name,
            to_dict(self.cfg),
            lambda: describe_environment(self.device, self.precision),
        )


def write_metrics(run_dir: str | os.PathLike[str], results: dict) -> Path:
    """``metrics.json`` of a run, atomically."""
    return atomic_write_json(RunDir(run_dir).metrics, results)


def run_experiment(
    cfg: RunConfig,
    run_dir: str | os.PathLike[str],
    *,
    log: RunLog | None = None,
    methods: list[str] | None = None,
    train: bool = True,
    resume: bool = False,
    records: bool | None = None,
    write: bool = True,
    meta: dict[str, Any] | None = None,
    track: Sequence[str] | None = None,
) -> dict:
    """Run the pipeline on ``run_dir``; return the results (``metrics.json``'s content).

    Everything is checked before anything is written: the config, the data plan, every
    provider file that would be reused and, with ``resume``, the run's finished tasks. Then,
    with ``records`` (default: ``train``), the run's records are created (or checked, when
    they exist), and

    - ``train``: the providers are trained or reused, and every (method, seed) sequence is
      trained, continuing after its last finished task;
    - the sequences of ``methods`` (default: all of the config) are evaluated;
    - ``write``: ``metrics.json`` (with ``meta`` added to its ``_meta``) and the report are
      written, by the main process only.

    With ``train``, the training and the results are tracked in the backends ``track``
    names (default: ``$COMPATKIT_LOG``, how the jobs of a sweep inherit ``--log``), one
    logged run per (method, seed) and per provider trained, grouped by the run.

    A failure after the run started is recorded at the end of its ``log.txt``. A ``log``
    given by the caller is attached to the run's ``log.txt`` when it has no file yet, and
    left open (the caller may log more); a log made here is closed.
    """

    t0 = time.perf_counter()
    owns_log = log is None
    if log is None:  # nothing is written before every check passed: the file comes later
        log = RunLog(None, quiet=int(os.environ.get("RANK", "0")) != 0)
    records = train if records is None else records
    backends = (
        (check_backends(track) if track is not None else backends_from_env()) if train else []
    )
    exp = Experiment(cfg, run_dir, log)
    log = exp.log
    try:
        plan = exp.plan  # loads and checks the data
        exp.providers.check()
        if resume:
            for seed in cfg.seeds:
                for m in methods or cfg.methods:
                    exp.completed_tasks(m, seed)
        if exp.dist.main and records:
            exp.write_records()  # creates the run, or checks a resumed one's records
        if exp.dist.main and log.path is None and (records or exp.dirs.config.is_file()):
            log.attach(exp.dirs.log)
        exp.dist.barrier()
    except BaseException:
        if owns_log:
            log.close()
        raise
    failed = True
    try:
        exp.start_tracking(backends)
        if train:
            log.info(
                f"{'resume' if resume else 'run'} {exp.run_dir}: {plan.num_tasks} tasks "
                f"{[t.classes for t in plan.scenario]}, methods {methods or cfg.methods}, "
                f"seeds {cfg.seeds}, device {exp.device} ({exp.precision.name}), providers in "
                f"{exp.providers.folder}"
            )
            exp.providers.ensure()
            for seed in cfg.seeds:
                for m in methods or cfg.methods:
                    exp.run_sequence(m, seed, resume=True)
        results = exp.evaluate(methods)
        results["_meta"]["gallery_classes"] = len(set(plan.gallery.labels.tolist()))
        log_results(exp.tracking, results)
        if train:
            results["_meta"]["wall_time_s"] = round(time.perf_counter() - t0, 1)
            results["_meta"]["processes"] = exp.dist.world
        results["_meta"].update(meta or {})
        if write and exp.dist.main:
            write_metrics(exp.run_dir, results)
            write_report(exp.run_dir)
        failed = False
    except KeyboardInterrupt:
        if train:
            log.info(f"interrupted; continue with: compatkit run --out {exp.run_dir} --resume")
        raise
    except BaseException as e:
        log.info(f"run failed: {type(e).__name__}: {' '.join(str(e).split())}")
        raise
    finally:
        exp.tracking.close(failed)
        if owns_log:
            log.close()
    return results
