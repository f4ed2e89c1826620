"""A probe of glibc's mmap threshold from the outside: page faults per 4 MiB allocation."""

from __future__ import annotations

import resource

import numpy as np

#: Faults per 4 MiB allocation above which it was served by a fresh mmap (measured: about
#: 510 on Linux x86-64, against under 1 when the heap reuses memory).
FRESH_MMAP_FAULTS = 256


def faults_per_alloc(rounds: int = 20) -> float:
    """Minor page faults per allocate-touch-free of a 4 MiB array, after one warm-up round:
    hundreds when each allocation is a fresh mmap, near 0 when the heap reuses memory."""
    np.ones(1 << 20, dtype=np.float32).sum()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        np.ones(1 << 20, dtype=np.float32).sum()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / rounds
