"""resflow.datasets.ChipDataset: chips as training reads them, batched by a DataLoader."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pyogrio.raw
import pytest
import rioxarray  # noqa: F401  (the .rio accessor the archive documents for its scenes)
import shapely
import torch
import xarray
import zarr
from affine import Affine
from pyproj import CRS
from torch.utils.data import DataLoader

from resflow.archive import Archive
from resflow.datasets import ChipDataset
from resflow.errors import InputError
from resflow.training.labels import load_labels
from resflow.windows import Window
from tests.fixtures_data import ATLANTA_LABELS

SCENE = "sample_geotiff"
"""The Atlanta scene of ``tiny_archive``: 900 x 900 pixels, 4 x 4 chips of 256."""
HALO = 24


@pytest.fixture(scope="module")
def chips(tiny_archive: Path) -> ChipDataset:
    return ChipDataset(tiny_archive, ATLANTA_LABELS, halo=HALO)


def batches(dataset: ChipDataset, workers: int) -> list[dict]:
    return list(DataLoader(dataset, batch_size=3, num_workers=workers))


def test_two_workers_yield_the_batches_of_one_process(chips):
    alone, shared = batches(chips, 0), batches(chips, 2)
    assert len(alone) == len(shared) == 6                      # 16 chips, 3 a batch
    for one, two in zip(alone, shared, strict=True):
        assert one.keys() == two.keys()
        for key, value in one.items():
            if isinstance(value, torch.Tensor):
                assert value.dtype == two[key].dtype and torch.equal(value, two[key]), key
            elif key == "transform":
                assert all(torch.equal(a, b) for a, b in zip(value, two[key], strict=True))
            else:
                assert value == two[key], key
    first = alone[0]
    assert first["image"].shape == (3, 3, 256 + 2 * HALO, 256 + 2 * HALO)
    assert first["image"].dtype == torch.float32 and first["mask"].dtype == torch.int32
    assert first["scene"] == [SCENE] * 3 and first["row"].tolist() == [0, 0, 0]
    assert first["col"].tolist() == [0, 1, 2]


def test_chips_fetched_together_are_the_chips_fetched_one_by_one(chips):
    """A batch (``__getitems__``, which DataLoader calls) reads neighbours as one slab."""
    indices = [5, 4, 0, 15, 1]  # out of order, neighbours and a chip apart
    for index, item in zip(indices, chips.__getitems__(indices), strict=True):
        for key, value in chips[index].items():
            assert (torch.equal(value, item[key]) if isinstance(value, torch.Tensor)
                    else value == item[key]), key


def test_a_pickled_dataset_reads_the_same_chips(chips):
    again = pickle.loads(pickle.dumps(chips))
    for index in (0, 15):
        for key, value in chips[index].items():
            assert (torch.equal(value, again[index][key]) if isinstance(value, torch.Tensor)
                    else value == again[index][key]), key


@pytest.mark.parametrize(("row", "col"), [(1, 2), (3, 3), (0, 0)])
def test_items_are_window_reads_harmonised(chips, tiny_archive, row, col):
    """Interior, bottom-right edge (132-pixel chip, reflected beyond) and top-left chips."""
    item = chips[row * 4 + col]
    assert (item["scene"], item["row"], item["col"]) == (SCENE, row, col)
    archive = Archive.open(tiny_archive)
    window = Window(SCENE, row, col, row * 256, col * 256, 1, 1, 256)
    direct = archive.read_window(window, HALO).harmonised()
    assert np.array_equal(item["image"].numpy(), direct.image)
    assert np.array_equal(item["valid"].numpy(), direct.valid)


def test_without_halo_items_are_training_reads(tiny_archive):
    """Training's decoder chips: no halo, the edge chip padded by reflection to 256."""
    archive = Archive.open(tiny_archive)
    plain = ChipDataset(archive)
    assert len(plain) == 16 and "mask" not in plain[0]
    edge = plain[15]
    assert edge["image"].shape == (3, 256, 256)
    assert edge["inside"][:132, :132].all() and not edge["inside"][132:].any()
    assert not edge["inside"][:, 132:].any()
    direct = archive.read_window(Window(SCENE, 3, 3, 768, 768, 1, 1, 256)).harmonised()
    assert np.array_equal(edge["image"].numpy(), direct.image)


def test_inside_marks_the_reflected_halo(chips):
    corner = chips[0]["inside"]
    assert not corner[:HALO].any() and not corner[:, :HALO].any()
    assert corner[HALO:, HALO:].all()
    assert chips[5]["inside"].all()                            # chip (1, 1): all in the scene


