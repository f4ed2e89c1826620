"""A STAC Collection describing a finished run, for catalogue tools (pystac, stac-browser,
QGIS's STAC source).

One Item per scene, with its footprint in WGS 84, the projection of its grid (``proj:``),
the store's Zarr group (opened with xarray through ``xarray:open_kwargs``), its COGs
(``raster:bands`` says how to read the values) and the footprints file as assets, and links
to the model gallery and its model card. Links and local asset paths are relative, so the
folder can move together with the files it names.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import shapely
from pyproj import CRS, Transformer
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension
from pystac.extensions.xarray_assets import XarrayAssetsExtension
from shapely import affinity
from shapely.geometry import box, mapping
from shapely.geometry.polygon import orient

from resflow import storage
from resflow.export.cog import cog_names
from resflow.export.files import replacing
from resflow.export.footprints import WGS84, footprint_format
from resflow.export.settings import default_min_building_m2
from resflow.gallery import DEFAULT_PATH
from resflow.store.format import Encoding, scene_file
from resflow.store.reader import SceneMaps, root_attributes, run_settings, scene_gsd_m
from resflow.store.writer import OutputStore

COLLECTION_FILE = "collection.json"
ZARR_MEDIA_TYPE = "application/vnd+zarr"
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"
MODEL_CARD = "MODEL_CARD.md"
#: Points added along each edge of a scene before reprojecting it, so the WGS 84 footprint
#: follows the curved edges of a projected grid...
EDGE_POINTS = 21
#: ...and then the points that add nothing (less than about 0.1 m off the edge) removed.
FOOTPRINT_TOLERANCE_DEG = 1e-6


def write_collection(store: OutputStore, stac_dir: Path | str, *,
                     cog_dir: Path | str | None = None, footprints: Path | str | None = None,
                     threshold: float | None = None,
                     min_building_m2: float | None = None) -> list[Path]:
    """Write ``<stac_dir>/collection.json`` and one ``<group>/<group>.json`` Item per scene.

    Parameters
    ----------
    store
        A complete output store.
    cog_dir
        Where :func:`resflow.export.cog.export_cogs` wrote the scene COGs; None: no COG assets.
    footprints
        The footprints file :func:`resflow.export.footprints.export_footprints` wrote; None: none.
    threshold, min_building_m2
        The settings the COG mask was made with (for its description).

    Items are written first and ``collection.json`` last, each under a temporary name, and
    an older ``collection.json`` is removed before anything else: a reader that finds the
    Collection finds all of it.

    Returns
    -------
    list of Path
        The Item files, then ``collection.json``.
    """
    root_dir = Path(stac_dir)
    (root_dir / COLLECTION_FILE).unlink(missing_ok=True)
    settings = run_settings(store)
    when = _made_at(store)
    run_min_building = default_min_building_m2(store)
    if threshold is None:
        rule = (f"probability above {settings.get('threshold', 0.5):g}, groups under "
                f"{run_min_building:g} m^2 dropped (the run's own mask)")
    else:
        rule = (f"probability above {threshold:g}, groups under "
                f"{run_min_building if min_building_m2 is None else min_building_m2:g} m^2 dropped "
                "(re-cut by `resflow export`)")
    items = [_scene_item(store, maps, when, cog_dir, footprints, rule)
             for maps in (SceneMaps.open(store, scene, gsd)
                          for scene, gsd in scene_gsd_m(store).items())]
    collection = _collection(store, items, when, settings, footprints)
    collection.catalog_type = pystac.CatalogType.SELF_CONTAINED
    collection.normalize_hrefs(str(root_dir.absolute()))
    collection.make_asset_hrefs_relative()
    collection.make_all_asset_hrefs_relative()
    written = []
    root_abs = root_dir.absolute()
    for item in items:
        # An Item's file is <group>/<group>.json: kept inside stac_dir whatever the store says
        target = scene_file(root_abs, os.path.relpath(item.get_self_href(), root_abs), store)
        written.append(_write_json(target, item.to_dict(
            include_self_link=False, transform_hrefs=True)))
    written.append(_write_json(root_dir / COLLECTION_FILE, collection.to_dict(
        include_self_link=False, transform_hrefs=True)))
    return written


def _write_json(path: Path, document: dict[str, Any]) -> Path:
    with replacing(path) as partial:
        partial.write_text(json.dumps(document, indent=2) + "\n")
    return path


def _made_at(store: OutputStore) -> datetime:
    """When the run finished (its report), else when the store was made: resflow archives
    do not record acquisition times, so an Item's ``datetime`` is the map's."""
    attrs = root_attributes(store)
    stamp = (attrs.get("run_report") or {}).get("finished_utc") or attrs.get("created_utc")
    return datetime.fromisoformat(stamp) if stamp else datetime.now(UTC)


def _local_href(location: Path | str) -> str:
    """An asset href: an absolute local path (made relative on save) or a URL as shown."""
    return str(Path(location).absolute()) if isinstance(location, Path) else \
        storage.display(location)


def _scene_item(store: OutputStore, maps: SceneMaps, when: datetime,
                cog_dir: Path | str | None, footprints: Path | str | None,
                mask_rule: str) -> pystac.Item:
    group = store.groups[maps.scene]
    height, width = maps.shape
    crs = CRS.from_wkt(maps.crs_wkt)
    t = maps.transform
    corners = affinity.affine_transform(box(0, 0, width, height),
                                        [t.a, t.b, t.d, t.e, t.c, t.f])
    edge = max(corners.length / (4 * EDGE_POINTS), 1e-12)
    to_wgs84 = Transformer.from_crs(crs, WGS84, always_xy=True)
    footprint = orient(shapely.simplify(shapely.transform(  # counter-clockwise, as GeoJSON
        shapely.segmentize(corners, edge), lambda xy: _transformed(to_wgs84, xy)),
        FOOTPRINT_TOLERANCE_DEG))
    item = pystac.Item(id=group, geometry=mapping(footprint), bbox=list(footprint.bounds),
                       datetime=when, properties={"title": maps.scene})
    item.common_metadata.gsd = maps.gsd_m
    epsg = crs.to_epsg()
    ProjectionExtension.ext(item, add_if_missing=True).apply(
        code=f"EPSG:{epsg}" if epsg else None, wkt2=crs.to_wkt(),
        shape=[height, width], transform=list(maps.transform)[:6],
        bbox=list(corners.bounds))
    zarr_asset = pystac.Asset(_local_href(store.path), title=f"output store, group {group}",
                              description="Zarr v3: probability, mask and chip_bucket of "
                              "this scene on its own grid", media_type=ZARR_MEDIA_TYPE,
                              roles=["data"])
    item.add_asset("zarr", zarr_asset)
    XarrayAssetsExtension.ext(zarr_asset, add_if_missing=True).open_kwargs = {
        "engine": "zarr", "group": group, "consolidated": True}
    if cog_dir is not None:
        names = cog_names(group)
        _add_cog(item, "probability", scene_file(cog_dir, names["probability"], store),
                 "building probability", "probability = value x scale",
                 maps.probability_encoding)
        mask = _add_cog(item, "mask", scene_file(cog_dir, names["mask"], store), "building mask",
                        f"1 = building: {mask_rule}",
                        maps.mask_encoding)
        ClassificationExtension.ext(mask, add_if_missing=True).apply(classes=[
            Classification.create(value=0, description="background", name="background"),
            Classification.create(value=1, description="building", name="building",
                                  color_hint="E6281E")])
    if footprints is not None:
        item.add_asset("footprints", _footprints_asset(
            Path(footprints), f"this scene's buildings are the rows with scene == "
            f"{maps.scene!r}"))
    return item


def _transformed(transformer: Transformer, xy: np.ndarray) -> np.ndarray:
    x, y = transformer.transform(xy[:, 0], xy[:, 1])
    return np.column_stack([x, y])


def _add_cog(item: pystac.Item, key: str, path: Path, title: str, description: str,
             encoding: Encoding) -> pystac.Asset:
    """Add a COG asset whose ``raster:bands`` say how to read its values."""
    asset = pystac.Asset(str(path.absolute()), title=title, description=description,
                         media_type=pystac.MediaType.COG, roles=["data"])
    item.add_asset(key, asset)
    scale = {} if encoding.scale == 1 else {"scale": encoding.scale, "offset": 0.0}
    RasterExtension.ext(asset, add_if_missing=True).apply(bands=[RasterBand.create(
        nodata=encoding.nodata, data_type=DataType.UINT8, **scale)])
    return asset


def _footprints_asset(path: Path, description: str) -> pystac.Asset:
    media = ("application/geo+json" if footprint_format(path) == "geojson"
             else PARQUET_MEDIA_TYPE)
    return pystac.Asset(str(path.absolute()), title="building footprints (WGS 84)",
                        description=description, media_type=media, roles=["data"])


def _collection(store: OutputStore, items: list[pystac.Item], when: datetime,
                settings: dict[str, Any], footprints: Path | str | None) -> pystac.Collection:
    name = Path(storage.display(store.path).rstrip("/")).name
    boxes = [item.bbox for item in items if item.bbox] or [[-180.0, -90.0, 180.0, 90.0]]
    union = [min(b[0] for b in boxes), min(b[1] for b in boxes),
             max(b[2] for b in boxes), max(b[3] for b in boxes)]
    gallery = (storage.normalise(settings["gallery"]) if settings.get("gallery")
               else DEFAULT_PATH)
    collection = pystac.Collection(
        id=Path(name).stem or "resflow-maps", title=f"resflow building maps: {name}",
        description=(f"Building probability and masks mapped by resflow from "
                     f"{settings.get('archive', 'an imagery archive')} with the model "
                     f"gallery {gallery}, one Item per scene."),
        extent=pystac.Extent(pystac.SpatialExtent([union, *boxes]),
                             pystac.TemporalExtent([[when, when]])),
        license="other")
    collection.add_link(pystac.Link("via", _href(gallery), title="model gallery "
                                    "(manifest.json, weights, model card)"))
    card = storage.join(gallery, MODEL_CARD)
    if storage.exists(card):
        collection.add_link(pystac.Link("describedby", _href(card),
                                        media_type="text/markdown", title="model card"))
    collection.add_asset("zarr", pystac.Asset(_local_href(store.path), title="output store",
                                              media_type=ZARR_MEDIA_TYPE, roles=["data"]))
    if footprints is not None:
        collection.add_asset("footprints", _footprints_asset(
            Path(footprints), "every scene's buildings, one row per building"))
    collection.add_items(items)
    return collection


def _href(location: Path | str) -> str:
    """A link target: an absolute path, or a URL without credentials."""
    return str(location.absolute()) if isinstance(location, Path) else storage.display(location)
