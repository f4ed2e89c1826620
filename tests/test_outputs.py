"""The output store on a real ingested archive: grid, chunks, ledger, completion, refusals."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine
from pyproj import CRS

from resflow.archive import Archive
from resflow.chips import ChipRef, chip_grid
from resflow.errors import ResflowError
from resflow.failures import ChipFailure, write_chips
from resflow.outputs import (
    OutputComplete,
    OutputStore,
    describe,
    format_description,
    safe_group_name,
)

CONFIG = {"threshold": 0.5, "halo": 32, "gallery": None, "backend": "local"}


def squares(ref: ChipRef) -> np.ndarray:
    """A deterministic uint8 probability: 30-pixel 'buildings' on a 60-pixel scene lattice.

    Built from in-scene coordinates, so buildings cross chip edges like real ones.
    """
    yy, xx = np.mgrid[ref.y0:ref.y0 + ref.height, ref.x0:ref.x0 + ref.width]
    building = ((yy % 60) >= 15) & ((yy % 60) < 45) & ((xx % 60) >= 15) & ((xx % 60) < 45)
    return np.where(building, 230, 20).astype(np.uint8)


@pytest.fixture(scope="module")
def archive(sample_archive: Path) -> Archive:
    return Archive.open(sample_archive)


@pytest.fixture
def store(archive: Archive, tmp_path: Path) -> OutputStore:
    return OutputStore.create(tmp_path / "out.zarr", archive, run_config=CONFIG)


def chunk_file(store: OutputStore, scene: str, array: str, row: int, col: int) -> Path:
    return store.path / store.groups[scene] / array / "c" / str(row) / str(col)


def test_every_scene_has_the_archive_grid_crs_and_transform(store, archive):
    assert set(store.groups) == set(archive.scenes)
    for name, info in archive.scenes.items():
        ds = xr.open_zarr(store.path, group=store.groups[name])
        for var in ("probability", "mask"):
            assert ds[var].shape == (info.height, info.width)
            assert ds[var].dtype == np.uint8
            assert ds[var].encoding["chunks"] == (info.chip, info.chip)
        assert CRS.from_user_input(ds.rio.crs) == CRS.from_wkt(info.crs_wkt)
        assert ds.probability.rio.transform().almost_equals(Affine(*info.transform[:6]))
        assert ds.rio.shape == (info.height, info.width)


def test_each_chip_window_is_exactly_one_chunk(store, archive):
    for ref in archive.chips():
        assert ref.y0 // ref.chip == (ref.y0 + ref.height - 1) // ref.chip == ref.row
        assert ref.x0 // ref.chip == (ref.x0 + ref.width - 1) // ref.chip == ref.col
    ref = archive.chips()[-1]  # a bottom-right edge chip: the smallest window
    store.write_chip(ref, squares(ref), squares(ref) > 127)
    group = store.path / store.groups[ref.scene]
    for array in ("probability", "mask"):
        written = [p for p in (group / array / "c").rglob("*") if p.is_file()]
        assert written == [chunk_file(store, ref.scene, array, ref.row, ref.col)]


def test_writing_a_chip_twice_leaves_identical_bytes(store, archive):
    ref = archive.chips()[1]
    store.write_chip(ref, squares(ref), squares(ref) > 127)
    first = {a: chunk_file(store, ref.scene, a, ref.row, ref.col).read_bytes()
             for a in ("probability", "mask", "chip_done")}
    OutputStore.open(store.path).write_chip(ref, squares(ref), squares(ref) > 127)
    for array, data in first.items():
        assert chunk_file(store, ref.scene, array, ref.row, ref.col).read_bytes() == data


def test_ledger_lists_exactly_the_chips_whose_pixels_are_written(store, archive):
    refs = archive.chips()[::3]
    worker = pickle.loads(pickle.dumps(OutputStore.open(store.path)))  # as shipped to a worker
    for ref in refs:
        worker.write_chip(ref, squares(ref), squares(ref) > 127)
    assert store.done_chips() == {(r.scene, r.row, r.col) for r in refs}
    for ref in refs:
        ds = xr.open_zarr(store.path, group=store.groups[ref.scene])
        window = {"y": slice(ref.y0, ref.y0 + ref.height), "x": slice(ref.x0, ref.x0 + ref.width)}
        probability = ds.probability.isel(window).values
        np.testing.assert_array_equal(probability, squares(ref))
        np.testing.assert_array_equal(ds.mask.isel(window).values, probability > 127.5)


def test_writing_many_chips_at_once_equals_writing_each(store, archive, tmp_path):
    """Runs of side-by-side chips (edge chips included) go out as one window per array; the
    chunks on disk are those of chip-by-chip writes, byte for byte, ledger included."""
    refs = archive.chips()
    picked = [*refs[::-1][::2], *refs[1::4]]
    store.write_chips(picked, [squares(r) for r in picked],
                      [squares(r) > 127 for r in picked])
    alone = OutputStore.create(tmp_path / "alone.zarr", archive, run_config=CONFIG)
    for ref in picked:
        alone.write_chip(ref, squares(ref), squares(ref) > 127)
    assert store.done_chips() == alone.done_chips() == {(r.scene, r.row, r.col) for r in picked}
    for ref in picked:
        for array in ("probability", "mask", "chip_done"):
            assert (chunk_file(store, ref.scene, array, ref.row, ref.col).read_bytes()
                    == chunk_file(alone, ref.scene, array, ref.row, ref.col).read_bytes())


def test_a_chip_that_cannot_be_written_fails_alone(store, archive):
    """When writing chips together raises, each is written alone: only the bad one fails,
    and it stays out of the ledger so ``--resume`` retries it."""
    refs = archive.chips(["sample_geotiff"])[:4]
    chips = [squares(r) for r in refs]
    chips[1] = chips[1].astype(np.float32)  # refused: not uint8
    failures: list[ChipFailure] = []
    written = write_chips(store, refs, chips, [c > 127 for c in chips], "stage3-segment",
                          failures)
    assert written == [refs[0], *refs[2:]]
    assert [(f.ref, f.stage) for f in failures] == [(refs[1], "stage3-segment")]
    assert "writing the chip failed (ResflowError:" in failures[0].problem
    assert store.done_chips() == {(r.scene, r.row, r.col) for r in written}


def test_incomplete_store_never_reports_complete(store, archive):
    refs = archive.chips()
    for ref in refs[:-1]:
        store.write_chip(ref, squares(ref), squares(ref) > 127)
    desc = describe(store.path)
    assert not desc["complete"] and desc["summary"] is None
    assert desc["chips_done"] == len(refs) - 1 and desc["chips_total"] == len(refs)
    with pytest.raises(ResflowError, match=r"1 of \d+ chips are not written"):
        store.finalize({"summary": "never"})
    assert not describe(store.path)["complete"]
    assert "INCOMPLETE" in format_description(desc)
    store.write_chip(refs[-1], squares(refs[-1]), squares(refs[-1]) > 127)
    store.finalize({"summary": "resflow: done", "chips": len(refs)})
    desc = describe(store.path)
    assert desc["complete"] and desc["percent"] == 100.0 and desc["summary"] == "resflow: done"
    assert json.loads((store.path / "run_report.json").read_text())["chips"] == len(refs)
    root_attrs = json.loads((store.path / "zarr.json").read_text())["attributes"]
    assert root_attrs["complete"] is True and root_attrs["resflow_kind"] == "output"


def test_existing_output_is_refused_without_resume_or_overwrite(store, archive):
    ref = archive.chips()[0]
    store.write_chip(ref, squares(ref), squares(ref) > 127)
    with pytest.raises(ResflowError) as err:
        OutputStore.create(store.path, archive, run_config=CONFIG)
    assert str(store.path) in str(err.value)
    assert "--resume" in str(err.value) and "--overwrite" in str(err.value)

    resumed = OutputStore.create(store.path, archive, resume=True, run_config=CONFIG)
    assert resumed.done_chips() == {(ref.scene, ref.row, ref.col)}
    with pytest.raises(ResflowError, match="threshold"):
        OutputStore.create(store.path, archive, resume=True,
                           run_config={**CONFIG, "threshold": 0.7})

    fresh = OutputStore.create(store.path, archive, overwrite=True, run_config=CONFIG)
    assert fresh.done_chips() == set()


def test_resume_over_a_complete_output_has_nothing_to_do(store, archive):
    for ref in archive.chips():
        store.write_chip(ref, squares(ref), squares(ref) > 127)
    store.finalize({"summary": "done"})
    with pytest.raises(OutputComplete, match="nothing to resume"):
        OutputStore.create(store.path, archive, resume=True, run_config=CONFIG)


def test_foreign_folders_and_the_archive_itself_are_never_overwritten(archive, tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(ResflowError, match="not a resflow output"):
        OutputStore.create(foreign, archive, overwrite=True, run_config=CONFIG)
    assert (foreign / "holiday.jpg").exists()
    with pytest.raises(ResflowError, match="input archive"):
        OutputStore.create(archive.path, archive, overwrite=True, run_config=CONFIG)


def test_misaligned_or_mistyped_chips_are_refused(store, archive):
    ref = archive.chips()[0]
    with pytest.raises(ResflowError, match="expected uint8"):
        store.write_chip(ref, squares(ref).astype(np.float32), squares(ref) > 127)
    shifted = replace(ref, y0=ref.y0 + 1, height=ref.height - 1)
    with pytest.raises(ResflowError, match="not chunk"):
        store.write_chip(shifted, squares(shifted), squares(shifted) > 127)
    assert store.done_chips() == set()


class _HostileArchive:
    """An archive whose scene names try to climb out of the output directory."""

    def __init__(self, archive: Archive) -> None:
        info = next(iter(archive.scenes.values()))
        self.path = archive.path
        self.scenes = {name: replace(info, name=name)
                       for name in ("../../evil", "/etc/passwd", "..", "run_report.json")}

    def chips(self) -> list[ChipRef]:
        return [ChipRef(name, r, c, y0, x0, h, w, info.chip, 0.0, 1.0)
                for name, info in self.scenes.items()
                for r, c, y0, x0, h, w in chip_grid(info.height, info.width, info.chip)]


def test_hostile_scene_names_cannot_escape_the_output(archive, tmp_path):
    hostile = _HostileArchive(archive)
    out = tmp_path / "nest" / "out.zarr"
    store = OutputStore.create(out, hostile, run_config=CONFIG)
    ref = next(r for r in hostile.chips() if r.scene == "../../evil")
    store.write_chip(ref, squares(ref), squares(ref) > 127)
    for group in store.groups.values():
        assert "/" not in group and not group.startswith(".")
        assert (out / group).resolve().parent == out.resolve()
    assert len(set(store.groups.values())) == len(hostile.scenes)
    assert store.groups["run_report.json"] != "run_report.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nest"]
    assert sorted(p.name for p in (tmp_path / "nest").iterdir()) == ["out.zarr"]
    assert safe_group_name("../../evil") == "__.._evil"
