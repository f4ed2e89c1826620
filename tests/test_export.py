"""Exports read back with the libraries users open them with: rasterio (and GDAL itself, the
library rasterio ships, for what rasterio does not expose) for COGs, geopandas and pyogrio
for footprints (GeoPackage, FlatGeobuf, GeoParquet and RFC 7946 GeoJSON), the ``resflow
export`` command, quicklooks.

Two stores: a real run of the sample archive on the local engine (``mapped``), and a
synthetic store (``blobs``) whose large, ragged buildings cross many chip and window edges
and which holds a chip without data, so not-mapped pixels are exercised too.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine
from PIL import Image
from pyproj import CRS
from shapely.geometry import box
from typer.testing import CliRunner

from resflow.archive import Archive
from resflow.cli import app
from resflow.config import SPLIT_DIP
from resflow.errors import ResflowError
from resflow.exports import export_cogs, export_footprints, export_run, quicklook
from resflow.exports.cog import MASK_COLOURS, aux_file
from resflow.exports.footprints import FOOTPRINT_COLUMNS, FOOTPRINT_LAYER, scene_buildings
from resflow.exports.settings import TILE_PX
from resflow.masks import building_mask, min_pixels
from resflow.store.format import NOT_MAPPED
from resflow.store.mask_rule import MaskRule
from resflow.store.reader import SceneMaps, scene_gsd_m
from resflow.store.writer import OutputStore
from tests.synthetic_stores import EMPTY_CHIP, MODELS, RUN, write_blobs

pytestmark = pytest.mark.usefixtures("no_s3_credentials")  # reads no bucket


@pytest.fixture(scope="module")
def mapped(mapped_samples: Path) -> OutputStore:
    return OutputStore.open(mapped_samples)


@pytest.fixture(scope="module")
def archive(sample_archive: Path) -> Archive:
    return Archive.open(sample_archive)


@pytest.fixture(scope="module")
def synthetic(archive: Archive, tmp_path_factory: pytest.TempPathFactory) -> OutputStore:
    return write_blobs(archive, tmp_path_factory.mktemp("blobs") / "blobs.zarr")


def store_digest(store: OutputStore) -> str:
    digest = hashlib.sha256()
    for scene in sorted(store.groups):
        for name in ("probability", "mask", "chip_bucket"):
            digest.update(np.ascontiguousarray(store.read_array(scene, name)[...]).tobytes())
    return digest.hexdigest()


def scene_maps(store: OutputStore) -> list[SceneMaps]:
    return [SceneMaps.open(store, scene, gsd) for scene, gsd in scene_gsd_m(store).items()]


def buildings(maps: SceneMaps, rule: MaskRule, tile_px: int) -> list[tuple]:
    return sorted((b.first, b.pixels, b.probability_mean, b.probability_max,
                   shapely.to_wkb(b.polygon)) for b in scene_buildings(maps, rule,
                                                                       tile_px=tile_px))


def gdal_categories(path: Path) -> tuple[list[str], int]:
    """Band 1's category names and raster attribute table rows, as GDAL (and so QGIS) reads
    them: through the GDAL library rasterio ships, since rasterio exposes neither."""
    libs = Path(rasterio.__file__).parent.parent / "rasterio.libs"
    gdal = ctypes.CDLL(str(next(libs.glob("libgdal*"))))
    gdal.GDALAllRegister()
    gdal.GDALOpen.restype = gdal.GDALGetRasterBand.restype = ctypes.c_void_p
    gdal.GDALGetDefaultRAT.restype = ctypes.c_void_p
    gdal.GDALOpen.argtypes = [ctypes.c_char_p, ctypes.c_int]
    gdal.GDALGetRasterBand.argtypes = [ctypes.c_void_p, ctypes.c_int]
    gdal.GDALGetRasterCategoryNames.restype = ctypes.POINTER(ctypes.c_char_p)
    gdal.GDALGetRasterCategoryNames.argtypes = gdal.GDALGetDefaultRAT.argtypes = \
        gdal.GDALRATGetRowCount.argtypes = gdal.GDALClose.argtypes = [ctypes.c_void_p]
    dataset = gdal.GDALOpen(str(path).encode(), 0)
    assert dataset, path
    try:
        band = gdal.GDALGetRasterBand(dataset, 1)
        # the table first: GeoTIFF bands read their .aux.xml lazily, on the first request
        # that needs it (gdalinfo's and QGIS's first requests do)
        table = gdal.GDALGetDefaultRAT(band)
        names = gdal.GDALGetRasterCategoryNames(band)
        categories = []
        while names and names[len(categories)]:
            categories.append(names[len(categories)].decode())
        return categories, gdal.GDALRATGetRowCount(table) if table else 0
    finally:
        gdal.GDALClose(dataset)


# --- COGs -------------------------------------------------------------------------------------

def test_cogs_are_georeferenced_tiled_and_hold_the_stored_values(synthetic, archive, tmp_path):
    paths = export_cogs(synthetic, tmp_path / "cogs")
    assert len(paths) == 2 * len(archive.scenes)
    for scene, info in archive.scenes.items():
        group = synthetic.groups[scene]
        for array in ("probability", "mask"):
            with rasterio.open(tmp_path / "cogs" / f"{group}_{array}.tif") as src:
                assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
                assert src.profile["tiled"] and src.block_shapes[0] == (256, 256)
                assert src.compression.name.lower() == "deflate"
                assert src.overviews(1), "at least one overview level"
                assert CRS.from_user_input(src.crs) == CRS.from_wkt(info.crs_wkt)
                assert src.transform.almost_equals(Affine(*info.transform[:6]))
                assert (src.height, src.width) == (info.height, info.width)
                stored = synthetic.read_array(scene, array)[...]
                np.testing.assert_array_equal(src.read(1), stored)
                assert src.nodata == NOT_MAPPED
                r, c = EMPTY_CHIP
                assert (src.read(1)[r * info.chip:(r + 1) * info.chip,
                                    c * info.chip:(c + 1) * info.chip] == NOT_MAPPED).all()


def test_cog_metadata_says_how_to_read_probability_and_mask(synthetic, tmp_path):
    export_cogs(synthetic, tmp_path)
    group = synthetic.groups["sample_geotiff"]
    with rasterio.open(tmp_path / f"{group}_probability.tif") as src:
        assert src.scales == (pytest.approx(1 / 254),) and src.offsets == (0.0,)
        assert src.read(1, masked=True).max() * src.scales[0] == pytest.approx(1.0)
        ramp = src.colormap(1)
        assert ramp[0] != ramp[127] != ramp[254] and ramp[NOT_MAPPED][3] == 0
        assert ramp[254][0] > ramp[127][0] > ramp[0][0]                # a ramp, low to high
        # the colour table does not bend averaged overviews: within rounding of the mean
        step = src.overviews(1)[0]
        h, w = src.height // step, src.width // step
        blocks = src.read(1)[:h * step, :w * step].astype(float).reshape(h, step, w, step)
        whole = (blocks != NOT_MAPPED).all(axis=(1, 3))
        overview = src.read(1, out_shape=(h, w)).astype(float)
        assert np.abs(overview - blocks.mean(axis=(1, 3)))[whole].max() <= 0.5
    with rasterio.open(tmp_path / f"{group}_mask.tif") as src:
        colours = src.colormap(1)
        assert colours[1] == MASK_COLOURS[1] and colours[1][0] > 200  # buildings red
        assert colours[0][:3] == (0, 0, 0)                            # background dark
        values = src.read(1)
        assert src.nodata == NOT_MAPPED and src.count == 2
        assert src.colorinterp[1] == rasterio.enums.ColorInterp.alpha
        # over imagery only buildings cover it: background and not mapped are transparent
        np.testing.assert_array_equal(src.read(2), np.where(values == 1, 255, 0))
        np.testing.assert_array_equal(src.read_masks(1) == 0, values == NOT_MAPPED)
        assert (values == 0).any() and (values == NOT_MAPPED).any()
        assert src.tags(1)["CLASS_1"] == "building"
        overview = src.read(1, out_shape=(src.height // 2, src.width // 2))
        assert set(np.unique(overview).tolist()) <= {0, 1, NOT_MAPPED}  # sampled, not averaged
    categories, rows = gdal_categories(tmp_path / f"{group}_mask.tif")
    assert categories == ["background", "building"] and rows == 2
    assert aux_file(tmp_path / f"{group}_mask.tif").is_file()


def test_rethresholded_mask_is_the_whole_scene_mask_and_leaves_the_store_alone(
        mapped, tmp_path):
    before = store_digest(mapped)
    for threshold in (0.5, 0.7):
        export_cogs(mapped, tmp_path / str(threshold), threshold=threshold)
        for maps in scene_maps(mapped):
            stored = maps.probability[...]
            cut = np.where(stored == NOT_MAPPED, 0, stored)
            expected = building_mask(cut, threshold * 254, min_pixels(8.0, maps.gsd_m),
                                     reflect=RUN["halo"],
                                     split=SPLIT_DIP * 254).astype(np.uint8)
            expected[stored == NOT_MAPPED] = NOT_MAPPED
            name = f"{mapped.groups[maps.scene]}_mask.tif"
            with rasterio.open(tmp_path / str(threshold) / name) as src:
                mask = src.read(1)
                assert src.tags()["threshold"] == str(threshold)
            np.testing.assert_array_equal(mask, expected)
            if threshold == 0.5:  # the run judged specks by each chip's own halo predictions
                assert np.mean(mask != maps.mask[...]) < 0.001
    assert store_digest(mapped) == before


def test_the_run_splits_touching_roofs_as_the_scene_wide_cut_does(mapped):
    """The run cuts its blobs where the probability dips (the default ``split_dip``): its
    mask is far closer to the scene-wide split mask than to the unsplit one (chips split
    with their halo, so a few cuts near chip borders differ)."""
    cut_pixels = 0
    for maps in scene_maps(mapped):
        stored = maps.probability[...]
        cut = np.where(stored == NOT_MAPPED, 0, stored)
        rule = (0.5 * 254, min_pixels(8.0, maps.gsd_m))
        whole = building_mask(cut, *rule, reflect=RUN["halo"])
        split = building_mask(cut, *rule, reflect=RUN["halo"], split=SPLIT_DIP * 254)
        cut_pixels += int((whole & ~split).sum())
        run = maps.mask[...] == 1
        assert np.mean(run != split) <= np.mean(run != whole) / 2
    assert cut_pixels > 0, "the samples hold touching roofs to split"


# --- footprints -------------------------------------------------------------------------------

@pytest.mark.slow  # vectorises whole scenes window by window and at once
@pytest.mark.parametrize("rule", [MaskRule(), MaskRule(0.6, 89, 32)], ids=["mask", "recut"])
def test_small_windows_give_the_polygons_of_whole_scene_vectorisation(synthetic, mapped, rule):
    for store in (synthetic, mapped):
        for maps in scene_maps(store):
            whole = buildings(maps, rule, 10 ** 6)
            assert buildings(maps, rule, maps.chip) == whole
            if rule.threshold is None:
                assert sum(b[1] for b in whole) == np.count_nonzero(maps.mask[...] == 1)
    crossing = [b for maps in scene_maps(synthetic) for b in buildings(maps, rule, 10 ** 6)
                if shapely.from_wkb(b[4]).bounds[2] - shapely.from_wkb(b[4]).bounds[0] > 512]
    assert crossing, "some buildings span several windows"


def test_footprints_are_one_geoparquet_in_wgs84_with_their_properties(synthetic, tmp_path):
    (path,) = export_footprints(synthetic, tmp_path / "buildings.parquet")
    frame = gpd.read_parquet(path)
    assert CRS.from_user_input(frame.crs) == CRS.from_epsg(4326)
    assert tuple(frame.columns[:-1]) == FOOTPRINT_COLUMNS and frame.geometry.is_valid.all()
    assert set(frame.scene) == set(synthetic.groups)
    gsd = scene_gsd_m(synthetic)
    for scene, rows in frame.groupby("scene"):
        maps = SceneMaps.open(synthetic, scene, gsd[scene])
        # polygons hold their pixels: in the scene CRS, area / pixel area x gsd^2 = area_m2
        in_crs = rows.to_crs(CRS.from_wkt(maps.crs_wkt))
        pixel_area = abs(maps.transform.determinant)
        np.testing.assert_allclose(in_crs.area / pixel_area * gsd[scene] ** 2, rows.area_m2,
                                   rtol=1e-6)
        assert (rows.area_m2 >= RUN["min_building_m2"]).all()
        assert ((rows.prob_mean > 0.5) & (rows.prob_mean <= rows.prob_max)
                & (rows.prob_max <= 1)).all()
        height, width = maps.shape
        corners = [maps.transform @ (0, 0), maps.transform @ (width, height)]
        extent = gpd.GeoSeries([box(*corners[0], *corners[1])], crs=in_crs.crs)
        assert extent.buffer(1e-3).iloc[0].contains(in_crs.union_all())
        for row in rows.itertuples():
            chip_row, chip_col = map(int, row.chip.split("_"))
            assert (chip_row, chip_col) != EMPTY_CHIP
            assert row.bucket == (chip_row + chip_col) % 2
            assert row.model == MODELS[row.bucket]


def test_the_runs_chips_name_their_bucket_and_model(mapped, tmp_path):
    (path,) = export_footprints(mapped, tmp_path / "buildings.parquet")
    frame = gpd.read_parquet(path)
    assert len(frame) > 0
    models = mapped.bucket_models()
    for scene, rows in frame.groupby("scene"):
        ledger = mapped.read_array(scene, "chip_bucket")[...]
        for row in rows.itertuples():
            chip_row, chip_col = map(int, row.chip.split("_"))
            assert row.bucket == ledger[chip_row, chip_col] >= 0
            assert row.model == models[row.bucket]


@pytest.mark.slow
def test_geojson_is_rfc7946_longitude_first_with_the_same_buildings(synthetic, tmp_path):
    export_footprints(synthetic, tmp_path / "b.parquet")
    (path,) = export_footprints(synthetic, tmp_path / "b.geojson")
    document = json.loads(path.read_text())
    assert "crs" not in document
    parquet, geojson = gpd.read_parquet(tmp_path / "b.parquet"), gpd.read_file(path)
    assert len(geojson) == len(parquet)
    atlanta = geojson[geojson.scene == "sample_geotiff"].total_bounds
    assert -85 < atlanta[0] < atlanta[2] < -84 and 33 < atlanta[1] < atlanta[3] < 34
    ours, theirs = geojson.geometry.values, parquet.geometry.values
    np.testing.assert_allclose(shapely.bounds(ours), shapely.bounds(theirs), atol=1e-7)
    np.testing.assert_allclose(shapely.area(ours), shapely.area(theirs), rtol=1e-2)
    forced = export_footprints(synthetic, tmp_path / "b.txt.parquet", format="geojson")
    assert "FeatureCollection" in forced[0].read_text()[:100]


def in_building_order(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Rows sorted by building: a FlatGeobuf's spatial index stores them in its own order."""
    centre = shapely.get_coordinates(shapely.centroid(frame.geometry.values)).round(6)
    key = frame.assign(_x=centre[:, 0], _y=centre[:, 1])
    return frame.loc[key.sort_values(["scene", "chip", "_x", "_y"]).index].reset_index(drop=True)


