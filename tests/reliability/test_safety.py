"""Safety: nothing untrusted is unpickled, UIs bind to loopback, outputs stay inside OUT.

(That a run's processes listen only on loopback is checked live by the worker-loss runs;
that a run leaves no temporary files is checked by the bad-input runs.)
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from resflow_dask.settings import DaskConfig
from resflow_spark.settings import SparkConfig

from resflow.archive import Archive
from resflow.config import RunConfig
from resflow.ingestion import ingest
from resflow.samples import sample_path
from resflow.store.writer import OutputStore
from tests.fixtures_data import SHORT_HALO

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*(ROOT / "resflow").rglob("*.py"), *(ROOT / "backends").rglob("*.py"),
                  *(ROOT / "benchmarks").rglob("*.py")])

UNSAFE = {
    r"\bpickle\.loads?\(": "pickle.load runs code from the file",
    r"\bcloudpickle\.loads?\(": "cloudpickle.load runs code from the file",
    r"\bjoblib\.load\(": "joblib.load unpickles",
    r"allow_pickle\s*=\s*True": "np.load(allow_pickle=True) unpickles",
    r"\byaml\.load\(": "yaml.load without SafeLoader builds arbitrary objects",
    r"\btorch\.load\((?![^)]*weights_only\s*=\s*True)": "torch.load without weights_only=True",
}


def test_no_code_path_unpickles_a_file() -> None:
    found = []
    for path in SOURCES:
        text = path.read_text()
        for pattern, why in UNSAFE.items():
            for match in re.finditer(pattern, text):
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{path.relative_to(ROOT)}:{line}: {why}")
    assert not found, "\n".join(found)


def test_dashboards_bind_to_loopback_by_default() -> None:
    assert DaskConfig().dashboard_address.startswith("127.0.0.1:")
    assert SparkConfig().ui_host == "127.0.0.1"


HOSTILE = ("zarr.json.tif", "run_report.json.tif", "..hidden.tif", "$(touch pwned) ;x.tif",
           "-rf --no-preserve-root.tif", "new\nline.tif", "ünïcødé 東京.tif")


@pytest.mark.slow  # a whole run over seven copies of a scene
def test_hostile_file_names_cannot_escape_the_output(engine_gallery: Path, cropped_sources: Path,
                                                     tmp_path: Path) -> None:
    from resflow.graph import run_graph
    from resflow.local import LocalExecutor

    rasters = tmp_path / "rasters"
    rasters.mkdir()
    for name in HOSTILE:
        shutil.copy(cropped_sources / sample_path("rotterdam-ms1").name, rasters / name)
    archive, out = tmp_path / "archive.zarr", tmp_path / "work" / "out.zarr"
    result = ingest([rasters], archive)
    assert result.ok and len(result.ingested) == len(HOSTILE), result
    before = {p for p in tmp_path.rglob("*") if not p.is_relative_to(out)}
    config = RunConfig(archive=archive, gallery=engine_gallery, out=out, backend="local",
                       device="cpu", partition_chips=8, halo=SHORT_HALO)
    run_graph(config, LocalExecutor(gpus=[], progress=False))
    after = {p for p in tmp_path.rglob("*") if not p.is_relative_to(out)}
    assert after - before == {out.parent}, "the run wrote outside its output directory"
    for path in out.rglob("*"):
        assert path.resolve().is_relative_to(out.resolve())
        assert re.fullmatch(r"[A-Za-z0-9._-]+", path.name), path
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


@pytest.mark.parametrize("name", ["run_report.json", "zarr.json"])
def test_reserved_names_never_replace_store_files(name: str, tmp_path: Path) -> None:
    """A scene named like a store file gets another group name; the file stays a file."""
    archive = tmp_path / "archive.zarr"
    shutil.copy(sample_path("rotterdam-ms1"), tmp_path / f"{name}.tif")
    assert ingest([tmp_path / f"{name}.tif"], archive).ok
    out = tmp_path / "out.zarr"
    store = OutputStore.create(out, Archive.open(archive), run_config={})
    assert name not in store.groups.values()
    assert json.loads((out / "zarr.json").read_text())["attributes"]["resflow_kind"] == "output"
