"""What an output store holds and how its values are encoded: the one definition of the
format that the writer and every reader share.

Layout of ``OUT`` (a local folder or an object-storage URL): ``OUT/zarr.json`` holds the
root attributes and the consolidated metadata of every group; ``OUT/run_report.json`` the
run report; ``OUT/stac/`` a STAC Collection (not a Zarr node). Each scene's group holds
``probability`` (uint8, probability x 254, 255 = not mapped), ``mask`` (uint8, 1 building,
0 background, 255 not mapped), ``chip_bucket`` (int16 per chip: the bucket that served it,
-1 no valid pixel, -2 not written: the ledger), ``x``/``y`` pixel centres and
``spatial_ref`` (CF grid mapping). Pixel arrays are chunked on the chip grid and sharded,
``shard_chips x shard_chips`` chips an object. The fill 255 and ``scale_factor`` 1/254 are
declared as CF attributes, so ``xarray.open_zarr`` gives floats in [0, 1] with NaN where
nothing was mapped. The metadata documents are built by zarr once per scene grid and copied
per scene, so making a store of many scenes costs a JSON copy each.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from resflow import storage
from resflow.chips import grid_shape
from resflow.errors import ResflowError
from resflow.paths import confined
from resflow.report import REPORT_NAME

if TYPE_CHECKING:
    from resflow.archive_layout import SceneInfo
    from resflow.store.writer import OutputStore

KIND = "output"
#: Folder of a local store that holds the run's STAC Collection.
STAC_FOLDER = "stac"
#: 2: sharded arrays, CF fill values, ``chip_bucket`` as the per-shard ledger.
FORMAT_VERSION = 2
LEDGER = "chip_bucket"
#: probability x PROBABILITY_SCALE is stored; NOT_MAPPED is the fill of both pixel arrays.
PROBABILITY_SCALE = 254
NOT_MAPPED = 255
#: ``chip_bucket`` values that are not buckets.
NO_DATA_CHIP = -1
UNWRITTEN = -2
# Run settings that change the pixels: a resumed run must use the same ones.
PIXEL_SETTINGS = ("gallery", "halo", "window", "threshold", "min_building_m2", "split_dip")
#: What outputs made before a pixel setting existed used: they split no roofs and mapped
#: chip by chip.
PIXEL_SETTINGS_BEFORE = {"split_dip": 0.0, "window": 1}
RESERVED = frozenset({"zarr.json", REPORT_NAME, STAC_FOLDER})


def quantise(probability: np.ndarray) -> np.ndarray:
    """Probability in ``[0, 1]`` to uint8 ``0..254`` (255 is reserved for not mapped).

    >>> quantise(np.array([0.0, 0.5, 1.0, 2.0])).tolist()
    [0, 127, 254, 254]
    """
    return np.rint(np.clip(probability, 0.0, 1.0) * PROBABILITY_SCALE).astype(np.uint8)


def quantised_threshold(threshold: float) -> float:
    """The probability threshold on the stored 0..254 scale (a pixel is building above it)."""
    return threshold * PROBABILITY_SCALE


@dataclass(frozen=True)
class Encoding:
    """How one stored uint8 array encodes its values.

    Attributes
    ----------
    scale
        Stored value x ``scale`` is the value: probability in ``[0, 1]``; 1 for the mask.
    levels
        The stored value of probability 1, ``round(1 / scale)``: thresholds are compared on
        the stored scale as ``threshold x levels``, exactly as the run compares them.
    nodata
        The stored value of pixels that were not mapped, or None if every value is data.

    Examples
    --------
    >>> cf = zarr.create_array({}, shape=(4,), dtype="uint8", fill_value=255,
    ...                        attributes={"_FillValue": 255, "scale_factor": 1 / 254})
    >>> Encoding.of(cf, default_scale=1 / 255)
    Encoding(scale=0.003937007874015748, levels=254, nodata=255)
    >>> Encoding.of(zarr.create_array({}, shape=(4,), dtype="uint8", fill_value=0),
    ...             default_scale=1 / 255)   # fill 0 is probability 0 there: no nodata
    Encoding(scale=0.00392156862745098, levels=255, nodata=None)
    """

    scale: float
    levels: int
    nodata: int | None

    @classmethod
    def of(cls, array: zarr.Array, *, default_scale: float) -> Encoding:
        """The encoding an array declares: ``scale_factor`` (else ``default_scale``) and, as
        not mapped, a declared ``_FillValue``, or the array's fill value when that is no
        data value (a fill of 0 in a store where 0 is probability 0 marks nothing)."""
        attrs = dict(array.attrs)
        scale = float(attrs.get("scale_factor", default_scale))
        levels = round(1 / scale)
        valid = {int(v) for v in attrs.get("flag_values", range(levels + 1))}
        fill = attrs.get("_FillValue", array.fill_value)
        declared = "_FillValue" in attrs
        nodata = None if fill is None or (not declared and int(fill) in valid) else int(fill)
        return cls(scale=scale, levels=levels, nodata=nodata)


#: The probability encoding resflow writes (what :meth:`Encoding.of` reads back from it).
PROBABILITY_ENCODING = Encoding(scale=1.0 / PROBABILITY_SCALE, levels=PROBABILITY_SCALE,
                                nodata=NOT_MAPPED)


def safe_group_name(name: str) -> str:
    """A group name that can never leave the output directory.

    Every character outside ``[A-Za-z0-9._-]`` (path separators included) becomes ``_``
    and leading dots are replaced, so ``"../../evil"`` becomes ``"__.._evil"``.

    Examples
    --------
    >>> safe_group_name("../../evil")
    '__.._evil'
    >>> safe_group_name("LC08 scene/1")
    'LC08_scene_1'
    """
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    stripped = cleaned.lstrip(".")
    cleaned = "_" * (len(cleaned) != len(stripped)) + stripped
    return cleaned or "_"


def group_names(scene_names: Iterable[str]) -> dict[str, str]:
    """Map archive scene names to unique, safe group names (``_2``, ``_3`` on collision)."""
    taken: set[str] = set(RESERVED)
    groups: dict[str, str] = {}
    for name in scene_names:
        base = safe_group_name(name)
        group, n = base, 1
        while group.lower() in taken:  # case-insensitive file systems must not merge groups
            n += 1
            group = f"{base}_{n}"
        taken.add(group.lower())
        groups[name] = group
    return groups


def checked_groups(out: Path | str, scenes: Any) -> dict[str, str]:
    """The store's ``scenes`` attribute (scene name -> group), refused unless every group is
    a name :func:`group_names` could have made: exports turn group names into file names
    (COGs, STAC Items, overlays), and a store's attributes are anyone's to edit.

    Raises
    ------
    ResflowError
        naming the store and the scene whose group is not a plain, unique folder name.
    """
    where = f"{storage.display(out)}: scenes"
    fix = "recompute the output with `resflow run --overwrite`; never edit a store's zarr.json"
    if not isinstance(scenes, dict):
        raise ResflowError(where, "the store records no mapping of scene names to groups", fix)
    taken: set[str] = set(RESERVED)
    for name, group in scenes.items():
        if not isinstance(group, str) or safe_group_name(group) != group \
                or group.lower() in taken:
            raise ResflowError(where, f"scene {name!r} has the group {group!r}, which is not "
                               "a plain folder name of its own (only A-Z, a-z, 0-9, '.', '_' "
                               "and '-', no leading dot, not reserved, not repeated): the "
                               "store's attributes were edited", fix)
        taken.add(group.lower())
    return dict(scenes)


def scene_file(folder: Path | str, name: str, store: OutputStore) -> Path:
    """``folder / name`` for a file named after a scene's group, refused if it would leave
    ``folder`` (:func:`resflow.paths.confined`): group names come from the store's
    attributes, which anyone may edit."""
    return confined(folder, name, what="a file name made from a scene's group",
                    where=f"{store.display}: scenes", error=ResflowError,
                    fix="recompute the output with `resflow run --overwrite`; never edit a "
                        "store's zarr.json")


def _geotransform(transform: tuple[float, ...]) -> str:
    """GDAL GeoTransform string ``c a b f d e`` from rasterio's affine ``(a, b, c, d, e, f)``."""
    a, b, c, d, e, f = transform[:6]
    return " ".join(repr(float(v)) for v in (c, a, b, f, d, e))


