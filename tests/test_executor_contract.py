"""The executor contract: one small graph of real functions, the same answer on every engine.

Parametrised over every backend installed in the ``resflow.backends`` entry-point group, so
a new backend is held to the contract as soon as its package is installed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from resflow.archive import Archive
from resflow.config import RunConfig
from resflow.errors import BackendError
from resflow.executor import CPU, Executor, StageResources, TaskEnv, stable_partition
from resflow.graph import run_graph
from resflow.local import LocalExecutor
from resflow.plugins import engine_models, list_backends
from resflow.preflight import check_plan
from resflow.report import ClusterShape
from tests.fixtures_data import SHORT_HALO
from tests.fixtures_engines import ON_SHARED_SESSION, build_engine

BACKENDS = sorted(list_backends())

PARTITIONS = [[3, 1, 4, 1], [5, 9, 2], [6, 5, 3, 5], [8]]

PRELOADED: dict[str, int] = {}


def square(records: list[int], env: TaskEnv) -> list[tuple[int, int, int]]:
    """Stage 1: (key, value, input partition) so the test can see where records went."""
    return [(r % 3, r * r, env.partition) for r in records]


def tag_with_group(records: list[tuple[int, int, int]], env: TaskEnv) -> list[tuple[int, int, int]]:
    """Stage 3: replace the input partition by the output partition after the regroup."""
    return [(k, v, env.partition) for k, v, _ in records]


def by_key(record: tuple[int, int, int]) -> int:
    return record[0]


def report_env(records: list[int], env: TaskEnv) -> list[tuple[str, str, int, str | None, int]]:
    """Where the task ran: the GPU is the one it holds for device work (TaskEnv.gpu_held)."""
    with env.gpu_held() as gpu:
        return [(env.backend, env.stage, env.partition, gpu, PRELOADED.get("models", 0))]


def load_models() -> None:
    PRELOADED["models"] = PRELOADED.get("models", 0) + 1


def run_small_graph(executor: Executor) -> list[tuple[int, int, int]]:
    parts = executor.from_partitions(PARTITIONS)
    features = executor.map_partitions(parts, square, name="features")
    regrouped = executor.group_by_key(features, by_key, 2)
    return executor.collect(executor.map_partitions(regrouped, tag_with_group, name="segment"))


def run_fused_graph(executor: Executor) -> list[tuple[int, int, int]]:
    """The fused plan's shape: stages one after the other on the same partitions."""
    parts = executor.from_partitions(PARTITIONS)
    features = executor.map_partitions(parts, square, name="features")
    return executor.collect(executor.map_partitions(features, tag_with_group, name="segment"))


def needs_regroup(executor: Executor) -> None:
    """Skip a check of ``group_by_key`` on an engine that leaves it out (it is optional)."""
    if not executor.regroups():
        pytest.skip(f"{executor.name} does not implement group_by_key: it runs the fused plan")


@pytest.fixture(params=BACKENDS)
def executor(request: pytest.FixtureRequest) -> Iterator[Executor]:
    with build_engine(request.param, request) as ex:
        yield ex


def test_same_records_on_every_engine(executor: Executor) -> None:
    needs_regroup(executor)
    expected = run_small_graph(LocalExecutor(gpus=[], progress=False))
    assert sorted(run_small_graph(executor)) == sorted(expected)
    assert len(expected) == sum(map(len, PARTITIONS))


def test_regroup_puts_each_key_in_its_stable_partition(executor: Executor) -> None:
    needs_regroup(executor)
    for key, _, partition in run_small_graph(executor):
        assert partition == stable_partition(key, 2)


def test_stages_without_a_regroup_keep_each_record_in_its_partition(executor: Executor) -> None:
    expected = [(r % 3, r * r, i) for i, part in enumerate(PARTITIONS) for r in part]
    assert sorted(run_fused_graph(executor)) == sorted(expected)


def test_task_env_names_stage_and_partition(executor: Executor) -> None:
    got = executor.collect(executor.map_partitions(executor.from_partitions(PARTITIONS), report_env,
                                                   name="envcheck"))
    assert sorted(p for _, _, p, _, _ in got) == list(range(len(PARTITIONS)))
    assert {(b, s) for b, s, _, _, _ in got} == {(executor.name, "envcheck")}


def test_closing_a_shared_engine_keeps_it_running(executor: Executor) -> None:
    if executor.name not in ON_SHARED_SESSION:
        pytest.skip(f"{executor.name} is built from its own settings: close() releases it")
    executor.close()  # the fixture's client and session belong to the test session
    expected = run_small_graph(LocalExecutor(gpus=[], progress=False))
    assert sorted(run_small_graph(executor)) == sorted(expected)


