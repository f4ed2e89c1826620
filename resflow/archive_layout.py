"""The imagery archive's layout and the metadata each scene carries, read back with refusals.

Layout written by :func:`resflow.ingestion.ingest`::

    ARCHIVE.zarr/                  root attrs: resflow_kind="archive", format, refused=[...]
      scenes/<name>/               attrs: SceneInfo fields + complete (written last)
        image        (band, y, x)  source dtype, chunks (nbands, chip, chip), grid_mapping
        x, y         (x,), (y,)    pixel-centre coordinates in CRS units
        band         (band,)       1-based band numbers (names in attrs band_names)
        spatial_ref  ()            CF grid mapping: crs_wkt, spatial_ref, GeoTransform
        valid_fraction (chip_row, chip_col) float32, share of valid pixels per chip

The archive is a local folder or an object-storage URL (:mod:`resflow.storage`); each scene
group opens with plain ``xarray.open_zarr(path, group="scenes/<name>")`` and rioxarray.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import zarr
from zarr.core.sync import sync

from resflow import storage
from resflow.chips import window_km2
from resflow.errors import InputError

ARCHIVE_KIND = "archive"
#: 2: scenes on a working grid at a recorded ground resolution (``gsd_m``), too-coarse
#: scenes kept as ``skip`` records.
FORMAT_VERSION = 2
SCENES = "scenes"
#: Each scene's array of the share of valid pixels in each chip (written at ingest).
VALID = "valid_fraction"


@dataclass(frozen=True)
class SceneInfo:
    """What the archive knows about one complete scene.

    Attributes
    ----------
    name
        Sanitised group name inside the archive (``scenes/<name>``).
    height, width
        Scene size in pixels.
    band_names
        One name per source band (see :mod:`resflow.harmonise`).
    dtype
        Source dtype, kept unchanged in the store.
    crs_wkt
        Coordinate reference system as WKT.
    transform
        Affine ``(a, b, c, d, e, f)`` in rasterio order, pixel corner to CRS units.
    nodata
        The value of invalid pixels: the source's nodata, or None. A scene with a ``mask``
        always has one, which the source's masked pixels were written as (chosen by
        :func:`resflow.harmonise.masked_nodata` when the source has none).
    chip
        Chip edge = Zarr chunk edge, pixels.
    source, sha256
        The raster the scene came from and its checksum at ingest.
    stats
        Per-band robust scaling ``{"low": [...], "high": [...], "percentiles": [2, 98]}``.
    rgb
        0-based source band indices feeding the models' 3 channels.
    gsd_m, source_gsd_m
        Ground resolution of the stored (working) grid and of the source, metres
        (:mod:`resflow.resolution`).
    resampling
        How the source was brought to the working grid: ``none``, ``average``, ``bilinear``.
    skip
        Why the scene is not mapped (too coarse for buildings), or None. A skipped scene
        keeps its metadata but no pixels.
    mask
        The source's own mask, whose masked pixels are stored as ``nodata``: ``"alpha"`` (an
        alpha band, which is not stored: it is no imagery), ``"per_dataset"`` (a GDAL mask
        band, internal or ``.msk``), or None. The values are GDAL's mask flag names.
    alpha_band
        The source's 1-based number of the alpha band left out of ``image``, or None.
    """

    name: str
    height: int
    width: int
    band_names: tuple[str, ...]
    dtype: str
    crs_wkt: str
    transform: tuple[float, ...]
    nodata: float | None
    chip: int
    source: str
    sha256: str
    stats: dict
    rgb: tuple[int, int, int]
    gsd_m: float
    source_gsd_m: float
    resampling: str = "none"
    skip: str | None = None
    mask: str | None = None
    alpha_band: int | None = None

    def to_attrs(self) -> dict[str, Any]:
        """JSON-ready attributes for the scene group."""
        return asdict(self)

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> SceneInfo:
        """Rebuild from scene group attributes (extra keys such as ``complete`` ignored)."""
        return cls(
            name=attrs["name"], height=int(attrs["height"]), width=int(attrs["width"]),
            band_names=tuple(attrs["band_names"]), dtype=attrs["dtype"],
            crs_wkt=attrs["crs_wkt"], transform=tuple(attrs["transform"]),
            nodata=attrs["nodata"], chip=int(attrs["chip"]), source=attrs["source"],
            sha256=attrs["sha256"], stats=dict(attrs["stats"]), rgb=tuple(attrs["rgb"]),
            gsd_m=float(attrs["gsd_m"]), source_gsd_m=float(attrs["source_gsd_m"]),
            resampling=attrs["resampling"], skip=attrs["skip"],
            mask=attrs.get("mask"), alpha_band=attrs.get("alpha_band"),
        )

    @property
    def source_bands(self) -> tuple[int, ...]:
        """The source's 1-based band number of each stored band (all but an alpha band)."""
        count = len(self.band_names) + (self.alpha_band is not None)
        return tuple(b for b in range(1, count + 1) if b != self.alpha_band)

    @property
    def resolution(self) -> tuple[float, float]:
        """Pixel size ``(x, y)`` in CRS units (metres, or degrees for geographic CRSs)."""
        a, b, _, d, e, _ = self.transform[:6]
        return math.hypot(a, d), math.hypot(b, e)

    @property
    def km2(self) -> float:
        """Ground footprint of the whole scene in km^2."""
        return window_km2(self.transform, self.crs_wkt, 0, 0, self.height, self.width)


