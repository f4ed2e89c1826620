"""The local engine runs partitions on threads without changing what it returns."""

from __future__ import annotations

import threading

from resflow.executor import StageResources, TaskEnv
from resflow.local import LocalExecutor


def test_threads_give_the_sequential_records_in_partition_order() -> None:
    parts = [[1, 2], [3], [4, 5, 6], [7]]
    seen: set[str] = set()

    def tenfold(records: list[int], env: TaskEnv) -> list[int]:
        seen.add(threading.current_thread().name)
        return [r * 10 for r in records]

    results = []
    for threads in (1, 2):
        with LocalExecutor(gpus=[], progress=False, threads=threads) as ex:
            coll = ex.map_partitions(ex.from_partitions(parts), tenfold, name="x")
            results.append(ex.collect(coll))
            assert ex.describe()["threads_per_worker"] == threads
    assert results[0] == results[1] == [10, 20, 30, 40, 50, 60, 70]
    assert all(name.startswith("resflow_x") for name in seen)


def test_gpu_tasks_spread_over_the_declared_devices() -> None:
    def device(records: list[int], env: TaskEnv) -> list[str | None]:
        return [env.gpu]

    with LocalExecutor(gpus=["0", "1"], progress=False, threads=2) as ex:
        coll = ex.map_partitions(ex.from_partitions([[0]] * 4), device, name="g",
                                 resources=StageResources(gpu=0.5))
        assert ex.collect(coll) == ["0", "1", "0", "1"]
