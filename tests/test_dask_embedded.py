"""The embedded Dask cluster: workers run the models on reused heap memory despite the
nanny's malloc tunable, and the driver's environment is left as it was."""

from __future__ import annotations

import os
from functools import partial

from resflow.config import DaskConfig
from resflow.graph import preload_models
from tests.allocations import FRESH_MMAP_FAULTS, faults_per_alloc


def _trim_setting() -> str | None:
    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


def test_workers_reuse_memory_and_the_driver_environment_is_restored() -> None:
    """Dask's nanny exports ``MALLOC_TRIM_THRESHOLD_``, which freezes glibc's mmap threshold
    at 128 KiB (5x slower model passes, benchmarks/README.md): after the model preload a
    worker's 4 MiB arrays must come from the heap. The driver's environment, which the nanny
    edits while spawning, must come back unchanged (a Spark session started later would
    inherit the edits)."""
    from resflow_dask import DaskExecutor

    before = dict(os.environ)
    with DaskExecutor(DaskConfig(workers=1, dashboard_address="127.0.0.1:0"), gpus=[],
                      progress=False) as executor:
        assert dict(os.environ) == before
        assert set(executor.client.run(_trim_setting).values()) == {"65536"}
        executor.preload(partial(preload_models, None), name="models-allocator-test")
        faults = executor.client.run(faults_per_alloc).values()
        assert all(f < FRESH_MMAP_FAULTS / 10 for f in faults), faults