def test_dask_stages_show_under_their_names_and_preload_runs_on_every_worker(dask_client) -> None:
    from resflow_dask import DaskExecutor

    ex = DaskExecutor(client=dask_client, gpus=[], progress=False)
    ex.preload(load_models, name="contract")
    got = ex.collect(ex.map_partitions(ex.from_partitions(PARTITIONS), report_env, name="envcheck"))
    assert {models for *_, models in got} == {1}  # loaded once per worker, before the tasks
    prefixes = dask_client.run_on_scheduler(lambda dask_scheduler: [*dask_scheduler.task_prefixes])
    assert "resflow_envcheck" in prefixes
    assert ex.dashboard_link is not None and ex.dashboard_link.startswith("http://127.0.0.1:")


def test_dask_gpu_tasks_get_devices_through_tickets(dask_client, tmp_path: Path) -> None:
    from resflow_dask import DaskExecutor
    from resflow_dask.settings import DaskConfig

    ex = DaskExecutor(DaskConfig(ticket_dir=tmp_path), client=dask_client,
                      gpus=["0", "1"], progress=False)
    parts = ex.from_partitions(PARTITIONS)
    half = StageResources(gpu=0.5)
    gpu = ex.collect(ex.map_partitions(parts, report_env, name="gpucheck", resources=half))
    cpu = ex.collect(ex.map_partitions(parts, report_env, name="cpucheck"))
    assert {d for _, _, _, d, _ in gpu} <= {"0", "1"}
    assert {d for _, _, _, d, _ in cpu} == {None}
    assert sorted(os.listdir(tmp_path))  # the lock files live in the configured directory


def test_local_executor_describes_itself() -> None:
    assert LocalExecutor(gpus=["0"], progress=False).describe()["gpus"] == ["0"]


def test_engine_describes_its_cluster_for_the_report(executor: Executor) -> None:
    description = executor.describe()
    assert description["backend"] == executor.name
    assert ClusterShape.from_executor(description).workers >= 1


@pytest.mark.parametrize("name", BACKENDS)
def test_engine_owns_its_settings_and_flags(name: str) -> None:
    """The section named after the engine holds its own model's defaults, every flag fills
    a field of that model, and the engine's doctor facts are strings."""
    cls = list_backends()[name]
    assert cls.name == name
    if cls.config_model is None:
        assert not cls.cli_options
    else:
        defaults = RunConfig.model_validate({}, context={"engines": engine_models()})
        settings = defaults.engine_settings(name)
        assert settings == cls.config_model()
        assert defaults.model_dump(mode="json")[name] == settings.model_dump(mode="json")
        assert {o.field for o in cls.cli_options} <= set(cls.config_model.model_fields)
    assert all(isinstance(v, str) for v in cls.environment().values())


class FusedOnly(Executor):
    """An engine that leaves ``group_by_key`` out: the local engine's other operations."""

    name = "fusedonly"

    def __init__(self) -> None:
        self.local = LocalExecutor(gpus=[], progress=False)

    def from_partitions(self, partitions):
        return self.local.from_partitions(partitions)

    def map_partitions(self, coll, fn, *, name, resources=CPU):
        return self.local.map_partitions(coll, fn, name=name, resources=resources)

    def collect(self, coll):
        return self.local.collect(coll)

    def describe(self):
        return {**self.local.describe(), "backend": self.name}


@pytest.mark.slow
def test_an_engine_without_group_by_key_runs_fused_and_is_refused_regrouped(
        cropped_archive: Path, engine_gallery: Path, tmp_path: Path) -> None:
    engine = FusedOnly()
    assert not FusedOnly.regroups() and LocalExecutor.regroups()
    settings = dict(archive=cropped_archive, gallery=engine_gallery, backend="local",
                    device="cpu", window=2, halo=SHORT_HALO, partition_chips=4)
    done = run_graph(RunConfig(out=tmp_path / "fused.zarr", **settings), engine)
    assert done.totals.complete and done.totals.chips > 0
    assert done.totals.chips + done.totals.empty_chips == len(Archive.open(cropped_archive).chips())
    assert done.report.backend == "fusedonly"
    refused = tmp_path / "regrouped.zarr"
    with pytest.raises(BackendError, match=r"^backend 'fusedonly': the 'fusedonly' engine does "
                       r"not implement group_by_key, .* Fix: set plan: fused"):
        run_graph(RunConfig(out=refused, plan="regrouped", **settings), engine)
    assert not refused.exists()  # refused before any work: no output store
    check_plan(FusedOnly, "fused")
    check_plan(LocalExecutor, "regrouped")
