"""The embedded Dask cluster: workers run the models on reused heap memory despite the
nanny's malloc tunable, the driver's environment is left as it was, and on a host with a GPU
(declared here: there is none) several GPU tasks share it by default."""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from resflow_dask.settings import DaskConfig

from resflow.executor import StageResources, TaskEnv
from resflow.inference.caches import preload_models
from tests.allocations import FRESH_MMAP_FAULTS, faults_per_alloc
from tests.overlap import meet, meetings, peak_together

TASKS = 8


def _trim_setting() -> str | None:
    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


def hold_device(room: str, want: int, records: list[int], env: TaskEnv
                ) -> list[tuple[str | None, int]]:
    """Hold the device until ``want`` other tasks on it are met (or every task has come)."""
    with env.gpu_held() as gpu:
        meet(room, f"task{records[0]}", want=want, patience=30, side=str(gpu), total=TASKS)
        return [(gpu, records[0])]


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, set[str]]]:
    """One embedded cluster of one worker on a host declaring one GPU, with the default
    settings otherwise; yields it and the driver's environment variables its start changed."""
    from resflow_dask import DaskExecutor

    config = DaskConfig(workers=1, dashboard_address="127.0.0.1:0",
                        ticket_dir=tmp_path_factory.mktemp("tickets"))
    before = dict(os.environ)
    with DaskExecutor(config, gpus=["0"], progress=False) as executor:
        changed = {key for key in before.keys() | os.environ.keys()
                   if before.get(key) != os.environ.get(key)}
        yield executor, changed


def test_workers_reuse_memory_and_the_driver_environment_is_restored(embedded) -> None:
    """Dask's nanny exports ``MALLOC_TRIM_THRESHOLD_``, which freezes glibc's mmap threshold
    at 128 KiB (5x slower model passes, benchmarks/README.md): after the model preload a
    worker's 4 MiB arrays must come from the heap. The driver's environment, which the nanny
    edits while spawning, must come back unchanged (a Spark session started later would
    inherit the edits)."""
    executor, changed = embedded
    assert not changed
    assert set(executor.client.run(_trim_setting).values()) == {"65536"}
    executor.preload(partial(preload_models, None), name="models-allocator-test")
    faults = executor.client.run(faults_per_alloc).values()
    assert all(f < FRESH_MMAP_FAULTS / 10 for f in faults), faults


def test_four_gpu_tasks_share_the_gpu_by_default(embedded, tmp_path: Path) -> None:
    """The worker declares the GPU as a resource of 1 and runs 4 threads, so GPU tasks of the
    default share (0.25) run four at a time on device "0" (each waits to meet three others
    there); CPU tasks get no device."""
    executor, _ = embedded
    shape = executor.describe()
    assert shape["threads_per_worker"] == [4] and shape["worker_resources"] == ["{'GPU': 1}"]
    parts = executor.from_partitions([[i] for i in range(TASKS)])
    gpu = StageResources(gpu=executor.gpu_share)
    held = executor.collect(executor.map_partitions(
        parts, partial(hold_device, str(tmp_path / "gpu"), 3), name="gpushare", resources=gpu))
    assert {device for device, _ in held} == {"0"}
    assert sorted(task for _, task in held) == list(range(TASKS))
    assert peak_together(meetings(tmp_path / "gpu")) == 4
    cpu = executor.collect(executor.map_partitions(
        parts, partial(hold_device, str(tmp_path / "cpu"), 0), name="cpushare"))
    assert {device for device, _ in cpu} == {None}


def host_and_device(room: str, records: list[int], env: TaskEnv) -> list[tuple[int, str | None]]:
    """Meet the other tasks (so the cluster must run them at once), then hold the device:
    which process ran the task, and the GPU its ticket gave it."""
    meet(room, f"task{records[0]}", want=TASKS - 1, patience=30, total=TASKS)
    with env.gpu_held() as gpu:
        return [(os.getpid(), gpu)]


@pytest.mark.slow
def test_processes_per_gpu_spread_a_gpus_tasks_over_processes(tmp_path: Path) -> None:
    """``processes_per_gpu: 2`` on a host with one GPU (declared): two worker processes of 4
    threads each share device "0" through tickets, so the 8 tasks of a GPU stage run at once
    in two interpreters, each holding the device only inside ``gpu_held``."""
    from resflow_dask import DaskExecutor

    config = DaskConfig(processes_per_gpu=2, dashboard_address="127.0.0.1:0",
                        ticket_dir=tmp_path / "tickets")
    with DaskExecutor(config, gpus=["0"], progress=False) as executor:
        shape = executor.describe()
        assert shape["workers"] == 2 and shape["worker_resources"] == ["{'GPU': 1}"]
        parts = executor.from_partitions([[i] for i in range(TASKS)])
        ran = executor.collect(executor.map_partitions(
            parts, partial(host_and_device, str(tmp_path / "room")), name="spread",
            resources=StageResources(gpu=executor.gpu_share)))
    assert len({pid for pid, _ in ran}) == 2 and {gpu for _, gpu in ran} == {"0"}
    assert peak_together(meetings(tmp_path / "room")) == TASKS
