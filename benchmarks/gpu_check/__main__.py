"""``python -m benchmarks.gpu_check``: the command line of :mod:`benchmarks.gpu_check.cli`."""

import sys

from benchmarks.gpu_check.cli import main

sys.exit(main())
