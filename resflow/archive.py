"""The imagery archive: one Zarr v3 store holding many scenes, read chip by chip.

Layout written by :func:`resflow.ingest.ingest`::

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

import asyncio
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.api.asynchronous
from zarr.core.sync import sync

from resflow import storage
from resflow.chips import (
    ChipPixels,
    ChipRef,
    SourceChip,
    chip_grid,
    chip_runs,
    grid_shape,
    halo_indices,
    shard_chip_window,
    window_km2,
)
from resflow.errors import InputError
from resflow.harmonise import Scaling, valid_mask
from resflow.windows import Window

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


class Archive:
    """A read-only view of an imagery archive written by :func:`resflow.ingest.ingest`.

    Picklable (only the path and metadata travel), so it can be shipped to workers; array
    handles are reopened lazily on each side.

    Examples
    --------
    >>> arc = Archive.open("archive.zarr")                       # doctest: +SKIP
    >>> refs = arc.chips()                                         # doctest: +SKIP
    >>> arc.read_chip(refs[0], halo=32).image.shape                # doctest: +SKIP
    (3, 320, 320)
    """

    def __init__(self, path: Path | str, scenes: dict[str, SceneInfo], refused: list[dict],
                 skipped: dict[str, SceneInfo] | None = None) -> None:
        self.path = path
        self.scenes = scenes
        self.refused = refused
        self.skipped = skipped or {}
        self._arrays: dict[str, zarr.Array] = {}
        self._valid: dict[str, np.ndarray] = {}
        self._scalings: dict[str, Scaling] = {}
        self._present: set[str] = set()
        self._store: Any = None

    @property
    def display(self) -> str:
        """The archive's location as messages show it (never with credentials)."""
        return storage.display(self.path)

    def _zarr_store(self) -> Any:
        if self._store is None:
            self._store = storage.zarr_store(self.path, read_only=True)
        return self._store

    @classmethod
    def open(cls, path: storage.Location) -> Archive:
        """Open an archive; only complete scenes are listed, in ``scenes`` when they are
        mapped and in ``skipped`` when they are too coarse (:mod:`resflow.resolution`).
        A scene is complete once its ``complete`` attribute is true, written last, so an
        interrupted ingest never yields a scene that looks finished.

        Raises
        ------
        InputError
            if the path is not a resflow archive of this format.
        """
        path = storage.normalise(path)
        root = open_root(path)
        scenes: dict[str, SceneInfo] = {}
        skipped: dict[str, SceneInfo] = {}
        if SCENES in root:
            for name, attrs in _scene_attrs(root, path):
                if attrs.get("complete") is True:
                    info = _scene_info(path, name, attrs)
                    (skipped if info.skip else scenes)[name] = info
        return cls(path, scenes, list(root.attrs.get("refused", [])), skipped)

    def check(self) -> None:
        """Refuse, before any work, a scene whose stored arrays do not match its attributes
        (an edited ``zarr.json``, a deleted ``valid_fraction``): one error naming the file,
        instead of a failure in every task that reads the scene. Reads every scene's array
        metadata together, so it is for the driver, not for each worker.

        Raises
        ------
        InputError
            naming the scene's array and what does not match.
        """
        store = self._zarr_store()
        names = sorted(self.scenes)

        async def meta(scene: str, array: str) -> Any:
            try:
                return await zarr.api.asynchronous.open_array(
                    store=store, path=f"{SCENES}/{scene}/{array}", mode="r")
            except Exception as exc:  # missing or malformed metadata: named below
                return exc

        async def read_all() -> list[Any]:
            return await asyncio.gather(*(meta(scene, array) for scene in names
                                          for array in ("image", VALID)))

        opened = iter(sync(read_all()))
        for scene in names:
            info = self.scenes[scene]
            image, valid = next(opened), next(opened)
            wanted = {"image": ((len(info.band_names), info.height, info.width),
                                (len(info.band_names), info.chip, info.chip)),
                      VALID: (grid_shape(info.height, info.width, info.chip), None)}
            for array, found in (("image", image), (VALID, valid)):
                where = storage.display(storage.join(self.path, SCENES, scene, array,
                                                     "zarr.json"))
                if isinstance(found, Exception):
                    raise InputError(where, f"the scene's {array} array cannot be opened "
                                     f"({found.__class__.__name__}: {found})", REINGEST)
                shape, chunks = wanted[array]
                if found.shape != shape or (chunks and found.chunks != chunks):
                    raise InputError(where, f"the {array} array is {found.shape} in chunks "
                                     f"{found.chunks}, but the scene's attributes say "
                                     f"{shape}" + (f" in chunks {chunks}" if chunks else ""),
                                     REINGEST)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "scenes": self.scenes, "refused": self.refused,
                "skipped": self.skipped}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["scenes"], state["refused"],  # type: ignore[misc]
                      state["skipped"])

    def image(self, scene: str) -> zarr.Array:
        """The raw ``(band, y, x)`` source-dtype array of a scene."""
        if scene not in self._arrays:
            self._scene(scene)
            self._arrays[scene] = zarr.open_array(self._zarr_store(),
                                                  path=f"{SCENES}/{scene}/image", mode="r")
        return self._arrays[scene]

    def prefetch(self, scenes: Iterable[str]) -> None:
        """Open the scenes' pixel arrays and read their valid fractions, those not held yet,
        all together: one round trip through zarr's I/O loop for a task's scenes instead of
        three a scene, which is most of what a small scene costs a task."""
        wanted = [scene for scene in dict.fromkeys(scenes)
                  if scene not in self._arrays or scene not in self._valid]
        if not wanted:
            return
        for scene in wanted:
            self._scene(scene)  # an unknown scene is named before anything is read
        store = self._zarr_store()

        async def fetch(scene: str) -> tuple[Any, np.ndarray]:
            image, valid = await asyncio.gather(*(
                zarr.api.asynchronous.open_array(store=store, path=f"{SCENES}/{scene}/{name}",
                                                 mode="r") for name in ("image", VALID)))
            return image, np.asarray(await valid.getitem(...))

        async def fetch_all() -> list[tuple[Any, np.ndarray]]:
            return await asyncio.gather(*(fetch(scene) for scene in wanted))

        for scene, (image, valid) in zip(wanted, sync(fetch_all()), strict=True):
            self._arrays.setdefault(scene, zarr.Array(image))
            self._valid.setdefault(scene, valid)

    def chips(self, scenes: Iterable[str] | None = None) -> list[ChipRef]:
        """Chip references tiling the given scenes (all by default) exactly once.

        Ordered by scene name, then row-major. Footprints are in km^2.
        """
        refs: list[ChipRef] = []
        for name in sorted(self.scenes) if scenes is None else scenes:
            info = self._scene(name)
            refs.extend(self._ref(info, row, col)
                        for row, col, *_ in chip_grid(info.height, info.width, info.chip))
        return refs

    def shard_chips(self, scene: str, shard: int, shard_chips: int) -> list[ChipRef]:
        """The chips of one output shard (``shard_chips x shard_chips`` chips, row-major
        index ``shard`` on the scene's shard grid), row-major: what one task writes."""
        info = self._scene(scene)
        r0, r1, c0, c1 = shard_chip_window(shard, info.height, info.width, info.chip,
                                           shard_chips)
        return [self._ref(info, row, col) for row in range(r0, r1) for col in range(c0, c1)]

    def scaling(self, scene: str) -> Scaling:
        """How the scene's stored pixels become the models' input (made once per process)."""
        if scene not in self._scalings:
            info = self._scene(scene)
            self._scalings[scene] = Scaling.of(info.dtype, info.rgb, info.stats)
        return self._scalings[scene]

    def _valid_fraction(self, scene: str) -> np.ndarray:
        """Share of valid pixels per chip of a scene, read once per process."""
        if scene not in self._valid:
            self._valid[scene] = np.asarray(zarr.open_array(
                self._zarr_store(), path=f"{SCENES}/{scene}/{VALID}", mode="r")[...])
        return self._valid[scene]

    def _ref(self, info: SceneInfo, row: int, col: int) -> ChipRef:
        y0, x0 = row * info.chip, col * info.chip
        h, w = min(info.chip, info.height - y0), min(info.chip, info.width - x0)
        return ChipRef(scene=info.name, row=row, col=col, y0=y0, x0=x0, height=h, width=w,
                       chip=info.chip, km2=window_km2(info.transform, info.crs_wkt, y0, x0, h, w),
                       valid_fraction=float(self._valid_fraction(info.name)[row, col]))

    def read_chip(self, ref: ChipRef, halo: int = 0) -> ChipPixels:
        """Read one chip plus ``halo`` pixels of context, harmonised to the models' input.

        The result is always ``(3, chip + 2*halo, chip + 2*halo)``: beyond the scene edge the
        pixels are reflected as with dask's ``boundary="reflect"`` (see :mod:`resflow.chips`).
        """
        return self.read_chips([ref], halo)[0]

    def read_chips(self, refs: Sequence[ChipRef], halo: int = 0) -> list[ChipPixels]:
        """:meth:`read_chip` for many chips, in the order given, decoding each chunk once."""
        return [chip.harmonised() for chip in self.read_sources(refs, halo)]

    def read_sources(self, refs: Sequence[ChipRef], halo: int = 0) -> list[SourceChip]:
        """Chips read with ``halo`` pixels of context, in the order given, as stored: the
        inference graph sends them to its models this way and harmonises them there.

        Chips side by side in one chip row of a scene form a *run* read as one slab: a chip
        with a halo spans 3 x 3 chunks, and neighbours share 6 of them, so a run of ``n``
        chips decodes ``3 (n + 2)`` chunks instead of ``9 n``. Beyond the scene edge pixels
        are reflected (see :mod:`resflow.chips`); validity is judged on every stored band.

        Every chunk of ``image`` is stored, fill-valued ones too, so a chunk missing where a
        chip holds valid pixels is a loss, refused when read (a chip failure, not fill read
        as pixels).
        """
        chips: dict[int, SourceChip] = {}
        for run in chip_runs(refs):
            first = refs[run[0]]
            info = self._scene(first.scene)
            scaling = self.scaling(first.scene)
            span = (refs[run[-1]].col - first.col + 1) * first.chip
            rows = halo_indices(first.y0, first.chip, halo, info.height)
            cols = halo_indices(first.x0, span, halo, info.width)
            r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
            slab = self._slab(first.scene, r0, r1, c0, c1)[:, rows - r0][:, :, cols - c0]
            valid = valid_mask(slab, info.nodata)
            used = slab[list(scaling.bands)]
            edge = first.chip + 2 * halo
            for i in run:
                x = (refs[i].col - first.col) * first.chip
                chips[i] = SourceChip(pixels=used[:, :, x:x + edge], valid=valid[:, x:x + edge],
                                      scaling=scaling)
        return [chips[i] for i in range(len(refs))]

    def read_window(self, window: Window, halo: int = 0) -> SourceChip:
        """A prediction window (:mod:`resflow.windows`) read with ``halo`` pixels of context,
        as stored: ``window.shape`` plus ``2 * halo`` each way, reflected beyond the scene
        edge as chip reads are, so a one-chip window reads exactly as that chip."""
        info = self._scene(window.scene)
        height, width = window.shape
        rows = halo_indices(window.y0, height, halo, info.height)
        cols = halo_indices(window.x0, width, halo, info.width)
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        slab = self._slab(window.scene, r0, r1, c0, c1)[:, rows - r0][:, :, cols - c0]
        scaling = self.scaling(window.scene)
        return SourceChip(pixels=slab[list(scaling.bands)], valid=valid_mask(slab, info.nodata),
                          scaling=scaling)

    def _slab(self, scene: str, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Stored pixels ``[:, r0:r1, c0:c1]`` of a scene, refusing to read a missing chunk.

        Zarr reads a chunk that is not stored as its fill value, which for a scene without
        nodata is a valid pixel value: a deleted chunk would map as "no buildings". Ingest
        stores every chunk, so a chunk whose chip holds valid pixels must be there; each one
        found is remembered for the process.

        Raises
        ------
        InputError
            naming the scene and the missing chunks.
        """
        image = self.image(scene)
        chip = self._scene(scene).chip
        valid = self._valid_fraction(scene)
        keys = [f"{SCENES}/{scene}/image/{image.metadata.encode_chunk_key((0, row, col))}"
                for row in range(r0 // chip, (r1 - 1) // chip + 1)
                for col in range(c0 // chip, (c1 - 1) // chip + 1) if valid[row, col] > 0]
        unknown = [key for key in keys if key not in self._present]
        if unknown:
            store = self._zarr_store()

            async def exist() -> list[bool]:
                return await asyncio.gather(*(store.exists(key) for key in unknown))

            found = sync(exist())
            self._present.update(key for key, ok in zip(unknown, found, strict=True) if ok)
            missing = [key for key, ok in zip(unknown, found, strict=True) if not ok]
            if missing:
                raise InputError(f"{self.display}: scene '{scene}'", f"{len(missing)} chunk(s) "
                                 f"holding its pixels are missing ({', '.join(missing[:3])}), "
                                 "so those pixels would read as fill values",
                                 "restore the archive from where it was copied, or ingest the "
                                 "source into a new archive; then `resflow run ... --resume` "
                                 "maps the chips that failed")
        return np.asarray(image[:, r0:r1, c0:c1])

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description: scenes, bands, CRS, resolution, chips, km^2, refusals.

        Per scene, ``rgb`` indexes the stored ``bands`` from 0, while ``band_numbers`` (each
        stored band's) and ``rgb_bands`` (those feeding R, G, B) are the source's 1-based
        band numbers, as ``--rgb`` takes them; ``mask`` and ``alpha_band`` say what marked
        pixels invalid besides nodata (:class:`SceneInfo`)."""
        scenes = []
        for info in self.scenes.values():
            rows, cols = -(-info.height // info.chip), -(-info.width // info.chip)
            crs = _crs_name(info.crs_wkt)
            scenes.append({
                "name": info.name, "source": info.source, "height": info.height,
                "width": info.width, "bands": list(info.band_names), "dtype": info.dtype,
                "nodata": info.nodata, "crs": crs, "resolution": list(info.resolution),
                "chip": info.chip, "chips": rows * cols, "km2": round(info.km2, 6),
                "rgb": list(info.rgb), "gsd_m": info.gsd_m, "source_gsd_m": info.source_gsd_m,
                "resampling": info.resampling, "band_numbers": list(info.source_bands),
                "rgb_bands": [info.source_bands[i] for i in info.rgb], "mask": info.mask,
                "alpha_band": info.alpha_band,
            })
        return {"path": self.display, "kind": ARCHIVE_KIND, "scenes": scenes,
                "skipped": self.skipped_records(), "refused": self.refused}

    def skipped_records(self) -> list[dict[str, Any]]:
        """One ``{"name", "source", "source_gsd_m", "reason"}`` per scene not mapped."""
        return [{"name": s.name, "source": s.source, "source_gsd_m": s.source_gsd_m,
                 "reason": s.skip} for s in self.skipped.values()]

    def _scene(self, name: str) -> SceneInfo:
        try:
            return self.scenes[name]
        except KeyError:
            raise InputError(f"{self.display}: scene '{name}'", "no complete scene of that name",
                             f"use one of {sorted(self.scenes)} or re-run `resflow ingest`"
                             ) from None


REINGEST = "ingest the source again into a new archive (`resflow ingest SRC --out NEW.zarr`)"
"""The fix for a scene whose stored metadata was damaged or edited."""


def _scene_attrs(root: zarr.Group, path: Path | str) -> list[tuple[str, dict[str, Any]]]:
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


def _scene_info(path: Path | str, name: str, attrs: dict[str, Any]) -> SceneInfo:
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


def _crs_name(crs_wkt: str) -> str:
    from pyproj import CRS

    crs = CRS.from_wkt(crs_wkt)
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.name
