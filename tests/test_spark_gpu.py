"""Spark GPU scheduling on the local cluster with two declared GPUs (one per executor).

Tasks sleep and record which GPU address they were given and when they held it; overlapping
intervals on one address show how many tasks shared that device at once. On a cluster master
Spark's own addresses are used, never the driver's GPUs that ``local[N]`` tasks are spread over.
"""

from __future__ import annotations

import time

import pytest

from resflow.executor import StageResources, TaskEnv
from tests.intervals import peak_overlap

TASKS = 8


def hold_device(records: list[int], env: TaskEnv) -> list[tuple[str | None, float, float]]:
    start = time.time()
    time.sleep(0.6)
    return [(env.gpu, start, time.time())]


def run_stage(spark_session, gpu: float) -> dict[str | None, list[tuple[float, float]]]:
    from resflow_spark import SparkExecutor

    ex = SparkExecutor(spark=spark_session, progress=False, gpus=["7"])
    assert ex.local_gpus == ()  # local-cluster: the discovery script's GPUs, not the driver's
    parts = ex.from_partitions([[i] for i in range(TASKS)])
    held = ex.collect(ex.map_partitions(parts, hold_device, name="gpucheck",
                                        resources=StageResources(gpu=gpu)))
    by_address: dict[str | None, list[tuple[float, float]]] = {}
    for address, start, end in held:
        by_address.setdefault(address, []).append((start, end))
    return by_address


def test_tasks_receive_the_declared_gpu_addresses(spark_session) -> None:
    from resflow_spark import SparkExecutor

    by_address = run_stage(spark_session, 0.5)
    assert set(by_address) == {"0", "1"}
    assert sum(map(len, by_address.values())) == TASKS
    assert SparkExecutor(spark=spark_session).describe()["gpus"] == 2


@pytest.mark.parametrize("gpu", [1.0, 0.5])
def test_fractional_profile_bounds_tasks_per_gpu(spark_session, gpu: float) -> None:
    """A profile asking ``gpu`` of a device lets at most ``1/gpu`` tasks hold it at once,
    and the two-core executors do run that many together (so the bound is what limits)."""
    by_address = run_stage(spark_session, gpu)
    peaks = {address: peak_overlap(spans) for address, spans in by_address.items()}
    assert max(peaks.values()) == round(1 / gpu), peaks
