"""The errors that are the user's, as one family.

Every failure caused by what a user gave compatkit (a configuration, a data
file, a checkpoint, a matrix, a command-line value) is raised as a subclass of
:class:`CompatkitError`. The command line prints such an error as one line
naming the thing at fault and exits with status 2; any other exception is a
bug in compatkit and keeps its traceback (shown with ``--debug``). The rule is
structural: a new check raises one of these classes and the CLI needs no new
``except`` clause.

Each class also derives from ``ValueError``: what the user gave has a bad value, and a
library caller may catch it as such.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "CompatkitError",
    "ConfigError",
    "DataError",
    "IncompatibleModels",
    "InputError",
]


class CompatkitError(ValueError):
    """Base class: the user's input is at fault; the message is one line that names it."""


class ConfigError(CompatkitError):
    """A configuration value is unknown, of the wrong type, out of range or impossible."""


class DataError(CompatkitError):
    """A dataset is missing, unreadable, malformed or unsafe to read."""


class CheckpointError(CompatkitError):
    """A checkpoint file that cannot be loaded as asked; the message names the file."""


class IncompatibleModels(CompatkitError):
    """Two models whose features cannot be compared; the message says why."""


class InputError(CompatkitError):
    """Any other malformed input: a matrix file, a JSON document, a command-line value."""