def test_labels_line_up_with_the_footprints(chips):
    """Every footprint's interior point falls on a building pixel of each chip holding it,
    and chips no footprint touches hold none."""
    labels = load_labels(ATLANTA_LABELS)
    footprints = [shapely.geometry.shape(g) for g in labels.geometries]
    held = 0
    for index in range(len(chips)):
        item = chips[index]
        to_pixel = ~Affine(*item["transform"])
        mask, inside = item["mask"].numpy(), item["inside"].numpy()
        size = mask.shape[0]
        touched = False
        for footprint in footprints:
            core = footprint.buffer(-0.5)                      # one pixel (0.5 m) in from edges
            if core.is_empty:
                continue
            x, y = to_pixel @ core.representative_point().coords[0]
            col, row = int(np.floor(x)), int(np.floor(y))
            if 0 <= row < size and 0 <= col < size and inside[row, col]:
                assert mask[row, col] > 0, (item["row"], item["col"], footprint.bounds)
                held += 1
            left, top = to_pixel @ (footprint.bounds[0], footprint.bounds[3])
            right, bottom = to_pixel @ (footprint.bounds[2], footprint.bounds[1])
            touched |= right > 0 and left < size and bottom > 0 and top < size
        if not touched:
            assert not mask.any(), (item["row"], item["col"])
    assert held > 20
    assert (chips[0]["mask"] > 0).any()                        # the sample's buildings at top-left


def test_transform_locates_the_chip_where_the_archive_says(chips, tiny_archive):
    scene = xarray.open_zarr(tiny_archive, group=f"scenes/{SCENE}")
    for index in (0, 6, 15):
        item = chips[index]
        y0, x0 = item["row"] * 256, item["col"] * 256
        # The chip's first pixel centre, HALO pixels in from the read's corner.
        x, y = Affine(*item["transform"]) @ (HALO + 0.5, HALO + 0.5)
        assert (x, y) == (float(scene.x[x0]), float(scene.y[y0]))
        assert CRS.from_wkt(item["crs"]) == CRS.from_user_input(scene.rio.crs)
        assert CRS.from_wkt(item["crs"]).to_epsg() == 32616


def test_chips_choose_which_and_in_which_order(tiny_archive):
    archive = Archive.open(tiny_archive)
    refs = archive.chips()
    picked = ChipDataset(archive, chips=[refs[9], (SCENE, 0, 1)])
    assert picked.chips == [refs[9], refs[1]]
    assert [(picked[i]["row"], picked[i]["col"]) for i in range(2)] == [(2, 1), (0, 1)]


def test_a_folder_that_is_no_archive_is_refused(tmp_path):
    with pytest.raises(InputError, match="the archive does not exist"):
        ChipDataset(tmp_path / "missing.zarr")
    zarr.open_group(tmp_path / "other.zarr", mode="w")
    with pytest.raises(InputError, match=r"other\.zarr: not a resflow imagery archive"):
        ChipDataset(tmp_path / "other.zarr")


def test_a_chip_outside_the_scene_is_refused(tiny_archive):
    with pytest.raises(InputError, match=r"chip \(4, 0\): outside the scene's grid of 4 x 4 "
                       r"chips of 256 pixels\. Fix: choose rows 0\.\.3 and columns 0\.\.3"):
        ChipDataset(tiny_archive, chips=[(SCENE, 0, 0), (SCENE, 4, 0)])
    with pytest.raises(InputError, match=r"scene 'nowhere': no mapped scene of that name\. "
                       r"Fix: choose among \['sample_geotiff'\]"):
        ChipDataset(tiny_archive, chips=[("nowhere", 0, 0)])


def test_labels_in_a_crs_without_a_way_to_the_scene_are_refused(tiny_archive, tmp_path):
    site = tmp_path / "site.gpkg"
    pyogrio.raw.write(site, shapely.to_wkb(np.array([shapely.box(10, 10, 20, 20)])), [], [],
                      geometry_type="Polygon", driver="GPKG",
                      crs='LOCAL_CS["site grid",UNIT["metre",1]]')
    with pytest.raises(InputError, match=r"site\.gpkg: the labels' CRS \(site grid\) cannot be "
                       r"reprojected to a scene's CRS \(WGS 84 / UTM zone 16N\).*Fix: .*"
                       r"ogr2ogr -t_srs EPSG:32616"):
        ChipDataset(tiny_archive, [site])