def _scene_arrays(g: zarr.Group, height: int, width: int, chip: int,
                  shard_chips: int) -> None:
    """Create one scene's arrays in ``g``; ``spatial_ref``'s attributes are the scene's own
    and are set per scene by :func:`scene_documents`."""
    rows, cols = grid_shape(height, width, chip)
    shape, chunks = (height, width), (chip, chip)
    shards = (chip * shard_chips, chip * shard_chips)
    data_attrs = {"grid_mapping": "spatial_ref", "coordinates": "spatial_ref",
                  "_FillValue": NOT_MAPPED}
    g.create_array("probability", shape=shape, chunks=chunks, shards=shards, dtype="uint8",
                   fill_value=NOT_MAPPED, dimension_names=("y", "x"), attributes={
                       **data_attrs, "long_name": "building probability",
                       "units": "1", "scale_factor": 1.0 / PROBABILITY_SCALE,
                       "add_offset": 0.0, "valid_range": [0, PROBABILITY_SCALE]})
    g.create_array("mask", shape=shape, chunks=chunks, shards=shards, dtype="uint8",
                   fill_value=NOT_MAPPED, dimension_names=("y", "x"), attributes={
                       **data_attrs, "long_name": "building mask",
                       "flag_values": [0, 1], "flag_meanings": "background building"})
    g.create_array(LEDGER, shape=(rows, cols), chunks=(shard_chips, shard_chips),
                   dtype="int16", fill_value=UNWRITTEN, dimension_names=("chip_row", "chip_col"),
                   attributes={"long_name": "bucket that served the chip; -1 no valid pixel "
                               "(skipped), -2 not written", "_FillValue": UNWRITTEN})
    # the coordinates' values are written with the scene's first shard (write_shard), so
    # making the store writes metadata only, however large the scenes
    g.create_array("x", shape=(width,), chunks=(width,), dtype="float64",
                   dimension_names=("x",), attributes={"long_name": "x of pixel centre"})
    g.create_array("y", shape=(height,), chunks=(height,), dtype="float64",
                   dimension_names=("y",), attributes={"long_name": "y of pixel centre"})
    g.create_array("spatial_ref", shape=(), dtype="int64", fill_value=0, dimension_names=())


