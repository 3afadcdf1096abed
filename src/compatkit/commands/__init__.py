"""Sub-commands of the ``compatkit`` command line (see ``compatkit.cli``)."""

from __future__ import annotations

import argparse


def add_set_argument(p: argparse.ArgumentParser, what: str = "") -> None:
    """``--set KEY=VALUE [KEY=VALUE ...]`` (repeatable): config overrides, each the YAML value
    of one key."""
    p.add_argument(
        "--set",
        dest="overrides",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help=f"override config values{what} (YAML), e.g. --set train.epochs=5 'seeds=[1,2]'; "
        "several pairs may follow one --set; put CONFIG before --set",
    )


def add_log_argument(p: argparse.ArgumentParser) -> None:
    """``--log BACKEND [BACKEND ...]`` (also comma-separated, repeatable): experiment tracking
    (:mod:`compatkit.tracking`)."""
    p.add_argument(
        "--log",
        action="extend",
        nargs="+",
        default=[],
        metavar="BACKEND",
        help="track training and results in tensorboard, wandb and/or mlflow, several at once "
        "(--log tensorboard wandb); TensorBoard writes under the run's folder/tensorboard, "
        "W&B and MLflow follow their own settings (WANDB_MODE=offline, MLFLOW_TRACKING_URI)",
    )
