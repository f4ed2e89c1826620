"""The imagery archive read chip by chip: :class:`Archive`, a read-only view of the Zarr v3
store of many scenes that :func:`resflow.ingestion.ingest` writes.

Its layout and each scene's metadata (:class:`~resflow.archive_layout.SceneInfo`) are
described in :mod:`resflow.archive_layout`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.api.asynchronous
from zarr.core.sync import sync

from resflow import storage
from resflow.archive_layout import (
    ARCHIVE_KIND,
    REINGEST,
    SCENES,
    VALID,
    SceneInfo,
    open_root,
    scene_attrs,
    scene_info,
)
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
from resflow.errors import InputError, ResflowError
from resflow.harmonise import Scaling, valid_mask
from resflow.windows import Window


class Archive:
    """A read-only view of an imagery archive written by :func:`resflow.ingestion.ingest`.

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
            for name, attrs in scene_attrs(root, path):
                if attrs.get("complete") is True:
                    info = scene_info(path, name, attrs)
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

    def holds(self, scene: str, sha256: str | None, shape: tuple[int, int]) -> bool:
        """Whether this archive still holds the very scene a run mapped (same checksum and
        size), so its pixels may be drawn or masked under that run's maps."""
        info = self.scenes.get(scene)
        return info is not None and info.sha256 == sha256 and (info.height, info.width) == shape

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


def recorded_archive(recorded: str | None, out: Path) -> Archive | None:
    """The archive a run recorded if it is still a readable archive there, else None.

    A relative path is as the run was given it: tried from here, then from the store's
    folder (``resflow run a.zarr --out maps.zarr`` run elsewhere). The scene checksums
    guard against picking up another archive of the same name.
    """
    if not recorded:
        return None
    for path in (Path(recorded), out.parent / recorded):
        if path.is_dir():
            try:
                return Archive.open(path)
            except ResflowError:
                return None
    return None


def _crs_name(crs_wkt: str) -> str:
    from pyproj import CRS

    crs = CRS.from_wkt(crs_wkt)
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.name