@lru_cache(maxsize=256)
def _array_documents(height: int, width: int, chip: int, shard_chips: int) -> str:
    """The arrays' metadata documents of a scene of this grid, as JSON ``{name: document}``:
    built once by zarr itself per grid, then reused for every scene of that grid (a country
    archive has few distinct scene sizes), so making a store costs a JSON copy per scene."""
    from zarr.storage import MemoryStore

    documents: dict[str, Any] = {}
    root = zarr.open_group(MemoryStore(store_dict=documents), mode="w", zarr_format=3)
    _scene_arrays(root.create_group("g"), height, width, chip, shard_chips)
    return json.dumps({key.split("/")[1]: json.loads(buffer.to_bytes())
                       for key, buffer in documents.items() if key.count("/") == 2})


def scene_documents(group: str, info: SceneInfo, shard_chips: int,
                     threshold: float | None) -> dict[str, dict[str, Any]]:
    """Every metadata document of one scene's group, by node path in the store."""
    rows, cols = grid_shape(info.height, info.width, info.chip)
    arrays = json.loads(_array_documents(info.height, info.width, info.chip, shard_chips))
    arrays["spatial_ref"]["attributes"] = {
        "crs_wkt": info.crs_wkt, "spatial_ref": info.crs_wkt,
        "GeoTransform": _geotransform(info.transform)}
    documents = {f"{group}/{name}": document for name, document in arrays.items()}
    documents[group] = {"zarr_format": 3, "node_type": "group", "attributes": {
        "scene": info.name, "source": info.source, "sha256": info.sha256,
        "chip": info.chip, "chips_total": rows * cols, "threshold": threshold,
        "gsd_m": info.gsd_m}}
    return documents

