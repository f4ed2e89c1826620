"""A STAC Collection describing a finished run, for catalogue tools (pystac, stac-browser,
QGIS's STAC source).

One Item per scene, with its footprint in WGS 84, its acquisition time where the archive
recorded one, the projection of its grid (``proj:``), the store's Zarr group (opened with
xarray through ``xarray:open_kwargs``), its COGs (``raster:bands`` says how to read the
values) and the footprints file as assets, each file with its size and checksum
(``file:``), and links to the model gallery and a copy of its model card.

The *output folder* is the one holding the STAC folder (``predict``'s folder, a run's
``OUT.zarr``): links, and hrefs of what lies inside it, are relative, so the folder can be
copied anywhere whole; files outside it keep absolute paths, which a copy does not carry.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import shapely
import zarr
from pyproj import CRS, Transformer
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.file import FileExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension
from pystac.extensions.xarray_assets import XarrayAssetsExtension
from shapely import affinity
from shapely.geometry import box, mapping
from shapely.geometry.polygon import orient

from resflow import storage
from resflow.archive_layout import SCENES
from resflow.exports.antimeridian import split_at_antimeridian
from resflow.exports.cog import cog_names
from resflow.exports.files import replacing
from resflow.exports.footprints import MEDIA_TYPES, WGS84, footprint_format
from resflow.exports.settings import default_min_building_m2
from resflow.gallery import DEFAULT_PATH
from resflow.store.format import Encoding, scene_file
from resflow.store.reader import SceneMaps, root_attributes, run_settings, scene_gsd_m
from resflow.store.writer import OutputStore

COLLECTION_FILE = "collection.json"
ZARR_MEDIA_TYPE = "application/vnd+zarr"
MODEL_CARD = "MODEL_CARD.md"
SHA2_256 = "1220"
"""Multihash prefix of a SHA2-256 digest (code 0x12, 32 bytes), as ``file:checksum`` wants."""
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
        Where :func:`resflow.exports.cog.export_cogs` wrote the scene COGs; None: no COG assets.
    footprints
        The footprints file :func:`resflow.exports.footprints.export_footprints` wrote; None: none.
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
    acquired = _acquired(store)
    run_min_building = default_min_building_m2(store)
    if threshold is None:
        rule = (f"probability above {settings.get('threshold', 0.5):g}, groups under "
                f"{run_min_building:g} m^2 dropped (the run's own mask)")
    else:
        rule = (f"probability above {threshold:g}, groups under "
                f"{run_min_building if min_building_m2 is None else min_building_m2:g} m^2 dropped "
                "(re-cut by `resflow export`)")
    items = [_scene_item(store, maps, when, acquired.get(maps.scene), cog_dir, footprints, rule)
             for maps in (SceneMaps.open(store, scene, gsd)
                          for scene, gsd in scene_gsd_m(store).items())]
    card = _copy_model_card(settings, root_dir)
    collection = _collection(store, items, when, settings, footprints, card)
    collection.catalog_type = pystac.CatalogType.SELF_CONTAINED
    root_abs = root_dir.absolute()
    collection.normalize_hrefs(str(root_abs))
    folder = root_abs.parent
    for owner in [collection, *items]:
        _portable_hrefs(owner, folder)
    written = []
    for item in items:
        # An Item's file is <group>/<group>.json: kept inside stac_dir whatever the store says
        target = scene_file(root_dir, os.path.relpath(item.get_self_href(), root_abs), store)
        written.append(_write_json(target, item.to_dict(
            include_self_link=False, transform_hrefs=True)))
    written.append(_write_json(root_dir / COLLECTION_FILE, collection.to_dict(
        include_self_link=False, transform_hrefs=True)))
    return written


def _portable_hrefs(owner: pystac.Item | pystac.Collection, folder: Path) -> None:
    """Make the hrefs of ``owner``'s local assets inside ``folder`` relative to ``owner``'s
    own file; those outside stay absolute, as a copy of the folder does not carry them."""
    base = Path(owner.get_self_href()).parent
    for asset in owner.assets.values():
        target = Path(os.path.normpath(asset.href))  # without "..", which is_relative_to keeps
        if target.is_absolute() and target.is_relative_to(os.path.normpath(folder)):
            asset.href = os.path.relpath(target, base)


def _copy_model_card(settings: dict[str, Any], root_dir: Path) -> Path | None:
    """Copy the gallery's model card into the STAC folder, so the Collection's
    ``describedby`` link travels with it; None where the gallery has none."""
    gallery = (storage.normalise(settings["gallery"]) if settings.get("gallery")
               else DEFAULT_PATH)
    card = storage.join(gallery, MODEL_CARD)
    if not storage.exists(card):
        return None
    target = root_dir / MODEL_CARD
    with replacing(target) as partial:
        partial.write_bytes(storage.read_bytes(card))
    return target


def _write_json(path: Path, document: dict[str, Any]) -> Path:
    with replacing(path) as partial:
        partial.write_text(json.dumps(document, indent=2) + "\n")
    return path


def _made_at(store: OutputStore) -> datetime:
    """When the run finished (its report), else when the store was made: the Items'
    ``created``."""
    attrs = root_attributes(store)
    stamp = (attrs.get("run_report") or {}).get("finished_utc") or attrs.get("created_utc")
    return datetime.fromisoformat(stamp) if stamp else datetime.now(UTC)


def _acquired(store: OutputStore) -> dict[str, datetime]:
    """Scene -> acquisition time, as ingest recorded it in the archive (``acquired_utc``,
    from the source's ``TIFFTAG_DATETIME``); empty where the archive is not a local folder
    (a URL is shown without its credentials, so it is not read), is gone or unreadable, or
    its scenes record none."""
    recorded = root_attributes(store).get("archive")
    location = storage.normalise(recorded) if recorded else None
    if not isinstance(location, Path) or not location.is_dir():
        return {}
    try:
        root = zarr.open_group(storage.zarr_store(location, read_only=True), mode="r")
        scenes = root[SCENES]
        stamps = {scene: scenes[scene].attrs.get("acquired_utc") for scene in store.groups
                  if scene in scenes}
    except (OSError, KeyError, ValueError):  # zarr's errors are ValueErrors
        return {}
    return {scene: datetime.fromisoformat(stamp) for scene, stamp in stamps.items() if stamp}


def _local_href(location: Path | str) -> str:
    """An asset href: an absolute local path (made relative on save) or a URL as shown."""
    return str(Path(location).absolute()) if isinstance(location, Path) else \
        storage.display(location)


def _scene_item(store: OutputStore, maps: SceneMaps, when: datetime,
                acquired: datetime | None, cog_dir: Path | str | None,
                footprints: Path | str | None, mask_rule: str) -> pystac.Item:
    """The scene's Item. ``datetime`` is the acquisition time; without one it is null and
    ``start_datetime``/``end_datetime`` (which STAC then requires) are both the run's time,
    as is ``created``."""
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
    footprint, bbox = split_at_antimeridian(footprint)
    item = pystac.Item(id=group, geometry=mapping(footprint), bbox=bbox,
                       datetime=acquired, properties={"title": maps.scene},
                       start_datetime=None if acquired else when,
                       end_datetime=None if acquired else when)
    item.common_metadata.created = when
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
        _add_footprints(item, Path(footprints), f"this scene's buildings are the rows with "
                        f"scene == {maps.scene!r}")
    return item


def _file_fields(asset: pystac.Asset, path: Path) -> pystac.Asset:
    """Add ``file:size`` (bytes) and ``file:checksum`` (SHA2-256 multihash) of ``path``."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    fields = FileExtension.ext(asset, add_if_missing=True)
    fields.size, fields.checksum = path.stat().st_size, SHA2_256 + digest.hexdigest()
    return asset


def _transformed(transformer: Transformer, xy: np.ndarray) -> np.ndarray:
    x, y = transformer.transform(xy[:, 0], xy[:, 1])
    return np.column_stack([x, y])


def _add_cog(item: pystac.Item, key: str, path: Path, title: str, description: str,
             encoding: Encoding) -> pystac.Asset:
    """Add a COG asset whose ``raster:bands`` say how to read its values."""
    asset = pystac.Asset(str(path.absolute()), title=title, description=description,
                         media_type=pystac.MediaType.COG, roles=["data"])
    item.add_asset(key, asset)
    _file_fields(asset, path)
    scale = {} if encoding.scale == 1 else {"scale": encoding.scale, "offset": 0.0}
    RasterExtension.ext(asset, add_if_missing=True).apply(bands=[RasterBand.create(
        nodata=encoding.nodata, data_type=DataType.UINT8, **scale)])
    return asset


def _add_footprints(owner: pystac.Item | pystac.Collection, path: Path,
                    description: str) -> None:
    asset = pystac.Asset(str(path.absolute()), title="building footprints (WGS 84)",
                         description=description, media_type=MEDIA_TYPES[footprint_format(path)],
                         roles=["data"])
    owner.add_asset("footprints", asset)
    _file_fields(asset, path)


def _collection(store: OutputStore, items: list[pystac.Item], when: datetime,
                settings: dict[str, Any], footprints: Path | str | None,
                card: Path | None) -> pystac.Collection:
    name = Path(storage.display(store.path).rstrip("/")).name
    boxes = [item.bbox for item in items if item.bbox] or [[-180.0, -90.0, 180.0, 90.0]]
    union = [min(b[0] for b in boxes), min(b[1] for b in boxes),
             max(b[2] for b in boxes), max(b[3] for b in boxes)]
    if any(b[0] > b[2] for b in boxes):  # a scene crosses the antimeridian: all longitudes
        union[0], union[2] = -180.0, 180.0
    gallery = (storage.normalise(settings["gallery"]) if settings.get("gallery")
               else DEFAULT_PATH)
    collection = pystac.Collection(
        id=Path(name).stem or "resflow-maps", title=f"resflow building maps: {name}",
        description=(f"Building probability and masks mapped by resflow from "
                     f"{settings.get('archive', 'an imagery archive')} with the model "
                     f"gallery {gallery}, one Item per scene."),
        extent=pystac.Extent(pystac.SpatialExtent([union, *boxes]),
                             pystac.TemporalExtent([_interval(items, when)])),
        license="other")
    collection.add_link(pystac.Link("via", _href(gallery), title="model gallery "
                                    "(manifest.json, weights, model card)"))
    if card is not None:  # beside collection.json, so the link is its bare name
        collection.add_link(pystac.Link("describedby", card.name, media_type="text/markdown",
                                        title="model card (a copy)"))
    collection.add_asset("zarr", pystac.Asset(_local_href(store.path), title="output store",
                                              media_type=ZARR_MEDIA_TYPE, roles=["data"]))
    if footprints is not None:
        _add_footprints(collection, Path(footprints),
                        "every scene's buildings, one row per building")
    collection.add_items(items)
    return collection


def _interval(items: list[pystac.Item], when: datetime) -> list[datetime]:
    """First and last acquisition of the Items, or the run's time where none has one."""
    times = sorted(item.datetime for item in items if item.datetime is not None)
    return [times[0], times[-1]] if times else [when, when]


def _href(location: Path | str) -> str:
    """A link target: an absolute path, or a URL without credentials."""
    return str(location.absolute()) if isinstance(location, Path) else storage.display(location)
