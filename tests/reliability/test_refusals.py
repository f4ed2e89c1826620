"""A run that cannot succeed is refused before any work: no engine, no output directory.

Each case names the file or setting at fault. Cases that would start an engine if the check
regressed (cluster addresses) run as subprocesses, so no cluster can start inside pytest.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from resflow.cli import app
from tests.processes import free_port, resflow


def _tampered(gallery: Path, tmp: Path) -> Path:
    copy = Path(shutil.copytree(gallery, tmp / "tampered"))
    weights = next(copy.glob("*.safetensors"))
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    return copy


CASES = {
    "missing gallery": (lambda g, t: ["--gallery", str(t / "nowhere")],
                        ["nowhere/manifest.json", "no gallery manifest"]),
    "tampered gallery": (lambda g, t: ["--gallery", str(_tampered(g, t))],
                         [".safetensors", "differs from the manifest"]),
    "unknown backend": (lambda g, t: ["--gallery", str(g), "--backend", "flink"],
                        ["unknown backend 'flink'", "installed backends: dask, local, spark"]),
    "malformed yaml": (lambda g, t: ["--config", str(_write(t / "bad.yaml", "backend: [dask\n"))],
                       ["bad.yaml", "not valid YAML"]),
    "unknown yaml key": (lambda g, t: ["--config", str(_write(t / "typo.yaml", "bakend: dask\n"))],
                         ["typo.yaml", "field 'bakend'"]),
    "bad spark master": (lambda g, t: ["--backend", "spark", "--spark-master", "sprak://x:7077"],
                         ["field 'spark.master'", "not a Spark master URL"]),
    "missing archive": (lambda g, t: ["--gallery", str(g)], ["the archive does not exist"]),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_before_any_work(case: str, small_archive: Path, engine_gallery: Path,
                                 tmp_path: Path) -> None:
    flags, expected = CASES[case]
    archive = tmp_path / "absent.zarr" if case == "missing archive" else small_archive
    out = tmp_path / "maps.zarr"
    result = CliRunner().invoke(app, ["run", str(archive), "--out", str(out),
                                      *flags(engine_gallery, tmp_path)])
    assert result.exit_code == 2, result.output
    for text in expected:
        assert text in result.output, result.output
    assert not out.exists()


@pytest.mark.parametrize("backend, flag, url, setting", [
    ("dask", "--scheduler-address", "tcp://127.0.0.1:{port}", "dask.scheduler_address"),
    ("spark", "--spark-master", "spark://127.0.0.1:{port}", "spark.master"),
])
def test_unreachable_cluster_is_refused_at_once(backend: str, flag: str, url: str,
                                                setting: str, small_archive: Path,
                                                engine_gallery: Path, tmp_path: Path) -> None:
    out = tmp_path / "maps.zarr"
    address = url.format(port=free_port())
    done = resflow("run", str(small_archive), "--out", str(out), "--gallery",
                   str(engine_gallery), "--backend", backend, flag, address, timeout=60)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"{setting} '{address}'" in done.stderr and "nothing answers there" in done.stderr
    assert not out.exists()
