"""STAC out and in: a real run exported as a STAC Collection and read back with pystac (and
its assets opened with xarray, rasterio and geopandas), and the GeoTIFFs a STAC file offers
for ingest.

pystac validates against the core STAC schemas it ships, offline; each extension's schema is
fetched over the network, which the tests never use, so extension fields are checked one by
one instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import geopandas as gpd
import numpy as np
import pystac
import pytest
import rasterio
import shapely
import xarray as xr
from pyproj import CRS
from pystac.extensions.classification import ClassificationExtension
from pystac.extensions.file import FileExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension
from pystac.extensions.xarray_assets import XarrayAssetsExtension
from pystac.validation import validate_dict
from shapely.geometry import shape

from resflow.archive import Archive
from resflow.catalogues import HrefPolicy, stac_sources
from resflow.errors import InputError
from resflow.exports import export_run, write_collection
from resflow.gallery import DEFAULT_PATH
from resflow.ingestion import ingest
from resflow.samples import sample_path
from resflow.store.format import NOT_MAPPED
from resflow.store.writer import OutputStore
from tests.fixtures_data import crop_raster
from tests.synthetic_stores import write_blobs

EXTENSIONS = ("projection", "raster", "xarray-assets", "classification")


@pytest.fixture(scope="module")
def exported(mapped_samples: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One output folder, as ``resflow predict`` makes: a copy of the run's store
    (``maps.zarr``), and its export, ``cog/``, ``buildings.parquet`` and ``stac/``."""
    out = tmp_path_factory.mktemp("exported")
    shutil.copytree(mapped_samples, out / "maps.zarr")
    export_run(OutputStore.open(out / "maps.zarr"), cog_dir=out / "cog",
               footprints=out / "buildings.parquet", stac_dir=out / "stac")
    return out


@pytest.fixture(scope="module")
def mapped(exported: Path) -> OutputStore:
    return OutputStore.open(exported / "maps.zarr")


@pytest.fixture(scope="module")
def collection(exported: Path) -> pystac.Collection:
    return pystac.Collection.from_file(str(exported / "stac" / "collection.json"))


def test_one_item_per_scene_with_its_wgs84_footprint(collection, mapped, exported):
    items = {item.id: item for item in collection.get_items()}
    assert set(items) == set(mapped.groups.values())
    buildings = gpd.read_parquet(exported / "buildings.parquet")
    for scene, group in mapped.groups.items():
        item = items[group]
        assert item.properties["title"] == scene and item.common_metadata.gsd > 0
        footprint = shape(item.geometry)
        assert footprint.is_valid and footprint.exterior.is_ccw  # RFC 7946 winding
        assert item.bbox == pytest.approx(list(footprint.bounds))
        assert -180 <= item.bbox[0] < item.bbox[2] <= 180
        assert -90 <= item.bbox[1] < item.bbox[3] <= 90
        assert footprint.buffer(1e-7).contains(
            buildings[buildings.scene == scene].union_all())
        # the samples record no acquisition time: null, and the run's time as STAC asks
        created = item.common_metadata.created
        assert item.datetime is None and created is not None and created <= datetime.now(UTC)
        assert item.common_metadata.start_datetime == item.common_metadata.end_datetime == \
            created
    extent = collection.extent.spatial.bboxes[0]
    assert all(extent[0] <= i.bbox[0] and i.bbox[2] <= extent[2] for i in items.values())


def test_items_carry_the_projection_of_their_grid(collection, mapped):
    for scene, group in mapped.groups.items():
        item = collection.get_item(group)
        proj = ProjectionExtension.ext(item)
        crs_wkt, transform = mapped.georeference(scene)
        crs = CRS.from_wkt(crs_wkt)
        assert proj.code == f"EPSG:{crs.to_epsg()}"
        assert CRS.from_wkt(proj.wkt2) == crs
        assert proj.shape == list(mapped.read_array(scene, "probability").shape)
        assert proj.transform == pytest.approx(list(transform))
        height, width = proj.shape
        x0, y1 = transform[2], transform[5]
        assert proj.bbox == pytest.approx(
            [x0, y1 + transform[4] * height, x0 + transform[0] * width, y1])
        schemas = " ".join(item.stac_extensions)
        assert all(f"/{name}/" in schemas for name in EXTENSIONS)


