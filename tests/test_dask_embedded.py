"""The embedded Dask cluster: workers without the nanny's malloc tunable, driver untouched."""

from __future__ import annotations

import os

from resflow.config import DaskConfig


def _trim_setting() -> str | None:
    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


def test_embedded_workers_start_without_the_malloc_tunable() -> None:
    """Setting any glibc malloc tunable makes every activation tensor a fresh mmap (5x
    slower model passes, benchmarks/README.md); the driver's environment, which the nanny
    edits while spawning, must come back unchanged (a Spark session started later would
    inherit the edits)."""
    from resflow_dask import DaskExecutor

    before = dict(os.environ)
    with DaskExecutor(DaskConfig(workers=1, dashboard_address="127.0.0.1:0"), gpus=[],
                      progress=False) as executor:
        assert set(executor.client.run(_trim_setting).values()) == {None}
        assert dict(os.environ) == before
