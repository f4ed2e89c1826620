"""Engines own their settings: YAML sections validated by each engine's model, the engines'
flags on ``resflow run`` and ``resflow demo``, and the GPU-sharing defaults those settings
carry, checked on the CPU with declared devices."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import typer
from resflow_dask import DaskExecutor
from resflow_dask.settings import DaskConfig
from resflow_spark.settings import SparkConfig, is_local_master
from typer.testing import CliRunner

from resflow.cli import app
from resflow.commands.run import engine_options, engine_overrides
from resflow.config import RunConfig, load_config
from resflow.errors import ConfigError
from resflow.executor import TaskEnv
from resflow.local import LocalExecutor
from resflow.plugins import engine_models

# -- sections -----------------------------------------------------------------------------

INSTALLED = {"engines": engine_models()}


def test_sections_are_validated_by_the_engines_models(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("backend: spark\ndask:\n  workers: 4\nspark:\n  master: local[3]\n")
    settings = load_config(path, RunConfig, engines=engine_models())
    assert settings.engine_settings("dask") == DaskConfig(workers=4)
    assert settings.engine_settings("spark") == SparkConfig(master="local[3]")


@pytest.mark.parametrize(("text", "field", "problem"), [
    ("dask:\n  workers: 0\n", "dask.workers", "greater than or equal to 1"),
    ("spark:\n  master: sprak://x:7077\n", "spark.master", "not a Spark master URL"),
    ("dask:\n  wrokers: 2\n", "dask.wrokers", "Extra inputs are not permitted"),
    ("ray:\n  address: auto\n", "ray", "installed engines: dask, local, spark"),
    ("local:\n  threads: 2\n", "local", "the 'local' engine has no settings"),
    ("batch_size: 0\nray: {}\n", "batch_size", "greater than or equal to 1"),
])
def test_bad_sections_name_the_file_and_field(tmp_path: Path, text: str, field: str,
                                              problem: str) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path, RunConfig, engines=engine_models())
    assert f"run.yaml: field '{field}'" in str(err.value) and problem in str(err.value)


def test_an_empty_section_holds_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("dask:\n  # workers: 4\n")
    settings = load_config(path, RunConfig, engines=engine_models(),
                           **{"spark.master": "local[4]"})
    assert settings.engine_settings("dask") == DaskConfig()
    assert settings.engine_settings("spark").master == "local[4]"


def test_dump_embeds_each_section_and_validates_back() -> None:
    """The report's copy of the config (``model_dump(mode="json")``) rebuilds the same run."""
    settings = RunConfig.model_validate(
        {"backend": "dask", "dask": DaskConfig(workers=3, gpus=["1"]),
         "spark": {"master": "local-cluster[2,1,1024]"}}, context=INSTALLED)
    dumped = settings.model_dump(mode="json")
    assert dumped["dask"]["workers"] == 3 and dumped["dask"]["gpus"] == ["1"]
    assert dumped["spark"]["master"] == "local-cluster[2,1,1024]"
    assert "_engines" not in dumped and "engines" not in dumped
    assert RunConfig.model_validate(dumped, context=INSTALLED) == settings
    assert RunConfig.model_validate(settings.model_dump(), context=INSTALLED) == settings
    assert "dask=DaskConfig(scheduler_address=None, workers=3," in repr(settings)


def test_without_the_installed_engines_sections_are_kept_for_the_engine_to_check() -> None:
    """A config validated without the registry holds its sections as written, whatever is
    installed; the engine checks its own when it is built, naming the field."""
    plain = RunConfig.model_validate({"backend": "local", "ray": {"address": "auto"},
                                      "dask": {"workers": 0}})
    assert plain.engine_settings("ray") == {"address": "auto"}
    assert plain.engine_settings("local") is None
    assert plain.model_dump()["dask"] == {"workers": 0}
    with pytest.raises(ConfigError, match=r"field 'dask.workers'.*greater than or equal to 1"):
        DaskExecutor.from_settings(plain.engine_settings("dask"), device="cpu")
    with pytest.raises(ConfigError, match=r"field 'dask.wrokers'"):
        DaskExecutor.from_settings({"wrokers": 2})
    engine = LocalExecutor.from_settings(plain.engine_settings("local"), device="cpu",
                                         progress=False)
    assert engine.gpus == [] and engine.progress is False