def test_cog_assets_say_how_to_read_them_as_rasterio_does(collection, mapped):
    for group in mapped.groups.values():
        item = collection.get_item(group)
        for key in ("probability", "mask"):
            asset = item.assets[key]
            assert "data" in asset.roles and asset.media_type == pystac.MediaType.COG
            (band,) = RasterExtension.ext(asset).bands
            with rasterio.open(asset.get_absolute_href()) as src:
                assert band.data_type == src.dtypes[0] == "uint8"
                assert band.nodata == src.nodata == NOT_MAPPED
                assert (band.scale or 1.0) == pytest.approx(src.scales[0])
        assert RasterExtension.ext(item.assets["probability"]).bands[0].scale == \
            pytest.approx(1 / 254)
        classes = ClassificationExtension.ext(item.assets["mask"]).classes
        assert {(c.value, c.name) for c in classes} == {(0, "background"), (1, "building")}


def test_zarr_asset_opens_the_scene_group_with_xarray(collection, mapped):
    for scene, group in mapped.groups.items():
        asset = collection.get_item(group).assets["zarr"]
        assert asset.roles == ["data"] and asset.media_type == "application/vnd+zarr"
        kwargs = XarrayAssetsExtension.ext(asset).open_kwargs
        assert kwargs["group"] == group
        assert Path(asset.get_absolute_href()).resolve() == Path(mapped.path).resolve()
        with xr.open_dataset(asset.get_absolute_href(), **kwargs,
                             mask_and_scale=False) as ds:
            np.testing.assert_array_equal(ds["mask"].values,
                                          mapped.read_array(scene, "mask")[...])


def test_footprints_and_gallery_are_linked_and_paths_are_relative(collection, exported):
    for item in collection.get_items():
        assert Path(item.assets["footprints"].get_absolute_href()) == \
            exported / "buildings.parquet"
    links = {link.rel: link for link in collection.links}
    assert Path(links["via"].href) == DEFAULT_PATH  # outside the folder: absolute
    card = Path(links["describedby"].get_absolute_href())
    assert card == exported / "stac" / "MODEL_CARD.md"
    assert card.read_bytes() == (DEFAULT_PATH / "MODEL_CARD.md").read_bytes()
    stac_dir = exported / "stac"
    for document in [stac_dir / "collection.json", *stac_dir.glob("*/*.json")]:
        raw = json.loads(document.read_text())
        hrefs = [a["href"] for a in raw.get("assets", {}).values()] + \
            [link["href"] for link in raw["links"] if link["rel"] != "via"]
        assert hrefs and not any(os.path.isabs(h) for h in hrefs), document


def test_file_assets_carry_their_size_and_sha256_multihash(collection):
    checked = 0
    for item in collection.get_items():
        assert "zarr" in item.assets  # a folder: no file fields
        for key in ("probability", "mask", "footprints"):
            asset = item.assets[key]
            data = Path(asset.get_absolute_href()).read_bytes()
            fields = FileExtension.ext(asset)
            assert fields.size == len(data)
            assert fields.checksum == "1220" + hashlib.sha256(data).hexdigest()
            checked += 1
    assert checked and any("/file/" in e for e in collection.get_item(
        next(iter(i.id for i in collection.get_items()))).stac_extensions)


def test_the_copied_folder_resolves_every_asset_and_validates(exported, tmp_path):
    """The whole output folder copied elsewhere, the original gone: every link and asset
    resolves inside the copy, and the Collection and Items pass the core STAC schemas
    (which pystac ships; extension schemas would be fetched over the network)."""
    copy = tmp_path / "elsewhere" / "moved"
    shutil.copytree(exported, copy)
    hidden = exported.with_name(exported.name + "-hidden")
    exported.rename(hidden)
    try:
        collection = pystac.Collection.from_file(str(copy / "stac" / "collection.json"))
        items = list(collection.get_items())
        assert items
        for owner in [collection, *items]:
            for key, asset in owner.assets.items():
                target = Path(asset.get_absolute_href())
                assert target.is_relative_to(copy) and target.exists(), (owner.id, key)
            document = owner.to_dict(include_self_link=False)
            document["stac_extensions"] = []
            assert validate_dict(document), owner.id
        card = next(link for link in collection.links if link.rel == "describedby")
        assert Path(card.get_absolute_href()).is_relative_to(copy)
        with xr.open_dataset(items[0].assets["zarr"].get_absolute_href(),
                             **XarrayAssetsExtension.ext(items[0].assets["zarr"]).open_kwargs,
                             mask_and_scale=False) as ds:
            assert ds["mask"].size > 0
    finally:
        hidden.rename(exported)


