"""The output store on a real ingested archive: grid, shards, ledger, nodata, completion,
refusals."""

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
from resflow.planning import shards_of
from resflow.store.format import NO_DATA_CHIP, NOT_MAPPED, UNWRITTEN, safe_group_name
from resflow.store.reader import describe, format_description
from resflow.store.root import read_root_attrs
from resflow.store.shards import ShardWrite
from resflow.store.targets import OutputComplete
from resflow.store.writer import OutputStore

CONFIG = {"threshold": 0.5, "halo": 32, "gallery": None, "backend": "local"}
SHARD = 2
"""Shard edge in chips: the sample scenes (6 x 6 and 4 x 4 chips) get several shards each."""


def squares(ref: ChipRef) -> np.ndarray:
    """A deterministic uint8 probability: 30-pixel 'buildings' on a 60-pixel scene lattice.

    Built from in-scene coordinates, so buildings cross chip edges like real ones.
    """
    yy, xx = np.mgrid[ref.y0:ref.y0 + ref.height, ref.x0:ref.x0 + ref.width]
    building = ((yy % 60) >= 15) & ((yy % 60) < 45) & ((xx % 60) >= 15) & ((xx % 60) < 45)
    return np.where(building, 230, 20).astype(np.uint8)


def write_shard(store: OutputStore, archive: Archive, scene: str, shard: int,
                bucket: int = 0) -> list[ChipRef]:
    """Write one shard of ``squares``; returns its chips."""
    refs = archive.shard_chips(scene, shard, store.shard_chips)
    store.write_shard(scene, shard, refs, [squares(r) for r in refs],
                      [(squares(r) > 127).astype(np.uint8) for r in refs], [bucket] * len(refs))
    return refs


def write_all(store: OutputStore, archive: Archive) -> None:
    for scene, info in archive.scenes.items():
        for shard in range(shards_of(info, store.shard_chips)):
            write_shard(store, archive, scene, shard)


@pytest.fixture(scope="module")
def archive(sample_archive: Path) -> Archive:
    return Archive.open(sample_archive)


@pytest.fixture
def store(archive: Archive, tmp_path: Path) -> OutputStore:
    return OutputStore.create(tmp_path / "out.zarr", archive, run_config=CONFIG,
                              shard_chips=SHARD, bucket_models={0: "mono", 1: "bucket-1"})


def objects(store: OutputStore, scene: str, array: str) -> list[Path]:
    return sorted(p for p in (store.path / store.groups[scene] / array / "c").rglob("*")
                  if p.is_file())


def test_every_scene_has_the_archive_grid_crs_and_transform(store, archive):
    assert set(store.groups) == set(archive.scenes)
    for name in archive.scenes:  # the first shard of a scene brings its x and y
        write_shard(store, archive, name, 0)
    for name, info in archive.scenes.items():
        ds = xr.open_zarr(store.path, group=store.groups[name], mask_and_scale=False)
        for var in ("probability", "mask"):
            assert ds[var].shape == (info.height, info.width)
            assert ds[var].dtype == np.uint8
            assert ds[var].encoding["chunks"] == (info.chip, info.chip)
            assert ds[var].encoding["shards"] == (info.chip * SHARD, info.chip * SHARD)
        assert CRS.from_user_input(ds.rio.crs) == CRS.from_wkt(info.crs_wkt)
        assert ds.probability.rio.transform().almost_equals(Affine(*info.transform[:6]))
        assert ds.rio.shape == (info.height, info.width)
    assert store.bucket_models() == {0: "mono", 1: "bucket-1"}


def test_not_mapped_is_nan_and_probability_is_float_under_cf_decoding(store, archive):
    """Fill 255 means not mapped, never "no building": xarray's CF decoding gives NaN there
    and probabilities in [0, 1] elsewhere. The scene's first shard brings its coordinates."""
    scene = "sample_geotiff"
    refs = write_shard(store, archive, scene, 0)
    ds = xr.open_zarr(store.path, group=store.groups[scene])
    a, _, c, _, e, f = archive.scenes[scene].transform[:6]
    assert ds.x.values[0] == c + a / 2 and ds.y.values[-1] == f + e * (ds.sizes["y"] - 0.5)
    ref = refs[0]
    window = {"y": slice(ref.y0, ref.y0 + ref.height), "x": slice(ref.x0, ref.x0 + ref.width)}
    np.testing.assert_allclose(ds.probability.isel(window).values, squares(ref) / 254.0)
    assert np.isnan(ds.probability.values[-1, -1]) and np.isnan(ds.mask.values[-1, -1])
    assert set(np.unique(ds.mask.isel(window).values)) == {0.0, 1.0}


def test_a_shard_is_one_object_per_array(store, archive):
    scene = "sample_geotiff"
    info = archive.scenes[scene]
    last = shards_of(info, SHARD) - 1  # the bottom-right shard: the smallest window
    write_shard(store, archive, scene, last)
    for array in ("probability", "mask", "chip_bucket"):
        assert len(objects(store, scene, array)) == 1


