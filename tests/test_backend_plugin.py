"""A new backend is one module plus one entry point: the example of docs/backends.md, installed
into a temporary directory, gets its YAML section, its flag and the contract suite, with no
change to resflow.

Each check runs in a subprocess whose path holds the example, so this session's backend
registry (read once, cached) never sees it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "backends.md"


def example_module() -> str:
    """The complete example backend of the guide: its Python block defining the executor."""
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.DOTALL)
    return next(block for block in blocks if "class PoolExecutor(Executor)" in block)


def without_group_by_key(module: str) -> str:
    """The example as backend ``poolfused``, its ``group_by_key`` method left out."""
    trimmed = re.sub(r"\n    def group_by_key\(.*?(?=\n    def )", "", module, flags=re.DOTALL)
    assert "group_by_key" not in trimmed.split("class PoolExecutor")[1]
    return trimmed.replace('name = "pool"', 'name = "poolfused"')


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A directory holding the example module, the same without ``group_by_key``, and the
    metadata of a package declaring them as backends ``pool`` and ``poolfused``, as ``pip
    install`` would leave them; returned as a PYTHONPATH."""
    site = tmp_path_factory.mktemp("site")
    (site / "resflow_pool.py").write_text(example_module())
    (site / "resflow_poolfused.py").write_text(without_group_by_key(example_module()))
    info = site / "resflow_pool-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: resflow-pool\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[resflow.backends]\npool = resflow_pool:PoolExecutor\n"
        "poolfused = resflow_poolfused:PoolExecutor\n")
    return os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")])


def run_with_plugin(plugin_path: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": plugin_path}, timeout=600)


def test_new_backend_gets_its_section_flag_and_doctor_line(plugin_path: str,
                                                           tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("backend: pool\npool: {processes: 0}\n")
    script = textwrap.dedent(f"""
        import json
        import typer
        from typer.testing import CliRunner
        from resflow.cli import app
        from resflow.config import RunConfig, load_config
        from resflow.plugins import engine_models, load_backend

        assert load_backend("pool").__name__ == "PoolExecutor"
        settings = load_config(None, RunConfig, backend="pool", engines=engine_models(),
                               **{{"pool.processes": 3}})
        assert settings.engine_settings("pool").processes == 3
        assert settings.model_dump(mode="json")["pool"]["processes"] == 3
        run = typer.main.get_command(app).commands["run"]
        assert "--processes" in {{flag for param in run.params for flag in param.opts}}
        refused = CliRunner().invoke(app, ["run", "a.zarr", "--out", "o.zarr",
                                           "--config", {str(bad)!r}])
        assert refused.exit_code == 2 and "field 'pool.processes'" in refused.output, \\
            refused.output
        doctor = json.loads(CliRunner().invoke(app, ["doctor", "--json"]).stdout)
        assert "pool" in doctor["backends"], doctor
        print("ok")
    """)
    done = run_with_plugin(plugin_path, "-c", script)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")


CONTRACT = """
import inspect, json
import pytest
from tests import test_executor_contract as contract
from tests.fixtures_engines import build_engine

assert engine in contract.BACKENDS, contract.BACKENDS
passed, skipped = [], []
for name, check in vars(contract).items():
    params = list(inspect.signature(check).parameters) if name.startswith("test_") else None
    try:
        if params == ["executor"]:
            with build_engine(engine, None) as executor:
                check(executor)
        elif params == ["name"]:
            check(engine)
        else:
            continue
    except pytest.skip.Exception:
        skipped.append(name)
        continue
    passed.append(name)
print(json.dumps({"passed": passed, "skipped": skipped}))
"""


def contract_script(engine: str) -> str:
    """:data:`CONTRACT` run against backend ``engine``."""
    return f"engine = {engine!r}\n{CONTRACT}"


@pytest.mark.slow
def test_contract_suite_runs_against_the_new_backend(plugin_path: str) -> None:
    """Every check of the contract suite that takes an engine (or a backend name) runs
    against the new backend, built as ``build_engine`` builds any backend: in a plain
    Python process, not a pytest session inside this one."""
    done = run_with_plugin(plugin_path, "-c", contract_script("pool"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ran = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"test_same_records_on_every_engine",
            "test_regroup_puts_each_key_in_its_stable_partition",
            "test_task_env_names_stage_and_partition",
            "test_engine_describes_its_cluster_for_the_report",
            "test_engine_owns_its_settings_and_flags"} <= set(ran["passed"]), ran
    # the pool engine is built from its own settings, so closing it is meant to release it
    assert ran["skipped"] == ["test_closing_a_shared_engine_keeps_it_running"], ran


@pytest.mark.slow  # the contract suite and a whole run
def test_an_engine_without_group_by_key_passes_the_contract_and_runs_fused_only(
        plugin_path: str, tmp_path: Path) -> None:
    """``group_by_key`` is optional: the contract's regroup checks skip for such an engine,
    every other check passes, and ``resflow run --plan regrouped`` on it is refused before
    any work, naming the engine and the plan it can run."""
    done = run_with_plugin(plugin_path, "-c", contract_script("poolfused"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ran = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"test_stages_without_a_regroup_keep_each_record_in_its_partition",
            "test_task_env_names_stage_and_partition",
            "test_engine_describes_its_cluster_for_the_report",
            "test_engine_owns_its_settings_and_flags"} <= set(ran["passed"]), ran
    assert sorted(ran["skipped"]) == ["test_closing_a_shared_engine_keeps_it_running",
                                      "test_regroup_puts_each_key_in_its_stable_partition",
                                      "test_same_records_on_every_engine"], ran
    out = tmp_path / "o.zarr"
    refused = run_with_plugin(plugin_path, "-c", "from resflow.cli import app; app()", "run",
                              str(tmp_path / "a.zarr"), "--out", str(out), "--backend",
                              "poolfused", "--plan", "regrouped")
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert ("backend 'poolfused': the 'poolfused' engine does not implement group_by_key, "
            "which the regrouped plan needs. Fix: set plan: fused") in refused.stderr, \
        refused.stderr[-3000:]
    assert not out.exists()