def test_items_are_dated_by_the_acquisition_time_the_archive_recorded(tmp_path):
    source = crop_raster(sample_path("atlanta-pan"), 460, tmp_path / "atlanta.tif")
    with rasterio.open(source, "r+") as dst:
        dst.update_tags(TIFFTAG_DATETIME="2021:06:05 10:11:12")
    result = ingest([source], tmp_path / "archive.zarr")
    assert result.ok, result
    store = write_blobs(Archive.open(tmp_path / "archive.zarr"), tmp_path / "maps.zarr")
    write_collection(store, tmp_path / "stac")
    collection = pystac.Collection.from_file(str(tmp_path / "stac" / "collection.json"))
    (item,) = collection.get_items()
    assert item.datetime == datetime(2021, 6, 5, 10, 11, 12, tzinfo=UTC)
    assert item.common_metadata.created == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert "start_datetime" not in item.properties
    assert collection.extent.temporal.intervals == [[item.datetime, item.datetime]]
    shutil.rmtree(tmp_path / "archive.zarr")  # as predict removes it: no time to read
    write_collection(store, tmp_path / "undated")
    (undated,) = pystac.Collection.from_file(
        str(tmp_path / "undated" / "collection.json")).get_items()
    assert undated.datetime is None
    assert undated.common_metadata.start_datetime == item.common_metadata.created


def test_a_catalogue_dates_its_imagery_over_the_files_own_tag(tmp_path):
    """Ingested from a STAC Item, a scene keeps the Item's acquisition time (here its
    start_datetime, the Item's datetime being null), not the GeoTIFF's processing-time tag."""
    source = crop_raster(sample_path("atlanta-pan"), 460, tmp_path / "atlanta.tif")
    with rasterio.open(source, "r+") as dst:
        dst.update_tags(TIFFTAG_DATETIME="2021:06:05 10:11:12")
    taken = datetime(2019, 3, 4, 5, 6, 7, tzinfo=UTC)
    stac_item = pystac.Item("atlanta", geometry=None, bbox=None, datetime=None, properties={},
                            start_datetime=taken, end_datetime=taken)
    stac_item.add_asset("image", pystac.Asset(source.name, media_type=pystac.MediaType.GEOTIFF,
                                              roles=["data"]))
    (tmp_path / "atlanta.json").write_text(json.dumps(
        stac_item.to_dict(include_self_link=False, transform_hrefs=False)))
    result = ingest([tmp_path / "atlanta.json"], tmp_path / "archive.zarr")
    assert result.ok, result
    store = write_blobs(Archive.open(tmp_path / "archive.zarr"), tmp_path / "maps.zarr")
    write_collection(store, tmp_path / "stac")
    (item,) = pystac.Collection.from_file(str(tmp_path / "stac" / "collection.json")).get_items()
    assert item.datetime == taken


# --- STAC in -----------------------------------------------------------------------------------

def test_sources_of_an_exported_collection_and_item(exported, mapped):
    """resflow's own catalogue names its COGs as ../cog/...: out of its folder, so read
    only when the user lets it (``--stac-outside``)."""
    stac_dir = exported / "stac"
    cogs = sorted(str(p) for p in (exported / "cog").glob("*.tif"))
    with pytest.raises(InputError, match="leads outside the catalogue's folder"):
        stac_sources(stac_dir / "collection.json")
    outside = HrefPolicy(outside=True)
    assert sorted(stac_sources(stac_dir / "collection.json", policy=outside)) == cogs
    probability = stac_sources(stac_dir / "collection.json", asset_key="probability",
                               policy=outside)
    assert sorted(probability) == [c for c in cogs if c.endswith("_probability.tif")]
    group = next(iter(mapped.groups.values()))
    assert sorted(stac_sources(stac_dir / group / f"{group}.json", policy=outside)) == \
        [c for c in cogs if Path(c).name.startswith(f"{group}_")]


def item(item_id: str, assets: dict[str, pystac.Asset]) -> dict:
    stac_item = pystac.Item(item_id, geometry=None, bbox=None,
                            datetime=datetime(2020, 1, 1, tzinfo=UTC), properties={})
    for key, asset in assets.items():
        stac_item.add_asset(key, asset)
    return stac_item.to_dict(include_self_link=False, transform_hrefs=False)