def test_writing_a_shard_twice_leaves_identical_bytes(store, archive):
    scene = "ms1"
    write_shard(store, archive, scene, 1)
    first = {a: [p.read_bytes() for p in objects(store, scene, a)]
             for a in ("probability", "mask", "chip_bucket")}
    worker = pickle.loads(pickle.dumps(OutputStore.open(store.path)))  # as shipped to a worker
    write_shard(worker, archive, scene, 1)
    for array, data in first.items():
        assert [p.read_bytes() for p in objects(store, scene, array)] == data


def test_ledger_lists_exactly_the_chips_whose_shard_is_written(store, archive):
    written = {*write_shard(store, archive, "ms1", 0, bucket=1),
               *write_shard(store, archive, "sample_geotiff", 3)}
    assert store.done_chips() == {(r.scene, r.row, r.col) for r in written}
    assert store.done_shards("ms1") == {0} and store.done_shards("sample_geotiff") == {3}
    ledger = store.ledger("ms1")
    assert (ledger[:2, :2] == 1).all() and (ledger[2:, :] == UNWRITTEN).all()


def test_chips_without_data_and_failed_chips_are_marked_in_the_ledger(store, archive):
    """A chip without valid pixels is done and not mapped (-1); a chip that failed stays
    unwritten (-2), so its shard is not done and --resume maps it again."""
    refs = archive.shard_chips("ms1", 0, SHARD)
    buckets = [0, NO_DATA_CHIP, UNWRITTEN, 0]
    store.write_shard("ms1", 0, refs, [squares(r) for r in refs],
                      [(squares(r) > 127).astype(np.uint8) for r in refs], buckets)
    assert store.ledger("ms1")[:2, :2].ravel().tolist() == buckets
    assert store.done_shards("ms1") == set()
    probability = store.read_array("ms1", "probability")
    for ref, bucket in zip(refs, buckets, strict=True):
        window = probability[ref.y0:ref.y0 + ref.height, ref.x0:ref.x0 + ref.width]
        assert (window == NOT_MAPPED).all() == (bucket < 0)


def test_incomplete_store_never_reports_complete(store, archive):
    write_all(store, archive)
    total = sum(len(archive.chips([s])) for s in archive.scenes)
    refs = archive.shard_chips("ms1", 0, SHARD)
    store.write_shard("ms1", 0, refs, [squares(r) for r in refs],
                      [squares(r) for r in refs], [0, 0, 0, UNWRITTEN])
    desc = describe(store.path)
    assert not desc["complete"] and desc["summary"] is None
    assert desc["chips_done"] == total - 1 and desc["chips_total"] == total
    with pytest.raises(ResflowError, match=r"1 of \d+ chips are not written"):
        store.finalize({"summary": "never"})
    assert not describe(store.path)["complete"]
    assert "INCOMPLETE" in format_description(desc)
    write_shard(store, archive, "ms1", 0)
    store.finalize({"summary": "resflow: done", "chips": total})
    desc = describe(store.path)
    assert desc["complete"] and desc["percent"] == 100.0 and desc["summary"] == "resflow: done"
    assert json.loads((store.path / "run_report.json").read_text())["chips"] == total
    root = json.loads((store.path / "zarr.json").read_text())
    assert root["attributes"]["complete"] is True
    assert root["attributes"]["resflow_kind"] == "output"
    # finishing keeps the consolidated metadata readers open the groups with
    assert "ms1/probability" in root["consolidated_metadata"]["metadata"]


def test_metadata_is_written_in_bulk_with_every_group_consolidated(store, archive):
    root = json.loads((store.path / "zarr.json").read_text())
    consolidated = root["consolidated_metadata"]["metadata"]
    for group in store.groups.values():
        for array in ("probability", "mask", "chip_bucket", "x", "y", "spatial_ref"):
            assert f"{group}/{array}" in consolidated
    # metadata only: no data object at all until a shard is written
    assert not [p for p in store.path.rglob("*") if p.is_file() and "/c/" in str(p)]


def test_existing_output_is_refused_without_resume_or_overwrite(store, archive):
    refs = write_shard(store, archive, "ms1", 0)
    with pytest.raises(ResflowError) as err:
        OutputStore.create(store.path, archive, run_config=CONFIG)
    assert str(store.path) in str(err.value)
    assert "--resume" in str(err.value) and "--overwrite" in str(err.value)

    resumed = OutputStore.create(store.path, archive, resume=True, run_config=CONFIG,
                                 shard_chips=SHARD + 1)
    assert resumed.shard_chips == SHARD  # a resumed store keeps its own shards
    assert resumed.done_chips() == {(r.scene, r.row, r.col) for r in refs}
    with pytest.raises(ResflowError, match="threshold"):
        OutputStore.create(store.path, archive, resume=True,
                           run_config={**CONFIG, "threshold": 0.7})
    with pytest.raises(ResflowError, match=r"started with split_dip=0\.0"):  # split nothing
        OutputStore.create(store.path, archive, resume=True,
                           run_config={**CONFIG, "split_dip": 0.05})

    fresh = OutputStore.create(store.path, archive, overwrite=True, run_config=CONFIG)
    assert fresh.done_chips() == set()


