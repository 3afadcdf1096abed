"""The run configuration: schema, reading, validation, and the configs shipped with compatkit.

``load_config(path, overrides)`` gives a validated :class:`RunConfig`; ``resolve_config(name)``
turns a CONFIG argument (a path or a shipped name such as ``fashion``) into its file.
"""

from ..errors import ConfigError
from .parse import ConfigFileNotFound, build, coerce, load_config, parse_overrides, read_config_file
from .schema import (
    MAX_CLASSES,
    MAX_EPOCHS,
    MAX_FEAT_DIM,
    DataSource,
    EvalConfig,
    LocalConfig,
    ModelConfig,
    OptimConfig,
    ProviderConfig,
    RunConfig,
    max_threads,
    to_dict,
)
from .shipped import DEFAULT_CONFIG, config_dir, describe, resolve_config, shipped_configs
from .validate import validate

__all__ = [
    "DEFAULT_CONFIG",
    "MAX_CLASSES",
    "MAX_EPOCHS",
    "MAX_FEAT_DIM",
    "ConfigError",
    "ConfigFileNotFound",
    "DataSource",
    "EvalConfig",
    "LocalConfig",
    "ModelConfig",
    "OptimConfig",
    "ProviderConfig",
    "RunConfig",
    "build",
    "coerce",
    "config_dir",
    "describe",
    "load_config",
    "max_threads",
    "parse_overrides",
    "read_config_file",
    "resolve_config",
    "shipped_configs",
    "to_dict",
    "validate",
]
