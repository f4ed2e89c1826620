"""resflow.allocator: with the thresholds fixed, a model-sized allocation reuses heap memory
even in a process started with a malloc tunable in its environment (as Dask's workers are)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.allocations import FRESH_MMAP_FAULTS

PROBE = """
from resflow.allocator import steady_malloc
from tests.allocations import faults_per_alloc
before = faults_per_alloc()
applied = steady_malloc()
print(before, applied, faults_per_alloc())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_steady_malloc_stops_fresh_mmaps_under_a_frozen_threshold() -> None:
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536",  # what Dask's nanny exports
           # NumPy asks for huge pages for large arrays: when the kernel has some free, a
           # fresh 4 MiB mmap takes 2 faults, not 1024, and the probe cannot tell it apart
           "NUMPY_MADVISE_HUGEPAGE": "0"}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                         text=True, check=True, cwd=Path(__file__).parents[1]).stdout.split()
    before, applied, after = float(out[0]), out[1] == "True", float(out[2])
    assert before > FRESH_MMAP_FAULTS  # the frozen 128 KiB threshold: every array mmapped
    assert applied and after < FRESH_MMAP_FAULTS / 10
