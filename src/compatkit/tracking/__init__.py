"""Experiment tracking: a run's training and results in TensorBoard, Weights & Biases or MLflow.

``compatkit run/sweep/pretrain/train --log tensorboard,wandb,mlflow`` (any of them, several at
once) logs, per (method, seed) of a run and per provider trained: every step's loss and its
parts, the learning rate and images/s; per task the local-class accuracy, AA_t and the
self-test; the compatibility matrix as a figure and a table; AC, AM, BC, FC; the resolved
config and the environment. The logged runs of one compatkit run share its name as their
group.

The pipeline feeds a :class:`Tracking` session from three places only: training phases
(:meth:`Tracking.training`, which observes every training loop inside it), and the
evaluated results (:func:`log_results`). Backends are optional extras, each in its own
module; a missing one is refused in one line naming its pip command.
"""

from __future__ import annotations

from .base import BACKENDS, RunInfo, Tracker, check_backends, flatten
from .results import SUMMARY_KEYS, log_results, sequence_name
from .session import ENV_VAR, FLUSH_EVERY, StepRecorder, Tracking, backends_from_env

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "FLUSH_EVERY",
    "SUMMARY_KEYS",
    "RunInfo",
    "StepRecorder",
    "Tracker",
    "Tracking",
    "backends_from_env",
    "check_backends",
    "flatten",
    "log_results",
    "sequence_name",
]