def test_resume_over_a_complete_output_has_nothing_to_do(store, archive):
    write_all(store, archive)
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
    refs = archive.shard_chips("ms1", 0, SHARD)
    masks = [squares(r) for r in refs]
    with pytest.raises(ResflowError, match="expected uint8"):
        store.write_shard("ms1", 0, refs, [squares(r).astype(np.float32) for r in refs],
                          masks, [0] * 4)
    with pytest.raises(ResflowError, match="not in shard"):
        store.write_shard("ms1", 1, refs, [squares(r) for r in refs], masks, [0] * 4)
    shifted = replace(refs[0], y0=refs[0].y0 + 1, height=refs[0].height - 1)
    with pytest.raises(ResflowError, match="not chunk"):
        store.write_shard("ms1", 0, [shifted], [squares(shifted)], [squares(shifted)], [0])
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
    ref = next(r for r in hostile.chips() if r.scene == "../../evil" and r.row == r.col == 0)
    store.write_shard(ref.scene, 0, [ref], [squares(ref)], [squares(ref)], [0])
    for group in store.groups.values():
        assert "/" not in group and not group.startswith(".")
        assert (out / group).resolve().parent == out.resolve()
    assert len(set(store.groups.values())) == len(hostile.scenes)
    assert store.groups["run_report.json"] != "run_report.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nest"]
    # beside the store only its writer lock, held until the run ends
    assert sorted(p.name for p in (tmp_path / "nest").iterdir()) == ["out.zarr",
                                                                     "out.zarr.lock"]
    assert safe_group_name("../../evil") == "__.._evil"


def test_root_attributes_are_read_from_the_head_of_the_root_document(store, monkeypatch):
    """Workers read the root attributes without parsing every group's consolidated
    metadata; a root document laid out otherwise (consolidated metadata first) still reads."""
    import resflow.store.root as root_document

    root = json.loads((store.path / "zarr.json").read_text())
    monkeypatch.setattr(root_document, "ATTRIBUTES_PREFIX", 64)  # grown until they fit
    assert root_document.read_root_attrs(store.path) == root["attributes"]
    reordered = {"consolidated_metadata": root["consolidated_metadata"],
                 "zarr_format": 3, "node_type": "group", "attributes": root["attributes"]}
    (store.path / "zarr.json").write_text(json.dumps(reordered))
    assert root_document.read_root_attrs(store.path) == root["attributes"]
    assert OutputStore.open(store.path).groups == store.groups


def test_a_resumed_output_keeps_its_gallery_version(archive, tmp_path):
    """Same gallery location, other contents: resuming would mix two galleries' models."""
    path = tmp_path / "versioned.zarr"
    OutputStore.create(path, archive, run_config=CONFIG, gallery_version="a" * 64)
    with pytest.raises(ResflowError, match=r"another version of its gallery \(manifest sha256 "
                       r"aaaaaaaaaaaa, now bbbbbbbbbbbb\)") as err:
        OutputStore.create(path, archive, resume=True, run_config=CONFIG,
                           gallery_version="b" * 64)
    assert "--overwrite" in str(err.value)
    resumed = OutputStore.create(path, archive, resume=True, run_config=CONFIG,
                                 gallery_version="a" * 64)
    assert read_root_attrs(resumed.path)["gallery_version"] == "a" * 64


def test_shards_of_several_scenes_are_written_together_and_fail_alone(store, archive):
    """One call writes shards of two scenes; a shard that does not fit is refused alone, its
    ledger untouched, while the others are written and ledgered as one at a time would be."""
    def shard(scene: str, index: int, *, misplaced: bool = False) -> ShardWrite:
        refs = archive.shard_chips(scene, index, store.shard_chips)
        written = archive.shard_chips(scene, index + 1 if misplaced else index,
                                      store.shard_chips)
        return ShardWrite(scene, index, written, [squares(r) for r in refs],
                          [(squares(r) > 127).astype(np.uint8) for r in refs], [0] * len(refs))

    errors = store.write_shards([shard("ms1", 0), shard("ms1", 1, misplaced=True),
                                 shard("sample_geotiff", 0), shard("sample_geotiff", 2)])
    assert list(errors) == [1] and "not in shard" in str(errors[1])
    expected = {(r.scene, r.row, r.col) for scene, index in
                (("ms1", 0), ("sample_geotiff", 0), ("sample_geotiff", 2))
                for r in archive.shard_chips(scene, index, store.shard_chips)}
    assert store.done_chips() == expected
    one_by_one = OutputStore.create(store.path.with_name("alone.zarr"), archive,
                                    run_config=CONFIG, shard_chips=SHARD)
    for scene, index in (("ms1", 0), ("sample_geotiff", 0), ("sample_geotiff", 2)):
        write_shard(one_by_one, archive, scene, index)
    for scene in ("ms1", "sample_geotiff"):
        for name in ("probability", "mask", "chip_bucket", "x", "y"):
            assert np.array_equal(store.read_array(scene, name)[...],
                                  one_by_one.read_array(scene, name)[...], equal_nan=True)
