"""Data: datasets as uint8 tensors, the class-incremental scenario, rehearsal memory,
the half-new/half-memory batch sampler and batched augmentation.

Data flows one way (docs/architecture.md): ``load_dataset`` -> ``ClassIncremental``
(tasks of tensors) -> per task ``epoch_batches`` over the task data and the
``RehearsalMemory`` -> ``augment`` -> ``Normalize`` -> the model; after the task,
``RehearsalMemory.update``.
"""

from .augment import Normalize, augment, crop_flip, sample_augment_params, to_float
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
from .sampler import (
    SAMPLERS,
    balanced_batches,
    epoch_batches,
    half_and_half_batches,
    steps_per_epoch,
)
from .scenario import ClassIncremental, Task

__all__ = [
    "DATASETS",
    "DATASET_STATS",
    "SAMPLERS",
    "ChecksumError",
    "CifarFormatError",
    "ClassIncremental",
    "IdxFormatError",
    "ImageSet",
    "Normalize",
    "RehearsalMemory",
    "RestrictedUnpickler",
    "Task",
    "UnsafePickleError",
    "augment",
    "balanced_batches",
    "channel_stats",
    "crop_flip",
    "dataset_root",
    "download_file",
    "epoch_batches",
    "half_and_half_batches",
    "load_dataset",
    "read_idx",
    "restricted_loads",
    "sample_augment_params",
    "stats_for",
    "steps_per_epoch",
    "to_float",
    "write_idx",
]
