"""``python -m compatkit`` (and ``torchrun -m compatkit``) runs the command line."""

import sys

from .cli import main

sys.exit(main())
