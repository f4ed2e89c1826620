"""Benchmark machinery: results of the right shape on a tiny archive (no timing asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window

from benchmarks.engine_study.baseline import hand_written
from benchmarks.engine_study.limit import Preloaded, compare_settings, compute_limit, one_pass
from benchmarks.engine_study.machine import describe_machine
from benchmarks.engine_study.memory import peaks, reset_peaks
from benchmarks.engine_study.scaled_archive import read_on_working_grid, write_scaled_scene
from benchmarks.engine_study.scaling import scaled_archive, spread
from benchmarks.engine_study.series import summarise
from benchmarks.engine_study.study import BenchOptions, gpu_sweep, run_benchmark
from benchmarks.engine_study.sweeps import override, plan_sweeps, run_sweeps
from resflow.archive import Archive
from resflow.config import RunConfig
from resflow.gallery import Gallery, write_gallery
from resflow.models.hashing import HashingHead
from resflow.models.segmentation import SegmentationDecoder
from resflow.report import STAGES
from resflow.resolution import DEFAULT_GSD_M
from resflow.samples import sample_path

CHIP = 64
HALO = 8


@pytest.fixture(scope="module")
def tile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A crop of the real Atlanta tile on the working grid (0.3 m), 128 x 128 pixels, keeping
    its CRS and upper-left corner: archive and hand-written loop then read the same pixels."""
    out = tmp_path_factory.mktemp("tile") / "atlanta-crop.tif"
    edge = round(2 * CHIP * DEFAULT_GSD_M / 0.5)  # source pixels are 0.5 m
    pixels, profile = read_on_working_grid(sample_path("atlanta-pan"),
                                           window=Window(0, 0, edge, edge))
    assert pixels.shape[-2:] == (2 * CHIP, 2 * CHIP)
    with rasterio.open(out, "w", **profile | {"tiled": False}) as dst:
        dst.write(pixels)
    return out


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Gallery:
    """A two-bucket gallery with untrained decoders: the benchmarks time models, not maps."""
    torch.manual_seed(0)
    codes = np.array([[False] * 8, [True] * 8])
    return write_gallery(tmp_path_factory.mktemp("gallery"), bucket_codes=codes,
                         buckets=[{"chips": 1, "labelled_chips": 1}] * 2,
                         head=HashingHead(hidden=16, bits=8),
                         decoders={"mono": SegmentationDecoder(),
                                   "bucket-1": SegmentationDecoder()}, gsd_m=DEFAULT_GSD_M,
                         info={})