REINGEST = "ingest the source again into a new archive (`resflow ingest SRC --out NEW.zarr`)"
"""The fix for a scene whose stored metadata was damaged or edited."""


def scene_attrs(root: zarr.Group, path: Path | str) -> list[tuple[str, dict[str, Any]]]:
    """``(name, attributes)`` of every scene group, sorted; a group whose ``zarr.json`` is
    not valid metadata is refused by its file, not as a bare JSON error."""
    try:
        return [(name, dict(group.attrs)) for name, group in sorted(root[SCENES].groups())]
    except (ValueError, TypeError, KeyError):  # find the group at fault
        pass
    store = root.store

    async def names() -> list[str]:
        return [name async for name in store.list_dir(SCENES) if name != "zarr.json"]

    found = []
    for name in sorted(sync(names())):
        try:
            group = zarr.open_group(store, path=f"{SCENES}/{name}", mode="r",
                                    use_consolidated=False)
        except (ValueError, TypeError, KeyError) as exc:
            raise InputError(storage.display(storage.join(path, SCENES, name, "zarr.json")),
                             f"the scene's metadata is not valid ({exc.__class__.__name__}: "
                             f"{exc})", REINGEST) from exc
        found.append((name, dict(group.attrs)))
    return found


def scene_info(path: Path | str, name: str, attrs: dict[str, Any]) -> SceneInfo:
    """The scene's :class:`SceneInfo`, refusing attributes that are missing or malformed."""
    where = storage.display(storage.join(path, SCENES, name, "zarr.json"))
    try:
        info = SceneInfo.from_attrs(attrs)
    except KeyError as exc:
        raise InputError(where, f"the scene's attribute {exc.args[0]!r} is missing",
                         REINGEST) from exc
    except (TypeError, ValueError) as exc:
        raise InputError(where, f"the scene's attributes are malformed ({exc})",
                         REINGEST) from exc
    if info.height < 1 or info.width < 1 or info.chip < 1:
        raise InputError(where, f"the scene's size {info.height} x {info.width} or chip "
                         f"{info.chip} is not positive", REINGEST)
    return info


def open_root(path: Path | str, mode: str = "r") -> zarr.Group:
    """Open the root group of a resflow archive (a folder or a URL), refusing anything else
    with a clear error."""
    where = storage.display(path)
    if not storage.exists(path):
        raise InputError(where, "the archive does not exist",
                         "create it with `resflow ingest SRC... --out ARCHIVE.zarr`")
    try:
        root = zarr.open_group(storage.zarr_store(path, read_only=mode == "r"), mode=mode,
                               use_consolidated=False)
    except Exception as exc:  # zarr raises several types for a non-store folder
        raise InputError(where, f"not a Zarr store ({exc.__class__.__name__})",
                         "pass the .zarr folder written by `resflow ingest`") from exc
    if root.attrs.get("resflow_kind") != ARCHIVE_KIND:
        raise InputError(where, "not a resflow imagery archive",
                         "pass the .zarr folder written by `resflow ingest`")
    if mode == "r" and root.attrs.get("format") != FORMAT_VERSION:
        raise InputError(where, f"archive format {root.attrs.get('format')} predates "
                         f"working ground resolutions (this resflow reads format "
                         f"{FORMAT_VERSION})", "re-ingest the sources with `resflow ingest`")
    return root