@pytest.mark.parametrize("name", ["b.gpkg", "b.fgb", "b.geojson"])
def test_gdal_formats_hold_the_geoparquets_buildings_layer_and_crs(synthetic, tmp_path, name):
    parquet = in_building_order(gpd.read_parquet(
        export_footprints(synthetic, tmp_path / "b.parquet")[0]))
    (path,) = export_footprints(synthetic, tmp_path / name)
    assert pyogrio.list_layers(path)[:, 0].tolist() == [FOOTPRINT_LAYER]
    for frame in (pyogrio.read_dataframe(path), gpd.read_file(path, layer=FOOTPRINT_LAYER)):
        frame = in_building_order(frame)
        assert CRS.from_user_input(frame.crs) == CRS.from_user_input(parquet.crs)
        assert list(frame.columns) == list(parquet.columns) and len(frame) == len(parquet)
        for column in ("scene", "chip", "bucket", "model"):  # int16 comes back wider
            assert frame[column].tolist() == parquet[column].tolist(), column
        for column in ("area_m2", "prob_mean", "prob_max"):
            np.testing.assert_allclose(frame[column], parquet[column], rtol=1e-12)
        ours, theirs = frame.geometry.values, parquet.geometry.values
        if name.endswith(".geojson"):  # RFC 7946: 7 decimals, rings re-wound
            np.testing.assert_allclose(shapely.bounds(ours), shapely.bounds(theirs), atol=1e-7)
        else:
            assert shapely.equals_exact(ours, theirs, tolerance=0).all()


