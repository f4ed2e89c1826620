"""The ingest, info and doctor commands end to end on real samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from resflow.cli import app
from resflow.errors import BackendError
from resflow.plugins import declared_backends, list_backends, load_backend
from resflow.samples import sample_path

runner = CliRunner()


def test_help_lists_data_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("ingest", "info", "doctor"):
        assert command in result.stdout


def test_ingest_then_info(tmp_path: Path) -> None:
    out = tmp_path / "a.zarr"
    result = runner.invoke(app, ["ingest", str(sample_path("landsat8")),
                                 str(sample_path("rotterdam-ms1")), "--out", str(out),
                                 "--chip", "512", "--workers", "2"])
    assert result.exit_code == 0, result.stderr
    assert "2 ingested, 0 unchanged, 0 refused" in result.stdout
    assert "skipped: LC08_L1TP_224078_20200518_20200518_01_RT: ground pixel 30" in result.stderr
    again = runner.invoke(app, ["ingest", str(sample_path("rotterdam-ms1")), "--out", str(out),
                                "--chip", "512"])
    assert "0 ingested, 1 unchanged" in again.stdout
    info = json.loads(runner.invoke(app, ["info", str(out), "--json"]).stdout)
    (ms1,) = info["scenes"]
    assert ms1["crs"] == "EPSG:32631" and ms1["resolution"] == pytest.approx([0.3, 0.3], 1e-3)
    assert (ms1["width"], ms1["height"], ms1["chips"]) == (1000, 1000, 2 * 2)
    assert ms1["resampling"] == "bilinear" and ms1["source_gsd_m"] == pytest.approx(1, 1e-3)
    assert ms1["km2"] == pytest.approx(300 * 300 / 1e6, rel=1e-3)
    (landsat,) = info["skipped"]
    assert landsat["name"] == "LC08_L1TP_224078_20200518_20200518_01_RT"
    text = runner.invoke(app, ["info", str(out)]).stdout
    assert "ms1: 1000x1000 px, 4 bands b1,b2,b3,b4" in text
    assert "skipped LC08_L1TP_224078_20200518_20200518_01_RT: ground pixel 30" in text


def test_gsd_flag(tmp_path: Path) -> None:
    native = runner.invoke(app, ["ingest", str(sample_path("rotterdam-ms1")), "--out",
                                 str(tmp_path / "n.zarr"), "--gsd", "native"])
    assert native.exit_code == 0, native.stderr
    info = json.loads(runner.invoke(app, ["info", str(tmp_path / "n.zarr"), "--json"]).stdout)
    assert info["scenes"][0]["width"] == 300 and info["scenes"][0]["resampling"] == "none"
    bad = runner.invoke(app, ["ingest", str(sample_path("rotterdam-ms1")), "--out",
                              str(tmp_path / "b.zarr"), "--gsd", "fine"])
    assert bad.exit_code == 2 and "--gsd" in bad.stderr
    assert not (tmp_path / "b.zarr").exists()


def test_rgb_override(tmp_path: Path) -> None:
    out = tmp_path / "a.zarr"
    result = runner.invoke(app, ["ingest", str(sample_path("rotterdam-ms1")), "--out", str(out),
                                 "--rgb", "4,3,2"])
    assert result.exit_code == 0
    info = json.loads(runner.invoke(app, ["info", str(out), "--json"]).stdout)
    assert info["scenes"][0]["rgb"] == [3, 2, 1] and info["scenes"][0]["rgb_bands"] == [4, 3, 2]
    assert "R,G,B from bands 4,3,2" in runner.invoke(app, ["info", str(out)]).stdout
    bad = runner.invoke(app, ["ingest", str(sample_path("rotterdam-ms1")), "--out", str(out),
                              "--rgb", "red"])
    assert bad.exit_code == 2 and "--rgb" in bad.stderr


def test_info_refuses_a_non_archive(tmp_path: Path) -> None:
    result = runner.invoke(app, ["info", str(tmp_path / "missing.zarr")])
    assert result.exit_code == 2 and "the archive does not exist" in result.stderr
    (tmp_path / "plain").mkdir()
    result = runner.invoke(app, ["info", str(tmp_path / "plain")])
    assert result.exit_code == 2 and "Fix:" in result.stderr


def test_doctor_reports_environment() -> None:
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert {"python", "java", "torch", "cuda", "gpus", "backends"} <= set(report)
    assert "local" in report["backends"]


def test_backend_registry() -> None:
    assert {"local", "dask", "spark"} <= set(declared_backends())
    assert list_backends() is list_backends()  # cached
    with pytest.raises(BackendError, match=r"installed backends: .*local.*resflow\[dask\]"):
        load_backend("ray")


def test_load_local_backend() -> None:
    pytest.importorskip("resflow.local")
    assert load_backend("local") is list_backends()["local"]
