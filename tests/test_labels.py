"""Labels in any CRS and any OGR vector format, polygons or masks, land on the same pixels."""

import json
from pathlib import Path

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import shapely
from rasterio.warp import transform_geom

from resflow.errors import InputError
from resflow.training.labels import load_labels, rasterise

pytestmark = pytest.mark.usefixtures("no_s3_credentials")  # reads no bucket

ATLANTA = Path(__file__).parents[1] / "resflow/samples/data/spacenet-atlanta"
GEOJSON = ATLANTA / "geotiff_labels.geojson"


@pytest.fixture(scope="module")
def grid():
    with rasterio.open(ATLANTA / "sample_geotiff.tif") as src:
        return src.crs.to_wkt(), tuple(src.transform)[:6], src.height, src.width


def test_atlanta_polygons_burn_with_one_id_per_building(grid):
    wkt, transform, h, w = grid
    labels = load_labels(GEOJSON)
    assert labels.covers(wkt, transform, h, w)
    ids = rasterise([labels], wkt, transform, (0, 0, h, w))
    assert ids.shape == (900, 900)
    assert 40 <= len(np.unique(ids)) - 1 <= 43          # a sliver may burn no pixel centre
    assert 0.02 < (ids > 0).mean() < 0.5


def test_window_is_the_same_pixels_as_the_full_scene(grid):
    wkt, transform, h, w = grid
    labels = load_labels(GEOJSON)
    full = rasterise([labels], wkt, transform, (0, 0, h, w)) > 0
    window = rasterise([labels], wkt, transform, (256, 512, 256, 256)) > 0
    np.testing.assert_array_equal(window, full[256:512, 512:768])


def test_labels_in_wgs84_land_on_the_same_pixels(grid, tmp_path):
    wkt, transform, h, w = grid
    doc = json.loads(GEOJSON.read_text())
    for feature in doc["features"]:
        feature["geometry"] = transform_geom("EPSG:32616", "EPSG:4326", feature["geometry"])
    del doc["crs"]                                        # RFC 7946: no crs member = WGS 84
    wgs84 = tmp_path / "labels_wgs84.geojson"
    wgs84.write_text(json.dumps(doc))
    native = rasterise([load_labels(GEOJSON)], wkt, transform, (0, 0, h, w)) > 0
    moved = rasterise([load_labels(wgs84)], wkt, transform, (0, 0, h, w)) > 0
    assert load_labels(wgs84).crs.to_epsg() == 4326
    assert np.count_nonzero(native != moved) <= 0.001 * native.size


def test_georeferenced_mask_lands_on_its_pixels(grid, tmp_path):
    # The bundled sample_fp_mask.tif does not match these polygons (it is another tile's
    # mask), so the mask is made from the polygons and must come back pixel for pixel.
    wkt, transform, h, w = grid
    from_polygons = rasterise([load_labels(GEOJSON)], wkt, transform, (0, 0, h, w)) > 0
    path = tmp_path / "mask.tif"
    with rasterio.open(path, "w", driver="GTiff", height=h, width=w, count=1, dtype="uint8",
                       crs=wkt, transform=rasterio.Affine(*transform)) as dst:
        dst.write(from_polygons.astype("uint8") * 255, 1)
    window = rasterise([load_labels(path)], wkt, transform, (512, 256, 256, 256))
    np.testing.assert_array_equal(window > 0, from_polygons[512:768, 256:512])


def test_mask_without_crs_is_refused_with_a_fix():
    with pytest.warns(rasterio.errors.NotGeoreferencedWarning), \
            pytest.raises(InputError, match="georeference it"):
        load_labels(ATLANTA / "sample_fp_mask.tif")


