"""MLflow: one MLflow run per logged run, tagged with its compatkit run (the group).

Where runs go is MLflow's own configuration: ``MLFLOW_TRACKING_URI`` (a server, a database
such as ``sqlite:///mlflow.db``, or a folder ``file:./mlruns``, which MLflow 3 accepts only
with ``MLFLOW_ALLOW_FILE_STORE=true``) and ``MLFLOW_EXPERIMENT_NAME`` (default
``compatkit``). Runs are written through ``MlflowClient`` by id, never through MLflow's
process-wide "active run", so the runs of one compatkit run (and of the jobs of a sweep, in
other processes) never interfere; they are grouped by the tag ``compatkit.group`` and named
``<group>/<name>``. Parameters are the flattened config; the config and the environment are
also artifacts, whole.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError
from .base import RunInfo, Tracker, flatten

__all__ = ["MlflowTracker"]

MAX_PARAM_CHARS = 6000
"""MLflow refuses a parameter value longer than this (characters); the whole config is an
artifact anyway."""
BATCH = 1000
"""Metrics per request: MLflow's limit for one log_batch call."""


def _client():
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient()
        client.search_experiments(max_results=1)  # reach the store now: fail in one line
    except MlflowException as e:
        msg = " ".join(str(e).split())
        raise InputError(
            f"--log mlflow: MLflow cannot open its tracking store ({msg[:300]}); set "
            "MLFLOW_TRACKING_URI to a server or a database (sqlite:///mlflow.db), or allow a "
            "local folder with MLFLOW_ALLOW_FILE_STORE=true"
        ) from None
    return client


def _experiment_id(client, name: str) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # another process (a sweep job) created it meanwhile
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


class MlflowTracker(Tracker):
    def __init__(self, info: RunInfo) -> None:
        from mlflow.entities import Param, RunTag

        self.client = _client()
        exp = _experiment_id(self.client, os.environ.get("MLFLOW_EXPERIMENT_NAME") or "compatkit")
        tags = {
            "compatkit.group": info.group,
            "compatkit.kind": info.kind,
            **{f"compatkit.{k}": str(v) for k, v in info.tags.items()},
        }
        run = self.client.create_run(exp, run_name=f"{info.group}/{info.name}", tags=tags)
        self.run_id = run.info.run_id
        params = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in flatten(dict(info.config)).items()]
        for i in range(0, len(params), 100):  # MLflow: at most 100 parameters per request
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        self.client.log_batch(self.run_id, tags=[RunTag("compatkit.run_dir", str(info.root))])
        self.client.log_dict(self.run_id, dict(info.config), "config.json")
        self.client.log_dict(self.run_id, dict(info.environment), "environment.json")

    def log_scalars(self, values: Mapping[str, float], step: int, axis: str) -> None:
        self.log_steps([(step, values)], axis)

    def log_steps(self, rows: Sequence[tuple[int, Mapping[str, float]]], axis: str) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, int(s)) for s, vals in rows for k, v in vals.items()]
        for i in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + BATCH])

    def log_image(self, tag: str, png: bytes, step: int) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{Path(tag).name}.png"
            path.write_bytes(png)
            parent = str(Path(tag).parent)
            self.client.log_artifact(self.run_id, str(path), None if parent == "." else parent)

    def log_table(self, tag: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        lines = [",".join(map(str, columns))]
        lines += [",".join("" if v is None else str(v) for v in r) for r in rows]
        self.client.log_text(self.run_id, "\n".join(lines) + "\n", f"{tag}.csv")

    def log_summary(self, values: Mapping[str, float]) -> None:
        self.log_steps([(0, {f"result/{k}": v for k, v in values.items()})], "result")

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")
