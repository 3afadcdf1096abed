"""Checkpoints that carry the model's compatibility contract, written atomically, read safely.

``save_checkpoint`` / ``load_checkpoint`` / ``read_contract`` for compatkit's own files;
``safe_torch_load`` for any torch file (``weights_only=True``, pickles that import code
refused by name); ``check_compatible`` to refuse comparing two models that cannot be compared.
"""

from ..errors import CheckpointError, IncompatibleModels
from ..runtime.safeload import foreign_imports, safe_torch_load
from .compat import ModelLike, check_compatible
from .format import (
    FORMAT,
    FORMAT_VERSION,
    atomic_torch_save,
    content_digest,
    file_sha256,
    load_checkpoint,
    read_contract,
    save_checkpoint,
    state_dict_mismatch,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointError",
    "IncompatibleModels",
    "ModelLike",
    "atomic_torch_save",
    "check_compatible",
    "content_digest",
    "file_sha256",
    "foreign_imports",
    "load_checkpoint",
    "read_contract",
    "safe_torch_load",
    "save_checkpoint",
    "state_dict_mismatch",
]