def test_min_building_m2_and_simplification(synthetic, tmp_path):
    exact = gpd.read_parquet(export_footprints(synthetic, tmp_path / "a.parquet")[0])
    large = gpd.read_parquet(export_footprints(synthetic, tmp_path / "b.parquet",
                                               min_building_m2=100)[0])
    assert (large.area_m2 >= 100).all() and len(large) == (exact.area_m2 >= 100).sum()
    simple = gpd.read_parquet(export_footprints(synthetic, tmp_path / "c.parquet",
                                                simplify_m=0.6)[0])
    assert len(simple) == len(exact) and simple.geometry.is_valid.all()
    assert shapely.get_num_coordinates(simple.geometry.values).sum() < \
        0.6 * shapely.get_num_coordinates(exact.geometry.values).sum()
    pd_equal = simple.drop(columns="geometry").equals(exact.drop(columns="geometry"))
    assert pd_equal, "areas and probabilities are the pixels', not the simplified outline's"


def test_rethresholded_footprints_hold_only_pixels_above_the_threshold(mapped, tmp_path):
    run = gpd.read_parquet(export_footprints(mapped, tmp_path / "run.parquet")[0])
    high = gpd.read_parquet(export_footprints(mapped, tmp_path / "hi.parquet",
                                              threshold=0.8)[0])
    assert len(high) > 0 and high.area_m2.sum() < run.area_m2.sum()
    assert (high.prob_mean > 0.8).all()


