"""Exports read back with GDAL: COG layout and georeferencing, footprints, quicklook PNG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image
from pyproj import CRS
from shapely.geometry import box, shape

from resflow.archive import Archive
from resflow.errors import ResflowError
from resflow.export import export_cogs, export_footprints, quicklook
from resflow.outputs import OutputStore
from tests.test_outputs import CONFIG, squares


@pytest.fixture(scope="module")
def archive(sample_archive: Path) -> Archive:
    return Archive.open(sample_archive)


@pytest.fixture(scope="module")
def complete_store(archive: Archive, tmp_path_factory: pytest.TempPathFactory) -> OutputStore:
    store = OutputStore.create(tmp_path_factory.mktemp("export") / "out.zarr", archive,
                               run_config=CONFIG)
    for ref in archive.chips():
        store.write_chip(ref, squares(ref), squares(ref) > 127)
    store.finalize({"summary": "test run"})
    return store


def test_cogs_are_tiled_with_overviews_and_georeferenced_like_the_scene(
        complete_store, archive, tmp_path):
    paths = export_cogs(complete_store, tmp_path / "cogs")
    assert len(paths) == 2 * len(archive.scenes)
    for scene, info in archive.scenes.items():
        group = complete_store.groups[scene]
        for array in ("probability", "mask"):
            with rasterio.open(tmp_path / "cogs" / f"{group}_{array}.tif") as src:
                assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
                assert src.profile["tiled"] and src.block_shapes[0] == (256, 256)
                assert src.compression.name.lower() == "deflate"
                assert src.overviews(1), "at least one overview level"
                assert CRS.from_user_input(src.crs) == CRS.from_wkt(info.crs_wkt)
                assert src.transform.almost_equals(Affine(*info.transform[:6]))
                assert (src.height, src.width) == (info.height, info.width)
                expected = complete_store.read_array(scene, array)[...]
                np.testing.assert_array_equal(src.read(1), expected)
                if array == "mask":  # overviews sampled, not averaged: still 0/1
                    overview = src.read(1, out_shape=(src.height // 2, src.width // 2))
                    assert set(np.unique(overview).tolist()) == {0, 1}


def test_footprints_are_in_the_scene_crs_and_inside_the_scene(complete_store, archive, tmp_path):
    paths = export_footprints(complete_store, tmp_path / "buildings.geojson")
    crss = {CRS.from_wkt(info.crs_wkt) for info in archive.scenes.values()}
    assert len(paths) == len(crss)  # one file per CRS of the mapped scenes
    seen = set()
    for path in paths:
        collection = json.loads(path.read_text())
        crs = CRS.from_user_input(collection["crs"]["properties"]["name"])
        for feature in collection["features"]:
            scene = feature["properties"]["scene"]
            info = archive.scenes[scene]
            assert crs.equals(CRS.from_wkt(info.crs_wkt), ignore_axis_order=True)
            t = Affine(*info.transform[:6])
            (x0, y0), (x1, y1) = t @ (0, 0), t @ (info.width, info.height)
            bounds = box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
            polygon = shape(feature["geometry"])
            assert polygon.is_valid and bounds.buffer(1e-9).contains(polygon)
            assert feature["properties"]["area_px"] >= 8
            seen.add(scene)
    assert seen == set(archive.scenes)


def test_footprints_of_one_crs_go_to_the_named_file(complete_store, archive, tmp_path):
    scene = "ms1"
    one = OutputStore(complete_store.path, {scene: complete_store.groups[scene]})
    target = tmp_path / "ms1.geojson"
    assert export_footprints(one, target) == [target]
    features = json.loads(target.read_text())["features"]
    # 30 x 30 pixel squares on a 60-pixel lattice: n^2 whole ones, cut ones on two edges
    n = (archive.scenes[scene].width - 45) // 60 + 1
    assert n**2 <= len(features) <= (n + 1) ** 2
    assert sum(f["properties"]["area_px"] == 900 for f in features) == n**2
    assert all(f["properties"]["area_px"] <= 900 for f in features)


def test_quicklook_png_has_the_requested_size(complete_store, archive, tmp_path):
    scene = "sample_geotiff"
    info = archive.scenes[scene]
    png = quicklook(complete_store, archive, scene, tmp_path / "ql.png", width_px=600)
    with Image.open(png) as image:
        assert image.size == (600, round(600 * info.height / info.width))


def test_incomplete_outputs_are_not_exported(archive, tmp_path):
    store = OutputStore.create(tmp_path / "partial.zarr", archive, run_config=CONFIG)
    with pytest.raises(ResflowError, match="not complete"):
        export_cogs(store, tmp_path / "cogs")
