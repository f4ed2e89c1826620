"""The Python API's steps around a run: ``resflow.ingest``, ``resflow.train``,
``resflow.export`` and ``resflow.evaluate``, in one calling convention (input, ``out``,
settings as keywords checked as the CLI checks its flags, refusals worded for Python), each
giving what its command gives."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import geopandas as gpd
import pytest

import resflow
from resflow.errors import ConfigError, ResflowError
from resflow.samples import sample_path


def test_ingest_is_resflow_ingest_as_a_call(cropped_sources: Path, tmp_path: Path) -> None:
    out = tmp_path / "archive.zarr"
    done = resflow.ingest(sorted(cropped_sources.iterdir()), out, chip=128, gsd=0.5)
    assert done.ok and sorted(done.ingested) == ["ms1", "sample_geotiff"]
    from resflow.archive import Archive

    scenes = Archive.open(out).scenes
    assert {info.chip for info in scenes.values()} == {128}
    assert all(info.gsd_m == pytest.approx(0.5, rel=1e-3) for info in scenes.values())
    again = resflow.ingest(sorted(cropped_sources.iterdir()), out, chip=128, gsd=0.5)
    assert sorted(again.skipped) == ["ms1", "sample_geotiff"]  # unchanged: skipped


@pytest.mark.parametrize(("call", "field"), [
    (lambda out: resflow.ingest([sample_path("rotterdam-ms1")], out, chip=0), "chip"),
    (lambda out: resflow.ingest([sample_path("rotterdam-ms1")], out, chipp=256), "chipp"),
    (lambda out: resflow.ingest([sample_path("rotterdam-ms1")], out, sets=["chip=1"]), "sets"),
    (lambda out: resflow.train("a.zarr", out, labels=["l.geojson"], mono_step=5),
     "mono_step"),
    (lambda out: resflow.export("maps.zarr", cog_dir=out, threshold=1.5), "threshold"),
    (lambda out: resflow.evaluate("maps.zarr", out, labels=["l.geojson"], covred=["a"]),
     "covred"),
])
def test_bad_settings_are_refused_naming_the_call_and_field(call, field: str,
                                                           tmp_path: Path) -> None:
    """Refused before any work, naming the call and the keyword; nothing is written."""
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=rf"resflow\.\w+.*field '{field}'"):
        call(out)
    assert not out.exists()


def test_export_and_evaluate_a_finished_run(mapped_samples: Path, tmp_path: Path) -> None:
    """Footprints and COGs as ``resflow export`` writes them; a second export refuses to
    replace them in Python's words; scores as ``resflow eval`` gives them."""
    footprints, cogs = tmp_path / "buildings.gpkg", tmp_path / "cogs"
    written = resflow.export(mapped_samples, footprints=footprints, cog_dir=cogs,
                             min_building_m2=20)
    assert footprints in written and any(p.parent == cogs for p in written)
    buildings = gpd.read_file(footprints)
    assert len(buildings) > 0 and (buildings.area_m2 >= 20).all()
    with pytest.raises(ResflowError, match=r"overwrite=True") as refused:
        resflow.export(mapped_samples, footprints=footprints)
    assert "--overwrite" not in str(refused.value)
    assert resflow.export(mapped_samples, footprints=footprints, overwrite=True) == [
        footprints]

    report = tmp_path / "eval"
    scores = resflow.evaluate(mapped_samples, report, labels=[sample_path("atlanta-labels")])
    assert scores["scenes"]["sample_geotiff"]["true_buildings"] == 43
    assert json.loads((report / "eval.json").read_text()) == scores


@pytest.mark.slow
def test_every_step_is_at_the_package_root_whatever_was_imported_before() -> None:
    """The root's functions are the API's, even after the modules that implement ingest and
    export were imported (a submodule named like a function would hide it)."""
    script = textwrap.dedent("""
        import resflow.ingestion, resflow.exports, resflow.evaluation, resflow.training
        import resflow
        from resflow import api

        for name in ("ingest", "train", "run", "predict", "export", "evaluate", "open_maps"):
            assert getattr(resflow, name) is getattr(api, name), name
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok")