@pytest.fixture(scope="module")
def archive(tile: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return scaled_archive(1, tmp_path_factory.mktemp("archive"), chip=CHIP, source=tile)


def test_scaled_scene_keeps_georeferencing(tile: Path, tmp_path: Path) -> None:
    out = write_scaled_scene(2, tmp_path / "x2.tif", source=tile)
    with rasterio.open(tile) as src, rasterio.open(out) as big:
        assert big.crs == src.crs
        assert big.transform == src.transform  # same pixel size and upper-left corner
        assert (big.height, big.width) == (src.height, 2 * src.width)
        assert np.array_equal(big.read(window=Window(0, 0, src.width, src.height)), src.read())


@pytest.mark.parametrize("window", [1, 4])
def test_the_limit_preloads_every_window_as_the_graph_predicts_it(archive: Path,
                                                                  window: int) -> None:
    opened = Archive.open(archive)
    data = Preloaded.read(opened, HALO, window)
    chips = opened.chips()  # 2 x 2 chips, all with data
    assert sorted(data.refs) == sorted(chips) and len(data.refs) == 4
    assert data.km2 == pytest.approx(sum(r.km2 for r in chips))
    edge = CHIP * min(window, 2) + 2 * HALO  # a window of 4 spans the scene's 2 x 2 chips
    assert len(data.windows) == 4 // min(window, 2) ** 2
    assert [s.valid.shape for s in data.stored] == [(edge, edge)] * len(data.windows)
    for w, source, refs in zip(data.windows, data.stored, data.chips, strict=True):
        assert source.pixels.shape[-2:] == (edge, edge)  # the bands feeding R, G, B, once
        expected = opened.read_window(w, HALO)
        assert np.array_equal(source.pixels, expected.pixels)
        assert all(w.crop(source.valid, ref, HALO).shape == (ref.height, ref.width)
                   for ref in refs)


def test_a_limit_pass_maps_every_window_once(archive: Path, gallery: Gallery,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks.engine_study import limit

    data = Preloaded.read(Archive.open(archive), HALO, 1)
    decoded: list[tuple[int, ...]] = []
    decode = limit.decode_quantised

    def spy(maps: list, valid: list, *args: object, **kwargs: object) -> list:
        decoded.extend(v.shape for v in valid)
        assert kwargs["size"] == valid[0].shape and kwargs["batch_size"] == 1
        return decode(maps, valid, *args, **kwargs)

    monkeypatch.setattr(limit, "decode_quantised", spy)
    one_pass(data, gallery, threads=2)
    assert decoded == [(CHIP + 2 * HALO,) * 2] * 4  # each window once, whole, as the graph


def test_limit_has_rates_and_stage_seconds(archive: Path, gallery: Gallery) -> None:
    data = Preloaded.read(Archive.open(archive), HALO, 4)
    limit = compute_limit(data, gallery, threads=2, repeats=2)
    assert limit["chips"] == 4 and limit["windows"] == 1  # chips, not windows, are counted
    assert limit["km2"] == pytest.approx(data.km2)
    assert (limit["window"], limit["halo"]) == (4, HALO)
    assert limit["km2_per_s"]["n"] == 2 and limit["km2_per_s"]["median"] > 0
    assert limit["chips_per_s"]["values"] == pytest.approx(
        [4 / wall for wall in limit["wall_s"]["values"]])
    assert set(limit["stage_seconds"]) == {"stage1", "stage2", "stage3"}
    assert limit["thread_scaling"] > 0


def test_window_settings_are_compared_pass_by_pass(archive: Path, gallery: Gallery) -> None:
    found = compare_settings(Archive.open(archive), gallery, [(1, HALO), (4, 2 * HALO)],
                             threads=2, repeats=2)
    first, second = found["settings"]
    assert [(s["window"], s["halo"], s["windows"]) for s in found["settings"]] == [
        (1, HALO, 4), (4, 2 * HALO, 1)]
    assert first["chips"] == second["chips"] == 4
    assert first["of_first"] == 1.0 and first["paired_of_first"]["values"] == [1.0, 1.0]
    assert second["of_first"] == pytest.approx(
        second["chips_per_s"]["median"] / first["chips_per_s"]["median"])
    assert second["paired_of_first"]["n"] == 2


def test_hand_written_loop_maps_every_chip(tile: Path, archive: Path, gallery: Gallery,
                                           tmp_path: Path) -> None:
    result = hand_written([tile], gallery, tmp_path, chip=CHIP, halo=HALO, threads=1)
    refs = Archive.open(archive).chips()
    assert result["chips"] == len(refs)
    assert result["km2"] == pytest.approx(sum(r.km2 for r in refs))
    with rasterio.open(tile) as src, rasterio.open(tmp_path / tile.name) as out:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
        assert out.dtypes[0] == "uint8"


def test_memory_peaks_name_the_driver() -> None:
    before = reset_peaks()
    result = peaks(before)
    assert result["driver_mb"] > 0 and result["worker_mb"] is None


def test_summaries_and_machine() -> None:
    summary = summarise([3.0, 1.0, 2.0])
    assert (summary["median"], summary["min"], summary["max"], summary["n"]) == (2.0, 1.0, 3.0, 3)
    assert spread([2.0, 2.2]) == pytest.approx(0.1)
    machine = describe_machine()
    assert machine["cores"] >= 1 and machine["memory_gib"] > 0 and machine["cpu_model"]


@pytest.mark.slow
def test_quick_benchmark_writes_results(tile: Path, gallery: Gallery, tmp_path: Path) -> None:
    options = BenchOptions(quick=True, backends=("local",), repeats=1, out=tmp_path / "results",
                           gallery=gallery.path, partition_chips=2, halo=HALO, batch_size=2,
                           device="cpu", factors=(1, 2), scaling_backend="local", source=tile,
                           chip=CHIP, work_dir=tmp_path / "work")
    results = run_benchmark(options, log=lambda line: None)
    saved = json.loads((tmp_path / "results" / "bench-quick.json").read_text())
    assert saved["mode"] == "quick" and saved["archive"]["chips"] == 16  # x4 of 2 x 2 chips
    assert saved["device"] == "cpu" and saved["options"]["batch_size"] == 2
    labels = [e["label"] for e in results["engines"]]
    assert labels == ["local", "local regrouped"]  # both plans, the default first
    for engine in results["engines"]:
        assert (engine["device"], engine["batch_size"]) == ("cpu", 2)  # the engines' settings
        assert set(engine["stage_seconds"]) == set(STAGES)
        assert sum(engine["stage_fractions"].values()) == pytest.approx(1.0)
        assert results["ratios"][engine["label"]]["of_limit"] > 0
    assert results["ratios"]["local"]["target"] == 0.95
    assert results["ratios"]["local regrouped"]["target"] is None
    assert [s["factor"] for s in results["scaling"]["sizes"]] == [1, 2]
    # equal measuring time per size: x1 runs twice per round, x2 once
    assert [s["s_per_km2"]["n"] for s in results["scaling"]["sizes"]] == [2, 1]
    assert results["sweeps"] == {}
    for name in ("rates", "stages", "scaling"):
        assert (tmp_path / "results" / f"{name}-quick.png").stat().st_size > 0
    table = (tmp_path / "results" / "table-quick.md").read_text()
    assert "| local |" in table and "models on cpu, batch size 2" in table


def test_sweeps_plan_every_shape_and_measure_a_point(archive: Path, gallery: Gallery,
                                                     tmp_path: Path) -> None:
    plan = plan_sweeps(cores=2, gpus=0)
    assert set(plan) == {"dask workers x threads", "spark executors x cores",
                         "partition chips (dask)", "batch size (dask)",
                         "torch threads per worker (dask)"}
    assert [label for label, _ in plan["dask workers x threads"]] == [
        "1x1", "1x2", "2x1", "2x2", "4x1"]
    assert "tasks per GPU (dask)" in plan_sweeps(cores=2, gpus=1)

    config = RunConfig(archive=archive, gallery=gallery.path, halo=HALO, device="cpu")
    changed = override(config, {"dask.workers": 3, "batch_size": 2})
    assert (changed.model_dump()["dask"]["workers"], changed.batch_size, changed.halo) == (
        3, 2, HALO)

    points = {"partition chips (local)": [("1", {"backend": "local", "partition_chips": 1}),
                                          ("4", {"backend": "local", "partition_chips": 4})]}
    data = Preloaded.read(Archive.open(archive), HALO, config.window)
    passes: list[dict] = []

    def limit_pass() -> dict:
        passes.append(one_pass(data, gallery, threads=2))
        return passes[-1]

    results = run_sweeps(config, points, repeats=1, out_dir=tmp_path, cores=2,
                         limit_pass=limit_pass)
    measured = results["partition chips (local)"]
    assert [p["label"] for p in measured] == ["1", "4"]
    assert len(passes) == 2  # one limit pass per point, timed beside it
    for p, limit in zip(measured, passes, strict=True):
        assert p["km2_per_s"]["median"] > 0 and p["chips_per_s"]["median"] > 0
        assert p["limit_km2_per_s"] == pytest.approx(data.km2 / limit["wall_s"])
        assert p["of_limit"] == pytest.approx(p["km2_per_s"]["median"] / p["limit_km2_per_s"])


def test_an_unknown_plan_is_refused_before_any_work(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from resflow.cli import app

    out = tmp_path / "results"
    result = CliRunner().invoke(app, ["bench", "--quick", "--plan", "fused", "--plan",
                                      "shuffled", "--out", str(out)])
    assert result.exit_code == 2
    assert "Invalid value for '--plan'" in result.output
    assert all(f"'{plan}'" in result.output for plan in ("shuffled", "fused", "regrouped"))
    assert not out.exists()


def test_bench_refuses_a_device_or_batch_size_it_cannot_use(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from resflow.cli import app

    out = tmp_path / "results"
    if not torch.cuda.is_available():
        result = CliRunner().invoke(app, ["bench", "--quick", "--device", "cuda", "--out",
                                          str(out)])
        assert result.exit_code == 2 and "torch sees no GPU" in result.output
    result = CliRunner().invoke(app, ["bench", "--quick", "--batch-size", "0", "--out",
                                      str(out)])
    assert result.exit_code == 2 and "batch-size" in result.output
    assert not out.exists()  # refused before any work


def test_the_gpu_sweep_says_why_it_did_not_run() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    full, quick = BenchOptions(), BenchOptions(quick=True)
    assert gpu_sweep(full, {"gpus": []}, cpu).startswith("skipped: no GPU")
    assert gpu_sweep(full, {"gpus": ["NVIDIA H200"]}, cpu) == (
        "skipped: models ran on cpu, so tasks per GPU were not swept")
    assert gpu_sweep(quick, {"gpus": ["NVIDIA H200"]}, cuda) == (
        "skipped: quick mode runs no sweeps")
    assert gpu_sweep(full, {"gpus": ["NVIDIA H200"]}, cuda) == "run"


def test_a_worker_that_exits_does_not_count_as_other_work() -> None:
    """A descendant reaped during a measurement (Spark reaps idle Python workers) must not
    take its lifetime's CPU seconds off ours, which would show as other work."""
    import subprocess
    import sys
    import time

    import psutil

    from benchmarks.engine_study.contention import contention

    burn = ("import time\nstart = time.process_time()\n"
            "while time.process_time() - start < 1.0:\n    pass\ntime.sleep(60)\n")
    worker = subprocess.Popen([sys.executable, "-c", burn])
    try:
        while sum(psutil.Process(worker.pid).cpu_times()[:2]) < 1.0:
            time.sleep(0.05)
        with contention() as record:
            worker.kill()
            worker.wait()
            time.sleep(0.2)
    finally:
        worker.kill()
    with contention() as control:  # the same wait with nothing reaped: the machine's own load
        time.sleep(0.2)
    # before the per-process accounting, the lost second showed as about 4 other cores more
    # than the machine's load; other work running meanwhile shows in both measurements
    assert record["others_cores"] < control["others_cores"] + 1.0
    assert record["others_cores"] < psutil.cpu_count() + 1.0