# --- export_run, refusals and leftovers --------------------------------------------------------

def test_export_run_writes_every_output_and_leaves_no_partial_file(synthetic, tmp_path):
    written = export_run(synthetic, cog_dir=tmp_path / "cog", footprints=tmp_path / "b.geojson",
                         stac_dir=tmp_path / "stac", threshold=0.6)
    assert all(p.is_file() for p in written)
    assert written[-1] == tmp_path / "stac" / "collection.json"
    assert not list(tmp_path.rglob("*.partial")) and not list(tmp_path.rglob(".*"))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({}, "no output was asked for"),
    ({"footprints": "b.shp"}, "cannot be written as '.shp'"),
    ({"footprints": "buildings"}, r"name the file \.gpkg"),
    ({"stac_dir": "s", "threshold": 1.5}, "field 'threshold': Input should be less than 1"),
    ({"footprints": "b.parquet", "min_building_m2": -1},
     "field 'min_building_m2': Input should be greater than or equal to 0"),
])
def test_bad_requests_are_refused_before_anything_is_written(synthetic, tmp_path, kwargs,
                                                              message):
    paths = {k: tmp_path / v if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(ResflowError, match=message):
        export_run(synthetic, **paths)
    assert not any(tmp_path.iterdir())


def test_a_folder_in_the_way_is_refused_and_nothing_is_left(synthetic, tmp_path):
    (tmp_path / "b.parquet").mkdir()
    with pytest.raises(ResflowError, match="folder is in the way"):
        export_footprints(synthetic, tmp_path / "b.parquet")
    assert [p.name for p in tmp_path.iterdir()] == ["b.parquet"]


def test_incomplete_outputs_are_not_exported(archive, tmp_path):
    store = OutputStore.create(tmp_path / "partial.zarr", archive, run_config=RUN)
    with pytest.raises(ResflowError, match=r"not complete.*--resume"):
        export_run(store, cog_dir=tmp_path / "cogs")


def test_export_command_writes_and_refuses(synthetic, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(synthetic.path), "--footprints",
                                 str(tmp_path / "b.parquet"), "--stac-dir", str(tmp_path / "stac"),
                                 "--threshold", "0.6", "--min-building-m2", "20",
                                 "--simplify-m", "0.3"])
    assert result.exit_code == 0, result.output
    assert f"wrote {tmp_path / 'b.parquet'}" in result.output
    assert (gpd.read_parquet(tmp_path / "b.parquet").area_m2 >= 20).all()
    refused = runner.invoke(app, ["export", str(synthetic.path)])
    assert refused.exit_code == 2 and "--cog-dir DIR" in refused.output


