"""Data: datasets as uint8 tensors, the class-incremental scenario, rehearsal memory,
the half-new/half-memory batch sampler and batched augmentation.

Data flows one way (see the design notes): ``load_dataset`` -> ``ClassIncremental``
(tasks of tensors) -> per task ``half_and_half_batches`` over the task data and the
``RehearsalMemory`` -> ``augment`` -> ``to_float`` -> the model; after the task,
``RehearsalMemory.update``.
"""

from .augment import augment, crop_flip, sample_augment_params, to_float
from .cifar import CifarFormatError, RestrictedUnpickler, UnsafePickleError, restricted_loads
from .datasets import (
    DATASET_STATS,
    DATASETS,
    channel_stats,
    dataset_root,
    load_dataset,
    stats_for,
)
from .download import ChecksumError, download_file
from .idx import IdxFormatError, read_idx, write_idx
from .imageset import ImageSet
from .memory import RehearsalMemory
from .sampler import half_and_half_batches
from .scenario import ClassIncremental, Task

__all__ = [
    "DATASETS",
    "DATASET_STATS",
    "ChecksumError",
    "CifarFormatError",
    "ClassIncremental",
    "IdxFormatError",
    "ImageSet",
    "RehearsalMemory",
    "RestrictedUnpickler",
    "Task",
    "UnsafePickleError",
    "augment",
    "channel_stats",
    "crop_flip",
    "dataset_root",
    "download_file",
    "half_and_half_batches",
    "load_dataset",
    "read_idx",
    "restricted_loads",
    "sample_augment_params",
    "stats_for",
    "to_float",
    "write_idx",
]