def test_sources_of_an_item_collection_of_the_bundled_samples(tmp_path):
    folder = tmp_path / "search"
    folder.mkdir()
    samples = [sample_path(n) for n in ("atlanta-pan", "rotterdam-ms1", "rgbn")]
    features = [item(f"scene-{n}", {
        "image": pystac.Asset(os.path.relpath(path, folder) if n else str(path),
                              media_type=pystac.MediaType.GEOTIFF, roles=["data"]),
        "thumbnail": pystac.Asset("thumb.png", media_type=pystac.MediaType.PNG,
                                  roles=["thumbnail"]),
        "overview": pystac.Asset("small.tif", media_type=pystac.MediaType.COG,
                                 roles=["overview"]),
    }) for n, path in enumerate(samples)]
    search = folder / "search.json"
    search.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    refused: list[InputError] = []
    assert stac_sources(search, refused=refused) == []  # the samples lie outside its folder
    assert len(refused) == len(samples)
    sources = stac_sources(search, policy=HrefPolicy(outside=True))
    assert [Path(s).resolve() for s in sources] == [p.resolve() for p in samples]
    for source in sources:
        with rasterio.open(source) as src:
            assert src.crs is not None
    # any asset key, each href once, resolved against the file
    assert stac_sources(search, asset_key="overview") == [str(folder / "small.tif")]  # inside


def test_stac_files_offering_nothing_to_ingest_are_refused_clearly(tmp_path, exported):
    thumbs = tmp_path / "thumbs.json"
    thumbs.write_text(json.dumps({"type": "FeatureCollection", "features": [item("a", {
        "thumbnail": pystac.Asset("a.png", media_type=pystac.MediaType.PNG,
                                  roles=["thumbnail"])})]}))
    with pytest.raises(InputError, match=r"thumbnail \(roles \['thumbnail'\], image/png\)"):
        stac_sources(thumbs)
    with pytest.raises(InputError, match="asset 'visual'"):
        stac_sources(exported / "stac" / "collection.json", asset_key="visual",
                     policy=HrefPolicy(outside=True))
    with pytest.raises(InputError, match="does not exist"):
        stac_sources(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot be read as JSON"):
        stac_sources(tmp_path / "broken.json")
    (tmp_path / "plain.json").write_text(json.dumps({"type": "Topology"}))
    with pytest.raises(InputError, match="not STAC"):
        stac_sources(tmp_path / "plain.json")
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    with pytest.raises(InputError, match="holds no Items"):
        stac_sources(empty)


def test_a_footprint_across_the_antimeridian_is_cut_there() -> None:
    """A scene in the Pacific (PDC Mercator, EPSG:3832) spanning longitude 180 gets a
    MultiPolygon cut at 180, every longitude within [-180, 180], and a bbox whose west is
    greater than its east (RFC 7946 3.1.9 and 5.2); one beside it is left whole."""
    from pyproj import Transformer
    from shapely.geometry import box

    from resflow.exports.antimeridian import split_at_antimeridian

    to_wgs84 = Transformer.from_crs("EPSG:3832", "EPSG:4326", always_xy=True)

    def footprint(x0: float, x1: float) -> shapely.Polygon:
        corners = shapely.segmentize(box(x0, -2.0e6, x1, -1.9e6), 1000.0)
        return shapely.transform(corners, lambda xy: np.column_stack(
            to_wgs84.transform(xy[:, 0], xy[:, 1])))

    crossing = footprint(3.30e6, 3.40e6)  # about 179.6 E to 179.5 W
    assert np.ptp(shapely.get_coordinates(crossing)[:, 0]) > 180  # drawn across the globe
    geometry, bbox = split_at_antimeridian(crossing)
    assert geometry.geom_type == "MultiPolygon" and len(geometry.geoms) == 2
    lon = shapely.get_coordinates(geometry)[:, 0]
    assert lon.min() >= -180 and lon.max() <= 180 and {180.0, -180.0} <= set(lon)
    assert bbox[0] > bbox[2] and 179 < bbox[0] < 180 and -180 < bbox[2] < -179
    west = footprint(3.0e6, 3.1e6)
    assert split_at_antimeridian(west) == (west, list(west.bounds))
