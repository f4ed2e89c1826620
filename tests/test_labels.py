"""Labels in any CRS, polygons or masks, land on the same scene pixels."""

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform_geom

from resflow.errors import InputError
from resflow.training.labels import load_labels, rasterise

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
