"""The GPU check (benchmarks/gpu_check/), rehearsed on the CPU: the summary it writes, how
it packs what travels to the GPU host, and how it checks the carried wheels' requirements."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from benchmarks.gpu_check.card import summarise_samples
from benchmarks.gpu_check.cli import main
from benchmarks.gpu_check.compare import TOLERANCES
from benchmarks.gpu_check.options import CheckOptions
from benchmarks.gpu_check.pack import pack
from benchmarks.gpu_check.rates import RESFLOW_KM2_PER_S
from benchmarks.gpu_check.wheels import (
    CARRIED,
    PREINSTALLED,
    uncovered_dependencies,
    unmet_requirements,
)
from resflow.archive import Archive
from tests.fixtures_data import SHORT_HALO


@pytest.mark.slow
def test_the_check_runs_on_the_cpu_and_writes_its_summary(cropped_archive: Path,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "results"
    code = main(["run", "--archive", str(cropped_archive), "--out", str(out),
                 "--logs", str(tmp_path / "logs"), "--device", "cpu", "--quick",
                 "--engines", "nothing", "--batch-sizes", "1,2",
                 "--compare-chips", "2", "--sweep-chips", "3", "--large-run-chips", "30",
                 "--halo", str(SHORT_HALO), "--window", "2"])
    summary = json.loads((out / "gpu-check.json").read_text())
    assert code == 1  # the unknown engine fails its runs; every step still ran
    assert all(step["status"] == "ok" for step in summary["steps"].values())
    assert summary["environment"]["rehearsal"] and summary["environment"]["device"] == "cpu"

    chips = len(Archive.open(cropped_archive).chips())
    archive = summary["archive"]
    assert archive["chips"] == chips
    assert archive["km2_at_0_5m"] == pytest.approx(archive["km2"] * (0.5 / 0.3) ** 2, rel=1e-3)

    comparison = summary["comparison"]  # the CPU against itself: the harness adds nothing
    # whole prediction windows: the first one already holds more than 2 chips
    assert comparison["windows"] == 1 and comparison["chips"] > 2
    assert comparison["bitwise_equal"]
    assert comparison["within_tolerance"] and set(comparison["within"]) == set(
        TOLERANCES)
    route = summary["input_route"]  # the GPU's way in, rehearsed on the CPU
    assert route["blocks_bitwise_equal"] and route["quantise_bitwise_equal"]
    assert route["windows"] == 1 and route["chips"] == comparison["chips"]
    assert route["bytes_per_window"]["sent"] <= route["bytes_per_window"]["float32"]
    assert min(route["chips_per_s"].values()) > 0
    assert [p["batch_size"] for p in summary["batch_invariance"]["points"]] == [1, 2]
    assert all(p["bitwise_equal"] for p in summary["batch_invariance"]["points"])

    sweep = summary["batch_sweep"]  # on the CPU one precision: float32
    assert [(p["batch_size"], p["precision"]) for p in sweep] == [(1, "float32"), (2, "float32")]
    for point in sweep:
        assert point["windows"] == 1 and point["chips"] == comparison["chips"]
        assert point["chips_per_s"] > 0
        assert point["of_resflow"] == pytest.approx(
            point["km2_per_s_at_0_5m"] / RESFLOW_KM2_PER_S)
        assert point["nvidia_smi"] == {"skipped": "nvidia-smi not found"}

    # the one engine run that works: Dask over the archive's scenes twice (2 x 18 chips)
    large = summary["engines"]["dask large"]
    assert large["status"] == "ok" and large["chips"] == 2 * chips and len(large["runs"]) == 1
    assert "--backend dask" in large["command"] and "--device cpu" in large["command"]
    assert "--batch-size 8" in large["command"]
    assert f"--set halo={SHORT_HALO} --set window=2" in large["command"]  # what stages ran
    assert large["km2_per_s"] == pytest.approx(large["km2"] / large["report_wall_s"])
    assert summary["engines"]["nothing"]["status"] == "failed"
    assert "nothing" in summary["engines"]["nothing"]["error"]

    top = summary["headline"]
    assert top["resflow_reported_km2_per_s"] == 5.245 and top["card"].startswith("CPU")
    assert top["stages_best"]["batch_size"] in (1, 2)
    assert top["engines"]["dask large"]["status"] == "ok"
    text = (out / "gpu-check.md").read_text()
    assert "Rehearsal on the CPU" in text and "| dask large end to end (ok) |" in text
    assert "| stored dtype, harmonised on the device |" in text
    assert sorted(p.name for p in out.iterdir()) == ["gpu-check.json", "gpu-check.md"]
    assert (tmp_path / "logs" / "dask-large-1.log").is_file()


def test_the_check_predicts_the_graphs_windows() -> None:
    from resflow.config import RunConfig

    options = CheckOptions(archive=Path("a"), out=Path("b"))
    assert (options.window, options.halo) == (RunConfig().window, RunConfig().halo)


def test_a_cuda_check_without_a_gpu_stops_at_once(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "results"
    code = main(["run", "--archive", str(tmp_path / "absent"), "--out", str(out),
                 "--logs", str(tmp_path / "logs")])
    summary = json.loads((out / "gpu-check.json").read_text())
    assert code == 2 and list(summary["steps"]) == ["device"]
    assert "torch sees no GPU" in summary["steps"]["device"]["error"]


def _wheel(folder: Path, name: str, version: str, requires: list[str]) -> Path:
    """A minimal wheel: just the metadata pip and the closure check read."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    metadata = "".join(f"Requires-Dist: {line}\n" for line in requires)
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{name}-{version}.dist-info/METADATA",
                       f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{metadata}")
    return path


def test_unmet_requirements_follow_markers_versions_and_the_host(tmp_path: Path) -> None:
    wheels = [
        _wheel(tmp_path, "alpha", "1.0", ["beta>=2", "gamma; python_version < '3.12'",
                                          "torch>=2", "delta; extra == 'docs'"]),
        _wheel(tmp_path, "beta", "1.5", []),
    ]
    assert unmet_requirements(wheels, ["torch"], "3.12") == [
        "alpha-1.0-py3-none-any.whl: beta>=2 (carried 1.5)"]
    assert "alpha-1.0-py3-none-any.whl: gamma; python_version < \"3.12\"" in \
        unmet_requirements(wheels, ["torch"], "3.11")


def test_every_dependency_of_resflow_has_a_place_on_the_host() -> None:
    assert uncovered_dependencies() == []
    assert not set(CARRIED) & set(PREINSTALLED)
    assert "torch" not in CARRIED


def test_packing_fills_each_part_before_the_next() -> None:
    sizes = {"weights.whl": 16.6, "proj.whl": 9.1, "codecs.whl": 8.9, "core.whl": 2.2,
             "archive": 3.0}
    parts = pack(sizes, capacity=24.9)
    assert parts == [["weights.whl", "archive", "core.whl"], ["proj.whl", "codecs.whl"]]
    with pytest.raises(ValueError, match="alone exceeds"):
        pack({"big.whl": 30.0}, capacity=24.9)


def test_nvidia_smi_samples_are_summarised() -> None:
    summary = summarise_samples(["30, 1000, 100.5", "90, 3000, [N/A]", "garbage"])
    assert summary["samples"] == 2
    assert summary["utilization_pct"] == {"mean": 60.0, "max": 90.0}
    assert summary["memory_used_mib"]["max"] == 3000.0
    assert summary["power_w"] == {"mean": 100.5, "max": 100.5}
