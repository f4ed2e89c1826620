"""Training and scoring runs that repeat exactly: on the CPU, one intra-op thread, and
deterministic kernels, so the same archive, labels and seed give the same gallery files.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

CPU = torch.device("cpu")


@contextmanager
def deterministic() -> Iterator[None]:
    """One intra-op thread and deterministic kernels for the run, restored afterwards."""
    threads = torch.get_num_threads()
    was = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(was)