@pytest.mark.slow
def test_export_command_refuses_to_replace_files_unless_overwrite(synthetic, tmp_path):
    runner = CliRunner()
    (tmp_path / "b.gpkg").write_bytes(b"mine")
    refused = runner.invoke(app, ["export", str(synthetic.path), "--footprints",
                                  str(tmp_path / "b.gpkg"), "--cog-dir", str(tmp_path / "cog"),
                                  "--stac-dir", str(tmp_path / "stac")])
    assert refused.exit_code == 2
    assert f"{tmp_path / 'b.gpkg'}: the file already exists" in refused.output
    assert "--overwrite" in refused.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.gpkg"], "nothing written"
    assert (tmp_path / "b.gpkg").read_bytes() == b"mine"
    cog = ["export", str(synthetic.path), "--cog-dir", str(tmp_path / "cog")]
    assert runner.invoke(app, cog).exit_code == 0
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "cog").iterdir()}
    refused = runner.invoke(app, cog)
    assert refused.exit_code == 2 and "_probability.tif: the file already exists" in \
        refused.output and "--overwrite" in refused.output
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cog").iterdir()} == stamps
    replaced = runner.invoke(app, [*cog, "--footprints", str(tmp_path / "b.gpkg"),
                                   "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert len(gpd.read_file(tmp_path / "b.gpkg")) > 0


@pytest.mark.parametrize("where", ["read-only folder", "sysfs"])
def test_an_unwritable_folder_is_one_clear_line(synthetic, tmp_path, where):
    if where == "read-only folder":
        if os.geteuid() == 0:
            pytest.skip("root writes into a folder whatever its permissions")
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o555)
    else:
        if not sys.platform.startswith("linux"):
            pytest.skip("sysfs is Linux's")
        folder = Path("/sys/resflow-export")  # no file can be made there, even by root
    result = CliRunner().invoke(app, ["export", str(synthetic.path), "--footprints",
                                      str(folder / "b.gpkg"), "--cog-dir", str(folder / "cog")])
    assert result.exit_code == 2, result.output
    assert "the output folder cannot be written" in result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, OSError)
    assert not list(folder.glob("*")) if folder.exists() else True


# --- quicklook ---------------------------------------------------------------------------------

def test_quicklook_png_has_the_requested_size(mapped, archive, tmp_path):
    scene = "sample_geotiff"
    info = archive.scenes[scene]
    png = quicklook(mapped, archive, scene, tmp_path / "ql.png", width_px=600)
    with Image.open(png) as image:
        assert image.size == (600, round(600 * info.height / info.width))


def test_windows_default_to_whole_chips(synthetic):
    for maps in scene_maps(synthetic):
        assert maps.tile(TILE_PX) % maps.chip == 0 and maps.tile(1) == maps.chip
