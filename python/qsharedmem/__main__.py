"""``python -m qsharedmem``: the ``qsharedmem`` command line (see :mod:`qsharedmem.cli`)."""

import sys

from .cli import main

sys.exit(main())
