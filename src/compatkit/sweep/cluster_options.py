"""The resources of a cluster job: from ``compatkit sweep`` flags or a ``submitit:`` block.

A launcher config file (``--launcher-config cluster.yaml``) holds the same settings as the
flags, so a lab's cluster defaults live in one file and a flag overrides one of them::

    submitit:
      cluster: slurm          # or local: submitit's local executor (processes of this machine)
      partition: gpu
      time_min: 240           # per job, minutes; a job that reaches it is requeued and resumes
      gpus_per_job: 1
      cpus_per_job: 8
      mem_gb: 32
      array_parallelism: 16   # array tasks running at once
      account: my-lab
      qos: normal
      constraint: a100
      setup: ["module load cuda/12.4", "source ~/venvs/compat/bin/activate"]
      slurm: {exclude: "node[01-02]"}   # any other sbatch option

Every value that reaches the generated sbatch file is checked here: a partition, account or
option that could carry a newline or a shell character is refused in one line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..errors import InputError

__all__ = ["PIP", "ClusterOptions", "cluster_options", "require_submitit"]

PIP = "pip install 'compatkit[cluster]'  (or: pip install submitit)"

_WORD = re.compile(r"[A-Za-z0-9_.,:+%=\[\]@/-]{1,200}")
"""A value written into an sbatch option: no space, quote, newline or shell character."""
_KEY = re.compile(r"[a-z][a-z0-9_-]{0,63}")
CLUSTERS = ("slurm", "local")
LIMITS = {  # (lowest, highest) of each number
    "time_min": (1, 525_600),  # minutes: up to a year
    "gpus_per_job": (0, 64),
    "cpus_per_job": (1, 1024),
    "mem_gb": (0.001, 65_536.0),
    "array_parallelism": (1, 1_000_000),
}


def require_submitit() -> Any:
    """The ``submitit`` module, or one line naming the pip command that installs it."""
    try:
        import submitit
    except ImportError:
        raise InputError(f"--launcher submitit needs the submitit package: {PIP}") from None
    return submitit


@dataclass
class ClusterOptions:
    """What each job asks the scheduler for."""

    cluster: str = "slurm"
    partition: str | None = None
    time_min: int = 240
    gpus_per_job: int = 0
    cpus_per_job: int | None = None
    mem_gb: float | None = None
    array_parallelism: int | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: list[str] = field(default_factory=list)
    slurm: dict[str, str] = field(default_factory=dict)

    def executor_parameters(self) -> dict[str, Any]:
        """``AutoExecutor.update_parameters`` keywords. On ``local`` only the time limit
        applies: devices are the sweep's own (``--devices``), not the executor's."""
        p: dict[str, Any] = {"timeout_min": self.time_min, "name": "compatkit-sweep"}
        if self.cluster == "local":
            return p
        if self.gpus_per_job:
            p["gpus_per_node"] = self.gpus_per_job
        if self.cpus_per_job:
            p["cpus_per_task"] = self.cpus_per_job
        if self.mem_gb:
            p["mem_gb"] = self.mem_gb
        for key in ("partition", "array_parallelism", "account", "qos", "constraint", "setup"):
            value = getattr(self, key)
            if value:
                p[f"slurm_{key}"] = value
        if self.slurm:
            p["slurm_additional_parameters"] = dict(self.slurm)
        return p

    def describe(self) -> str:
        per_job = [f"{self.gpus_per_job} GPU(s)" if self.gpus_per_job else "no GPU"]
        if self.cpus_per_job:
            per_job.append(f"{self.cpus_per_job} CPUs")
        if self.mem_gb:
            per_job.append(f"{self.mem_gb:g} GB")
        parts = [f"partition {self.partition or '(default)'}", f"{self.time_min} min"]
        parts.append(" + ".join(per_job) + " per job")
        if self.array_parallelism:
            parts.append(f"at most {self.array_parallelism} at once")
        return ", ".join(parts)


def _check(key: str, value: Any, label: str) -> Any:
    """One setting, checked; ``label`` names it in the error (``--mem-gb``, or the file's key)."""
    if value is None:
        return None
    if key == "cluster":
        if value not in CLUSTERS:
            raise InputError(f"{label} must be one of {', '.join(CLUSTERS)}, got {value!r}")
        return value
    if key in LIMITS:
        lo, hi = LIMITS[key]
        is_int = isinstance(value, int) and not isinstance(value, bool)
        ok = is_int or (key == "mem_gb" and isinstance(value, float))
        if not ok or not lo <= value <= hi:
            kind = "a number" if key == "mem_gb" else "an integer"
            raise InputError(f"{label} must be {kind} from {lo:g} to {hi:g}, got {value!r}")
        return value
    if key == "setup":
        if not isinstance(value, list) or not all(
            isinstance(s, str) and "\n" not in s and s.strip() for s in value
        ):
            raise InputError(f"{label} must be a list of one-line shell commands")
        return list(value)
    if key == "slurm":
        if not isinstance(value, dict):
            raise InputError(f"{label} must map sbatch options to values")
        out = {}
        for k, v in value.items():
            text = str(v) if isinstance(v, (int, float, str)) and not isinstance(v, bool) else ""
            if not (isinstance(k, str) and _KEY.fullmatch(k)) or not _WORD.fullmatch(text):
                raise InputError(f"{label}.{k}: not an sbatch option and value ({v!r})")
            out[k] = text
        return out
    if not isinstance(value, str) or not _WORD.fullmatch(value):
        raise InputError(
            f"{label} {value!r}: not a scheduler name (letters, digits and _.,:+%=@/- only)"
        )
    return value


def _read_block(path: str) -> dict[str, Any]:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(f"--launcher-config {p}: cannot be read ({e.strerror or e})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise InputError(f"--launcher-config {p}: not YAML ({' '.join(str(e).split())})") from None
    if (
        not isinstance(data, dict)
        or set(data) != {"submitit"}
        or not isinstance(data["submitit"], dict)
    ):
        raise InputError(f"--launcher-config {p}: expected one mapping, 'submitit:'")
    return data["submitit"]


def cluster_options(config_file: str | None, flags: dict[str, Any]) -> ClusterOptions:
    """The options of a ``--launcher submitit`` sweep: defaults, then the file's block, then
    the flags that were given (``None``: not given)."""
    names = {f.name for f in fields(ClusterOptions)}
    values: dict[str, Any] = {}
    if config_file:
        block = _read_block(config_file)
        unknown = sorted(set(map(str, block)) - names)
        if unknown:
            raise InputError(
                f"--launcher-config {config_file}: unknown key submitit.{unknown[0]}; valid keys: "
                f"{', '.join(sorted(names))}"
            )
        where = f"--launcher-config {config_file}: submitit."
        values.update({k: _check(k, v, where + k) for k, v in block.items() if v is not None})
    for k, v in flags.items():
        if v is not None:
            values[k] = _check(k, v, "--" + k.replace("_", "-"))
    return ClusterOptions(**values)
