"""Spark GPU scheduling on the local cluster with two declared GPUs (one per executor).

Each task records the GPU address it was given and meets the other tasks on that address
(:mod:`tests.overlap`): tasks that met were inside at once, so the largest group that all
met is how many shared the device. On a cluster master Spark's own addresses are used, never
the driver's GPUs that ``local[N]`` tasks are spread over.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest

from resflow.executor import StageResources, TaskEnv
from tests.overlap import meet, meetings, on_side, peak_together

TASKS = 8
pytestmark = pytest.mark.spark


def hold_device(room: str, patience: float, records: list[int], env: TaskEnv
                ) -> list[tuple[str | None, int]]:
    """Hold the device until one other task on it is met (or ``patience`` runs out, or
    every task has come)."""
    meet(room, f"task{records[0]}", want=1, patience=patience, side=str(env.gpu),
         total=TASKS)
    return [(env.gpu, records[0])]


def run_stage(spark_session, gpu: float, room: Path, patience: float
              ) -> dict[str | None, dict[str, set[str]]]:
    """The stage's tasks by GPU address: who met whom on it."""
    from resflow_spark import SparkExecutor

    ex = SparkExecutor(spark=spark_session, progress=False, gpus=["7"])
    assert ex.local_gpus == ()  # local-cluster: the discovery script's GPUs, not the driver's
    parts = ex.from_partitions([[i] for i in range(TASKS)])
    held = ex.collect(ex.map_partitions(parts, partial(hold_device, str(room), patience),
                                        name="gpucheck", resources=StageResources(gpu=gpu)))
    assert sorted(task for _, task in held) == list(range(TASKS))
    met = meetings(room)
    return {address: {task: met[task] for task in on_side(met, str(address))}
            for address in {a for a, _ in held}}


def test_tasks_receive_the_declared_gpu_addresses(spark_session, tmp_path: Path) -> None:
    from resflow_spark import SparkExecutor

    by_address = run_stage(spark_session, 0.5, tmp_path, patience=30)
    assert set(by_address) == {"0", "1"}
    assert sum(map(len, by_address.values())) == TASKS
    assert SparkExecutor(spark=spark_session).describe()["gpus"] == 2


@pytest.mark.parametrize(("gpu", "patience"), [(1.0, 0.5), (0.5, 30)])
def test_fractional_profile_bounds_tasks_per_gpu(spark_session, tmp_path: Path, gpu: float,
                                                 patience: float) -> None:
    """A profile asking ``gpu`` of a device lets at most ``1/gpu`` tasks hold it at once,
    and the two-core executors do run that many together (so the bound is what limits).

    Each task waits to meet one other on its device: under a whole-GPU profile it waits out
    ``patience`` (a second task let in would be met within it), under a half it leaves as
    soon as its partner is inside."""
    by_address = run_stage(spark_session, gpu, tmp_path, patience)
    peaks = {address: peak_together(met) for address, met in by_address.items()}
    assert max(peaks.values()) == round(1 / gpu), peaks