def test_validating_a_config_imports_no_engine_registry() -> None:
    """The config module stands alone: importing and validating it loads neither the
    plugin registry nor any engine."""
    script = ("import sys; from resflow.config import RunConfig; "
              "RunConfig.model_validate({'threshold': 0.6, 'dask': {'workers': 2}}); "
              "print(sorted(m for m in sys.modules if m.startswith(('resflow.plugins', "
              "'resflow.executor', 'resflow_'))))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]", done.stdout


# -- flags --------------------------------------------------------------------------------


def test_engine_flags_fill_each_engines_section() -> None:
    options = engine_options()
    assert engine_overrides(options, {"workers": 3}) == {"dask.workers": 3,
                                                         "spark.master": "local[3]"}
    # a master given outright wins over --workers, declared after it by the Spark engine
    assert engine_overrides(options, {"workers": 3, "spark_master": "local[8]"}) == {
        "dask.workers": 3, "spark.master": "local[8]"}
    assert engine_overrides(options, {"scheduler_address": "tcp://h:8786", "workers": None}) == {
        "dask.scheduler_address": "tcp://h:8786"}


def test_run_and_demo_offer_every_engines_flags() -> None:
    commands = typer.main.get_command(app).commands
    for command in ("run", "demo"):
        flags = {flag for param in commands[command].params for flag in param.opts}
        assert {"--scheduler-address", "--spark-master", "--workers"} <= flags, command


def test_a_flag_clashing_with_the_command_is_left_out_with_a_warning() -> None:
    with pytest.warns(RuntimeWarning, match=r"backend '(dask|spark)'.*--workers"):
        options = engine_options(reserved={"workers"})
    assert "--workers" not in {option.flag for _, option in options}


@pytest.mark.parametrize(("flags", "expected"), [
    (["--workers", "0"], "field 'dask.workers'"),
    (["--backend", "spark", "--spark-master", "sprak://x:7077"], "field 'spark.master'"),
])
def test_bad_flag_values_are_refused_before_any_work(tmp_path: Path, flags: list[str],
                                                     expected: str) -> None:
    out = tmp_path / "maps.zarr"
    result = CliRunner().invoke(app, ["run", str(tmp_path / "a.zarr"), "--out", str(out),
                                      *flags])
    assert result.exit_code == 2 and expected in result.output, result.output
    assert not out.exists()


# -- GPU sharing defaults -----------------------------------------------------------------


def test_dask_workers_get_a_thread_per_gpu_share() -> None:
    assert DaskConfig().worker_threads(has_gpus=False) == 1
    assert DaskConfig().worker_threads(has_gpus=True) == 4
    assert DaskConfig(gpu_per_task=0.5).worker_threads(has_gpus=True) == 2
    assert DaskConfig(gpu_per_task=1).worker_threads(has_gpus=True) == 1
    assert DaskConfig(threads_per_worker=2).worker_threads(has_gpus=True) == 2


def test_dask_cuda_cluster_shares_each_gpu(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    """On a host with GPUs the LocalCUDACluster's workers each declare one GPU and run four
    threads, so four GPU tasks of 0.25 share a device (dask-cuda cannot run here: the module
    stands in for it and records the cluster it was asked for)."""
    from resflow_dask import _embedded_cluster

    asked: dict[str, Any] = {}
    fake = types.ModuleType("dask_cuda")
    fake.LocalCUDACluster = lambda **kw: asked.update(kw) or "cluster"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "dask_cuda", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert _embedded_cluster(DaskConfig(), ["0", "1"], str(tmp_path)) == ("cluster", True)
    assert asked["threads_per_worker"] == 4 and asked["resources"] == {"GPU": 1}
    _embedded_cluster(DaskConfig(threads_per_worker=1), ["0"], str(tmp_path))
    assert asked["threads_per_worker"] == 1


def report_device(records: list[int], env: TaskEnv) -> list[str | None]:
    return [env.gpu]


def test_spark_local_tasks_are_spread_over_the_gpus_by_partition() -> None:
    """Under local[N] Spark assigns no GPU, so task ``i`` runs on ``gpus[i mod len]``."""
    from resflow_spark.tasks import run_partition

    got = [next(run_partition(report_device, "segment", i, [0], devices=("0", "1")))
           for i in range(5)]
    assert got == ["0", "1", "0", "1", "0"]
    assert next(run_partition(report_device, "segment", 3, [0])) is None


def test_only_local_masters_spread_tasks_over_the_drivers_gpus() -> None:
    assert all(map(is_local_master, ["local", "local[4]", "local[*]", "local[4,2]"]))
    assert not any(map(is_local_master, ["local-cluster[2,1,1024]", "spark://h:7077", "yarn"]))


def test_executors_run_this_python_only_where_they_share_its_paths() -> None:
    """Local and standalone executors run the driver's interpreter; on YARN or Kubernetes
    the driver's path means nothing, so only a configured (packed) Python is passed on."""
    import sys

    from resflow_spark import executor_python
    from resflow_spark.settings import SparkConfig

    assert executor_python(SparkConfig(master="local[2]")) == sys.executable
    assert executor_python(SparkConfig(master="spark://10.0.0.1:7077")) == sys.executable
    assert executor_python(SparkConfig(master="yarn")) is None
    assert executor_python(SparkConfig(master="k8s://https://k8s:6443")) is None
    packed = "./environment/bin/python"
    assert executor_python(SparkConfig(master="yarn", python=packed)) == packed
    assert executor_python(SparkConfig(master="k8s://https://k8s:6443",
                                       conf={"spark.pyspark.python": packed})) == packed
