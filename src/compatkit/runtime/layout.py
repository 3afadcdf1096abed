"""The one place that knows a run directory's paths.

A run directory (``compatkit run --out DIR``) holds::

    config.yaml        the resolved configuration (never rewritten)
    run.json           the run's identity (a random id every file of the run records)
    environment.json   where it ran: versions, device, precision, CPU, threads
    log.txt            what happened, with times
    metrics.json       matrices and metrics of every method and seed
    report.md, plots/  the report and its figures
    analysis.json      ``compatkit analyze``'s result, when it was run
    <method>/seed_<s>/task_<t>.pt     the model after task t (t from 0 in file names)
    <method>/seed_<s>/memory_<t>.pt   the rehearsal memory after task t
    <method>/seed_<s>/features/       cached features, keyed by each checkpoint's SHA-256
    <method>/seed_<s>/done.json       a sweep's mark: this seed is trained and evaluated
    <method>/seed_<s>/job.json        a sweep's record of the process and device of that seed

Providers are not in it: every run shares them through one cache
(:func:`compatkit.protocol.records.providers_cache`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RunDir"]


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory (nothing is created or read here)."""

    root: Path

    def __init__(self, root: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def record(self) -> Path:
        return self.root / "run.json"

    @property
    def environment(self) -> Path:
        return self.root / "environment.json"

    @property
    def log(self) -> Path:
        return self.root / "log.txt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def analysis(self) -> Path:
        return self.root / "analysis.json"

    def seed(self, method: str, seed: int) -> Path:
        """The folder of one method's sequence for one seed."""
        return self.root / method / f"seed_{seed}"

    def task(self, method: str, seed: int, task: int) -> Path:
        """The checkpoint of the model after ``task`` (zero-based)."""
        return self.seed(method, seed) / f"task_{task}.pt"

    def tasks(self, method: str, seed: int, n: int) -> list[Path]:
        return [self.task(method, seed, t) for t in range(n)]

    def memory(self, method: str, seed: int, task: int) -> Path:
        """The rehearsal memory after ``task`` (zero-based)."""
        return self.seed(method, seed) / f"memory_{task}.pt"

    def features(self, method: str, seed: int) -> Path:
        return self.seed(method, seed) / "features"

    @staticmethod
    def features_of(task_checkpoint: Path) -> Path:
        """The feature cache folder beside a task checkpoint."""
        return Path(task_checkpoint).parent / "features"

    def done(self, method: str, seed: int) -> Path:
        return self.seed(method, seed) / "done.json"

    def job(self, method: str, seed: int) -> Path:
        """Where a sweep records who runs (or ran) this seed: host, process, device."""
        return self.seed(method, seed) / "job.json"

    def job_lock(self, method: str, seed: int) -> Path:
        """Held by the process training this seed for a sweep (one process per seed)."""
        return self.seed(method, seed) / ".job.lock"

    def holds_run(self) -> bool:
        """Whether the folder already holds a run (its config, or any task checkpoint)."""
        return self.config.is_file() or any(self.root.glob("*/seed_*/task_*.pt"))
