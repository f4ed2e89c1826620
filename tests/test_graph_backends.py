"""The real graph on the cropped samples: the same maps, bit for bit, on every engine.

Runs use 2 x 2-chip prediction windows with a short halo
(:data:`~tests.fixtures_data.SHORT_HALO`: equality across engines does not depend on the
context) and partitions of 4 chips, so each 3 x 3-chip scene is four windows (whole, cut by
the scene edge on one side and on two), spread over tasks."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from resflow.archive import Archive
from resflow.config import RunConfig
from resflow.executor import Executor, TaskEnv
from resflow.graph import RunResult, run_graph
from resflow.inference.fused import fused_stages
from resflow.inference.settings import GraphSettings, settings_from_config
from resflow.local import LocalExecutor
from resflow.planning import Partition, plan
from resflow.store.writer import OutputStore
from resflow.tickets import SharedDevices, ticket_path, try_lock
from tests.fixtures_data import SHORT_HALO

BACKENDS = ("local", "dask", "spark")
PLANS = ("fused", "regrouped")
WINDOW = 2
PARTITION_CHIPS = 4


def make_executor(name: str, request: pytest.FixtureRequest) -> Executor:
    if name == "local":
        return LocalExecutor(gpus=[], progress=False)
    if name == "dask":
        from resflow_dask import DaskExecutor

        return DaskExecutor(client=request.getfixturevalue("dask_client"), gpus=[],
                            progress=False)
    from resflow_spark import SparkExecutor

    return SparkExecutor(spark=request.getfixturevalue("spark_session"), progress=False)


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest, cropped_archive: Path,
         tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[RunConfig, RunResult]]:
    """The cropped archive through each engine (fused plan, keyed by engine name) and through
    each engine's regrouped plan (keyed ``<engine>-regrouped``), one output store each, with
    the real bundled gallery."""
    out_dir = tmp_path_factory.mktemp("maps")
    done: dict[str, tuple[RunConfig, RunResult]] = {}
    for name in BACKENDS:
        for plan_name in PLANS:
            label = name if plan_name == "fused" else f"{name}-{plan_name}"
            config = RunConfig(archive=cropped_archive, out=out_dir / f"{label}.zarr",
                               backend=name, partition_chips=PARTITION_CHIPS, window=WINDOW,
                               halo=SHORT_HALO, plan=plan_name)
            with make_executor(name, request) as executor:
                done[label] = (config, run_graph(config, executor))
    return done


def scene_arrays(out: Path) -> dict[tuple[str, str], np.ndarray]:
    """Every array a run writes: the maps and the ledger of which bucket served each chip."""
    store = OutputStore.open(out)
    return {(scene, name): store.read_array(scene, name)[...]
            for scene in store.groups for name in ("probability", "mask", "chip_bucket")}


def test_every_engine_and_plan_writes_bitwise_identical_maps(runs, cropped_archive: Path
                                                            ) -> None:
    reference = scene_arrays(runs["local"][0].out)
    n_chips = len(Archive.open(cropped_archive).chips())
    assert len(runs) == len(BACKENDS) * len(PLANS)
    for name, (config, result) in runs.items():
        assert result.report.chips == n_chips
        assert OutputStore.open(config.out).complete
        arrays = scene_arrays(config.out)
        assert arrays.keys() == reference.keys()
        for key, array in arrays.items():
            assert array.dtype == (np.int16 if key[1] == "chip_bucket" else np.uint8)
            assert np.array_equal(array, reference[key]), f"{name} differs on {key}"
        assert result.report.buckets == runs["local"][1].report.buckets
        assert not result.failures
    assert any((a < 255).any() for (_, n), a in reference.items() if n == "probability")
    assert all((a >= 0).all() for (_, n), a in reference.items() if n == "chip_bucket")


def test_the_bundled_gallery_serves_chips_with_more_than_one_model(runs) -> None:
    for config, result in runs.values():
        store = OutputStore.open(config.out)
        models = store.bucket_models()
        served = {models[int(b)] for s in store.groups for b in np.unique(store.ledger(s))}
        assert len(served) > 1
        assert {b.model for b in result.report.buckets} == served


def test_reports_name_the_scene_too_coarse_to_map(runs) -> None:
    for _, result in runs.values():
        (skipped,) = result.report.skipped
        assert skipped["name"] == "rmnp-rgb" and "too coarse" in skipped["reason"]
        assert "1 scene too coarse for buildings, skipped" in result.report.summary_line()


def test_reports_name_engine_stages_and_buckets(runs) -> None:
    for label, (_, result) in runs.items():
        report = result.report
        assert report.backend == label.split("-")[0]
        assert report.stage_seconds["stage1"] > 0 and report.stage_seconds["stage3"] > 0
        assert sum(b.chips for b in report.buckets) == report.chips


def test_outputs_carry_the_input_crs_and_transform(runs, cropped_archive: Path) -> None:
    archive = Archive.open(cropped_archive)
    store = OutputStore.open(runs["local"][0].out)
    for scene, info in archive.scenes.items():
        crs_wkt, transform = store.georeference(scene)
        assert crs_wkt == info.crs_wkt
        assert np.allclose(transform, info.transform, rtol=0, atol=1e-9)
        assert store.read_array(scene, "probability").shape == (info.height, info.width)


def settings_for(config: RunConfig, out: Path) -> GraphSettings:
    return replace(settings_from_config(config), out=out)


def copied_run(runs, cropped_archive: Path, tmp_path: Path, index: int
               ) -> tuple[RunConfig, Path, Partition]:
    """The local run's config, a copy of its store to map into again, and its partition
    ``index``."""
    config, _ = runs["local"]
    out = tmp_path / "copy.zarr"
    shutil.copytree(config.out, out)
    partition = plan(Archive.open(cropped_archive).scenes,
                     shard_chips=OutputStore.open(out).shard_chips,
                     partition_chips=PARTITION_CHIPS)[index]
    return config, out, partition


def test_a_task_run_twice_leaves_the_same_output(runs, cropped_archive: Path,
                                                 tmp_path: Path) -> None:
    """A re-executed task (a retried or speculative one) rewrites identical bytes."""
    config, out, partition = copied_run(runs, cropped_archive, tmp_path, 1)
    before = scene_arrays(out)
    env = TaskEnv("local", "stages-fused", 0)
    (first,) = fused_stages(settings_for(config, out), [partition], env)
    once = scene_arrays(out)
    (second,) = fused_stages(settings_for(config, out), [partition], env)
    for key, array in scene_arrays(out).items():
        assert np.array_equal(array, once[key]) and np.array_equal(array, before[key])
    assert first.chips == second.chips == partition.chips and not first.failures
    assert first.buckets == second.buckets


def test_a_task_holds_its_gpu_ticket_for_device_work_only(runs, cropped_archive: Path,
                                                          tmp_path: Path) -> None:
    """On GPUs a host's workers share through tickets, a task checks its ticket out around
    each window's encoder, route and decoder, and gives it back for reads, masks and writes:
    a neighbour polling the only ticket finds it held, then free, then held again while the
    task runs. The GPU is declared (there is none), so the models run on the CPU."""
    config, out, partition = copied_run(runs, cropped_archive, tmp_path, 0)
    settings = replace(settings_for(config, out), window=1)  # a window per chip: 4 here
    shared = SharedDevices(("0",), per_device=1, ticket_dir=str(tmp_path / "tickets"))
    env = TaskEnv("dask", "stages-fused", 0, tickets=shared)
    with ThreadPoolExecutor(1) as pool:
        task = pool.submit(fused_stages, settings, [partition], env)
        seen = poll_ticket(ticket_path(tmp_path / "tickets", "0", 0), until=task.done)
        (summary,) = task.result()
    assert summary.chips == partition.chips and not summary.failures
    held_then_free_then_held = re.search("H+F+H", seen)
    assert held_then_free_then_held, f"the ticket was never given back between windows: {seen}"


def poll_ticket(path: Path, until: Callable[[], bool]) -> str:
    """Try the ticket at ``path`` until ``until()``: ``H`` each time it was held by someone
    else, ``F`` each time it was free (taken and given back at once), runs collapsed."""
    seen = ""
    while not until():
        state = "F"
        if path.parent.exists():  # the task makes the folder at its first checkout
            fd = try_lock(path)
            if fd is None:
                state = "H"
            else:
                os.close(fd)
        if not seen.endswith(state):
            seen += state
        time.sleep(0.0005)
    return seen


@pytest.mark.slow
def test_run_lists_the_exports_it_wrote(cropped_archive: Path, engine_gallery: Path,
                                        tmp_path: Path) -> None:
    """COGs and one footprints file when asked, and always the STAC Collection naming them."""
    import pystac

    config = RunConfig(archive=cropped_archive, gallery=engine_gallery, out=tmp_path / "o.zarr",
                       backend="local", window=WINDOW, halo=SHORT_HALO, cog_dir=tmp_path / "cog",
                       footprints=tmp_path / "buildings.geojson")
    with LocalExecutor(gpus=[], progress=False) as executor:
        result = run_graph(config, executor)
    scenes = OutputStore.open(config.out).groups.values()
    cogs = sorted(p.name for p in result.exports if p.parent == tmp_path / "cog")
    assert cogs == sorted(f"{s}_{kind}.tif" for s in scenes for kind in ("mask", "probability"))
    footprints = [p for p in result.exports if p.suffix == ".geojson"]
    assert footprints == [tmp_path / "buildings.geojson"] and footprints[0].is_file()
    collection = pystac.Collection.from_file(str(tmp_path / "o.zarr" / "stac" /
                                                 "collection.json"))
    assert sorted(item.id for item in collection.get_items()) == sorted(scenes)
    assert collection.get_self_href() in {str(p) for p in result.exports}
