"""``resflow bench`` finds the studies in a checkout and, where resflow is installed from the
wheel (which never holds ``benchmarks``), says in one line how to get them.

Each case runs the command in a fresh interpreter started without ``site`` (so the editable
install's import hook is not there): resflow comes from a copy of its package, as a wheel
installs it, and the dependencies from this environment's site-packages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding resflow's packages as a wheel would install them (modules only:
    the command reads no data before it refuses) and a console script that runs its CLI."""
    site = tmp_path_factory.mktemp("site")
    for package in (ROOT / "resflow", ROOT / "backends" / "resflow_dask",
                    ROOT / "backends" / "resflow_spark"):
        shutil.copytree(package, site / package.name, ignore=_data_and_caches)
    (site / "bin").mkdir()
    (site / "bin" / "resflow_cli.py").write_text(
        "import sys\nfrom resflow.cli import main\nsys.exit(main())\n")
    return site


def _data_and_caches(folder: str, names: list[str]) -> list[str]:
    """What of ``folder`` is neither a module nor a package folder, for the copy to skip."""
    return [name for name in names if name == "__pycache__"
            or not (name.endswith(".py") or Path(folder, name).is_dir())]


def _bench(installed: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``resflow bench`` with a URL scratch folder, refused once the studies import and
    before any work, run from ``cwd`` with only ``installed`` and site-packages importable."""
    paths = os.pathsep.join([str(installed), sysconfig.get_paths()["purelib"]])
    env = {**os.environ, "PYTHONPATH": paths}
    return subprocess.run(
        [sys.executable, "-S", str(installed / "bin" / "resflow_cli.py"), "bench", "--quick",
         "--work-dir", "s3://bucket/scratch", "--out", str(installed / "results")],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_bench_finds_the_studies_in_the_checkout_it_runs_from(installed: Path) -> None:
    done = _bench(installed, cwd=ROOT)
    assert done.returncode == 2, done.stderr
    # the study imported, the URL refused
    assert "--work-dir: 's3://bucket/scratch' is a URL" in done.stdout + done.stderr
    assert not (installed / "results").exists()


def test_bench_without_a_checkout_says_how_to_get_the_studies(installed: Path,
                                                              tmp_path: Path) -> None:
    done = _bench(installed, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    said = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(said) == 1, said
    assert "ship only with the repository" in said[0]
    assert "clone the resflow repository and run `make bench` from its root" in said[0]
    assert not (installed / "results").exists()


def test_the_wheels_packages_leave_the_benchmarks_out() -> None:
    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]
    packages = {name for where in found["where"]
                for name in find_packages(str(ROOT / where), include=found["include"])}
    assert {"resflow", "resflow.commands", "resflow_dask", "resflow_spark"} <= packages
    assert not {name for name in packages if name.split(".")[0] == "benchmarks"}
