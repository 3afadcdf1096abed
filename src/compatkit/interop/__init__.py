"""Models from other codebases: a reader of ``torch.save`` files that executes nothing, and
the conversion of the authors' released iamcl2r models into compatkit checkpoints."""

from .iamcl2r import Conversion, convert_iamcl2r
from .torchfile import InertObject, read_torch_file

__all__ = ["Conversion", "InertObject", "convert_iamcl2r", "read_torch_file"]
