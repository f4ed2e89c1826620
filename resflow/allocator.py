"""Fixed glibc malloc thresholds, so a model pass reuses its memory instead of faulting it in.

glibc serves an allocation above its *mmap threshold* with a fresh ``mmap``: its pages fault
in on first touch and go back to the kernel on ``free``. One pass of the segmenter allocates
activations of a few MiB per layer, so above the threshold every pass faults all of them in
again, and glibc's own threshold depends on what the process freed before and on its
environment. ``benchmarks/README.md`` ("Malloc thresholds") has the figures, measured with
``benchmarks/malloc_trim.py``.

:func:`steady_malloc` fixes both thresholds once per process, from the stage functions
themselves, so every engine's workers and the benchmark's compute limit run the models the
same way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

#: Allocations above this size get their own mmap (glibc's ceiling for its moving threshold).
MMAP_THRESHOLD = 32 << 20
#: Free memory at the top of the heap beyond this goes back to the kernel (2x the above,
#: glibc's own ratio).
TRIM_THRESHOLD = 64 << 20
#: ``mallopt`` parameters, from glibc's ``malloc.h``.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@functools.cache
def steady_malloc() -> bool:
    """Fix glibc's mmap and trim thresholds in this process (once); ``False`` where the C
    library is not glibc (macOS, musl), which then keeps its own behaviour.

    By default glibc's mmap threshold starts at 128 KiB and rises to the size of the largest
    mmapped block freed so far (up to 32 MiB), and any malloc tunable in the environment
    freezes it at 128 KiB (Dask's nanny exports ``MALLOC_TRIM_THRESHOLD_`` to every worker).
    Both thresholds are set to where glibc's own rule ends up at its ceiling, so a pass's
    speed no longer depends on either; the cost is at most 64 MiB of freed heap kept per
    process.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