def test_missing_and_empty_files_are_refused(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_labels(tmp_path / "nope.geojson")
    empty = tmp_path / "empty.geojson"
    empty.write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.raises(InputError, match="no Polygon"):
        load_labels(empty)


def test_labels_elsewhere_do_not_cover_the_scene(grid):
    wkt, transform, h, w = grid
    far = (transform[0], 0.0, transform[2] + 1e6, 0.0, transform[4], transform[5])
    assert not load_labels(GEOJSON).covers(wkt, far, h, w)


def _write(path: Path, geometries: list, crs: str | None = "EPSG:32616", layer: str | None = None,
           geometry_type: str = "Polygon", append: bool = False) -> Path:
    """Write shapely geometries with pyogrio (GDAL/OGR) in the driver of ``path``'s suffix."""
    driver = {".gpkg": "GPKG", ".shp": "ESRI Shapefile", ".fgb": "FlatGeobuf"}[path.suffix]
    pyogrio.raw.write(path, shapely.to_wkb(geometries), field_data=[], fields=[], layer=layer,
                      geometry_type=geometry_type, crs=crs, driver=driver, append=append)
    return path


def _atlanta_geometries() -> list:
    return [shapely.geometry.shape(f["geometry"])
            for f in json.loads(GEOJSON.read_text())["features"]]


@pytest.mark.parametrize("suffix", [".gpkg", ".shp", ".fgb"])
def test_any_ogr_vector_format_lands_on_the_same_pixels(grid, tmp_path, suffix):
    wkt, transform, h, w = grid
    path = _write(tmp_path / f"atlanta{suffix}", _atlanta_geometries())
    labels = load_labels(path)
    assert labels.kind == "vector" and labels.crs.to_epsg() == 32616
    assert len(labels.geometries) == 43 and labels.record()["buildings"] == 43
    ids = rasterise([labels], wkt, transform, (0, 0, h, w))
    reference = rasterise([load_labels(GEOJSON)], wkt, transform, (0, 0, h, w))
    np.testing.assert_array_equal(ids > 0, reference > 0)
    # FlatGeobuf stores features in spatial-index order, so ids may be permuted: each
    # building must still be one id in both, pixel for pixel.
    pairs = np.unique(np.stack([ids[ids > 0], reference[ids > 0]]), axis=1)
    assert pairs.shape[1] == len(np.unique(ids)) - 1 == len(np.unique(reference)) - 1


def test_geopackage_layers_pick_the_one_polygon_layer_or_refuse(tmp_path):
    path = _write(tmp_path / "two.gpkg", [shapely.Point(733700, 3725000)], layer="trees",
                  geometry_type="Point")
    _write(path, _atlanta_geometries(), layer="buildings", append=True)
    assert len(load_labels(path).geometries) == 43
    _write(path, _atlanta_geometries()[:2], layer="parcels", append=True)
    with pytest.raises(InputError, match=r"building layer is ambiguous.*ogr2ogr"):
        load_labels(path)


def test_invalid_polygons_are_repaired_and_empty_ones_skipped(tmp_path):
    bowtie = shapely.Polygon([(733600, 3725100), (733610, 3725110), (733610, 3725100),
                              (733600, 3725110)])
    square = shapely.box(733620, 3725100, 733630, 3725110)
    assert not bowtie.is_valid
    labels = load_labels(_write(tmp_path / "messy.gpkg", [
        bowtie, square, shapely.Polygon(), shapely.LineString([(0, 0), (1, 1)]), None],
        geometry_type="Unknown"))
    assert (len(labels.geometries), labels.repaired, labels.skipped) == (2, 1, 3)
    repaired = shapely.geometry.shape(labels.geometries[0])
    assert repaired.is_valid and repaired.area == pytest.approx(50.0)  # two 25 m^2 triangles
    with pytest.raises(InputError, match=r"no Polygon or MultiPolygon.*\(3 features"):
        load_labels(_write(tmp_path / "hollow.gpkg", [shapely.Polygon(), None, shapely.Point(1, 1)],
                           geometry_type="Unknown"))


def test_unknown_or_missing_crs_is_refused(tmp_path):
    with pytest.warns(UserWarning, match="'crs' was not provided"):
        path = _write(tmp_path / "no_prj.shp", _atlanta_geometries(), crs=None)
    with pytest.raises(InputError, match=r"no_prj.shp: layer 'no_prj' has no CRS.*\.prj"):
        load_labels(path)
    doc = json.loads(GEOJSON.read_text())
    doc["crs"]["properties"]["name"] = "urn:ogc:def:crs:EPSG::999999"
    (tmp_path / "bogus.geojson").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="unknown CRS 'urn:ogc:def:crs:EPSG::999999'"):
        load_labels(tmp_path / "bogus.geojson")
    del doc["crs"]                                     # UTM metres read as WGS 84 degrees
    (tmp_path / "no_crs.geojson").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="cannot be longitude/latitude"):
        load_labels(tmp_path / "no_crs.geojson")


def test_unreadable_files_are_refused(tmp_path):
    (tmp_path / "broken.geojson").write_text('{"type": "FeatureCollection", ')
    with pytest.raises(InputError, match="not valid GeoJSON"):
        load_labels(tmp_path / "broken.geojson")
    (tmp_path / "notes.txt").write_text("buildings, somewhere\n")
    with pytest.raises(InputError, match="neither a vector file OGR reads nor a raster"):
        load_labels(tmp_path / "notes.txt")
