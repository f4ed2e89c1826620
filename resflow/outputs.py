"""The output store: one georeferenced Zarr v3 group of building maps per input scene.

Layout of ``OUT`` (a Zarr v3 store: a local folder or an object-storage URL)::

    OUT/zarr.json               root attrs: resflow_kind="output", complete, scenes,
                                shard_chips, bucket_models, run_config, run_report (once
                                complete); consolidated metadata of every group for xarray
    OUT/run_report.json         the run report, written by :meth:`OutputStore.finalize`
    OUT/stac/collection.json    a STAC Collection of the maps, written after a local run
                                (:mod:`resflow.stac`; not a Zarr node, readers skip it)
    OUT/<group>/probability     uint8 (y, x): probability x 254 in 0..254; 255 = not mapped
    OUT/<group>/mask            uint8 (y, x): 1 = building, 0 = background; 255 = not mapped
    OUT/<group>/chip_bucket     int16 (chip_row, chip_col): the bucket that served each chip,
                                -1 = no valid pixel (skipped), -2 = not written yet
    OUT/<group>/x, y            pixel-centre coordinates in the scene CRS
    OUT/<group>/spatial_ref     CF grid mapping: crs_wkt, spatial_ref and GDAL GeoTransform

Each group has the grid, CRS and transform of its archive scene. ``probability`` and
``mask`` are chunked on the scene's chip grid and **sharded**: ``shard_chips x
shard_chips`` chips are one object per array, so a scene of ``n`` chips is about
``3 n / shard_chips^2`` objects, not ``3 n``. A shard is the unit of writing: one task
assembles a whole shard and writes it at once (never a read-modify-write, never two writers),
and a re-executed task rewrites identical bytes.

Not mapped is not "no building": pixels outside the scene's data, and chips never written,
hold the fill value 255, which the CF attributes (``_FillValue``, ``scale_factor`` 1/254,
``add_offset`` 0) declare, so ``xarray.open_zarr(OUT, group=...)`` gives probabilities as
floats in ``[0, 1]`` with NaN where nothing was mapped.

``chip_bucket`` is also the ledger: it is chunked by shard, and a shard's block is written
after its pixels, so a chip counts as done only once its pixels are stored. ``--resume``
re-runs the shards that hold a chip still at -2; resume state is one small object per shard.

Metadata is written in bulk when the store is made (every scene's group built in memory,
then stored in concurrent batches), and workers open only the arrays they write; the
consolidated root document is for readers such as xarray, never parsed by a task. Making a
store writes metadata only: each scene's ``x`` and ``y`` values are written by the task
that writes its first shard.

``xarray.open_zarr(OUT, group=...)`` reads a group with ``spatial_ref`` as a coordinate,
and rioxarray's ``.rio.crs`` / ``.rio.transform()`` recover the scene georeferencing.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
import zarr.api.asynchronous
from zarr.core.sync import sync

from resflow import storage
from resflow.chips import grid_shape, shard_chip_window
from resflow.errors import ResflowError
from resflow.paths import confined
from resflow.redaction import redact
from resflow.report import REPORT_NAME

if TYPE_CHECKING:
    from resflow.archive import Archive, SceneInfo
    from resflow.chips import ChipRef

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
#: Scenes whose groups are built in memory and stored together while creating a store.
METADATA_BATCH = 256
# Run settings that change the pixels: a resumed run must use the same ones.
PIXEL_SETTINGS = ("gallery", "halo", "window", "threshold", "min_building_m2", "split_dip")
#: What outputs made before a pixel setting existed used: they split no roofs and mapped
#: chip by chip.
PIXEL_SETTINGS_BEFORE = {"split_dip": 0.0, "window": 1}
_RESERVED = frozenset({"zarr.json", REPORT_NAME, STAC_FOLDER})


class OutputComplete(ResflowError):
    """``--resume`` over an output that is already complete: there is nothing to do."""


def quantise(probability: np.ndarray) -> np.ndarray:
    """Probability in ``[0, 1]`` to uint8 ``0..254`` (255 is reserved for not mapped).

    >>> quantise(np.array([0.0, 0.5, 1.0, 2.0])).tolist()
    [0, 127, 254, 254]
    """
    return np.rint(np.clip(probability, 0.0, 1.0) * PROBABILITY_SCALE).astype(np.uint8)


def quantised_threshold(threshold: float) -> float:
    """The probability threshold on the stored 0..254 scale (a pixel is building above it)."""
    return threshold * PROBABILITY_SCALE


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


def _group_names(scene_names: Iterable[str]) -> dict[str, str]:
    """Map archive scene names to unique, safe group names (``_2``, ``_3`` on collision)."""
    taken: set[str] = set(_RESERVED)
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


def _checked_groups(out: Path | str, scenes: Any) -> dict[str, str]:
    """The store's ``scenes`` attribute (scene name -> group), refused unless every group is
    a name :func:`_group_names` could have made: exports turn group names into file names
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
    taken: set[str] = set(_RESERVED)
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


def _read_root(location: Path | str) -> dict[str, Any] | None:
    """The root ``zarr.json`` document of a store, or None if there is none (or not JSON)."""
    try:
        return json.loads(storage.read_bytes(storage.join(location, "zarr.json")))
    except (OSError, ValueError):
        return None


#: Bytes of the root document read first for its attributes (doubled until they are whole).
ATTRIBUTES_PREFIX = 1 << 20


def read_root_attrs(location: Path | str) -> dict[str, Any] | None:
    """Root attributes of a Zarr v3 store (a folder or a URL), or None if it is not one.

    resflow writes ``attributes`` before the consolidated metadata of every group, so
    only the head of the root document is read and parsed: a worker opening the store of a
    country-wide run never parses the metadata of all its scenes. A document laid out
    otherwise (rewritten by another tool) is parsed whole.
    """
    document = storage.join(location, "zarr.json")
    size = ATTRIBUTES_PREFIX
    while True:
        try:
            head = storage.read_prefix(document, size).decode("utf-8", errors="ignore")
        except OSError:
            return None
        attrs = _leading_attributes(head)
        if attrs is not None:
            return attrs
        if len(head) < size:  # the whole document is here: parse it as zarr would
            root = _read_root(location)
            return None if root is None else root.get("attributes", {})
        size *= 2


def _leading_attributes(head: str) -> dict[str, Any] | None:
    """The root's ``attributes`` object if ``head`` holds all of it before anything else
    that could contain the same key (resflow's own layout), else None."""
    key = head.find('"attributes"')
    if key < 0 or '"consolidated_metadata"' in head[:key]:
        return None
    start = head.find(":", key) + 1
    while start < len(head) and head[start].isspace():
        start += 1
    try:
        value, _ = json.JSONDecoder().raw_decode(head, start)
    except ValueError:  # cut off: read more
        return None
    return value if isinstance(value, dict) else None


def _update_root_attrs(location: Path | str, updates: dict[str, Any]) -> None:
    """Rewrite the root document with ``updates`` merged into its attributes, keeping its
    consolidated metadata: one whole-object write, so readers see the old or the new."""
    root = _read_root(location)
    if root is None:
        raise ResflowError(storage.display(location), "the output's root zarr.json is gone",
                           "run again with --overwrite")
    root.setdefault("attributes", {}).update(json.loads(json.dumps(updates, default=str)))
    storage.write_bytes(storage.join(location, "zarr.json"), json.dumps(root).encode())


def _scene_arrays(g: zarr.Group, height: int, width: int, chip: int,
                  shard_chips: int) -> None:
    """Create one scene's arrays in ``g``; ``spatial_ref``'s attributes are the scene's own
    and are set per scene by :func:`_scene_documents`."""
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


def _scene_documents(group: str, info: SceneInfo, shard_chips: int,
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


def _store_batch(location: Path | str, documents: dict[str, bytes]) -> None:
    """Write many small objects at once: concurrently to an object store (fsspec ``pipe``),
    by a thread pool to a local folder."""
    if isinstance(location, Path):
        def put(item: tuple[str, bytes]) -> None:
            target = location / item[0]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(item[1])

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(put, documents.items()))
        return
    fs, root = storage.filesystem(location)
    fs.pipe({f"{root}/{key}": value for key, value in documents.items()})


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def write_hierarchy(location: Path | str, root_attrs: dict[str, Any],
                    scenes: Iterable[tuple[str, SceneInfo]], *, shard_chips: int,
                    threshold: float | None) -> int:
    """Create the store's metadata for every scene, in bulk.

    Each scene's documents come from a per-grid template (:func:`_array_documents`), and
    :data:`METADATA_BATCH` scenes at a time are stored with one concurrent write; the root
    document, with every group's metadata consolidated for readers, is written last, so a
    store that lacks it was never finished. Returns the number of objects written.
    """
    consolidated: dict[str, Any] = {}
    written = 0
    for batch in _batches(scenes, METADATA_BATCH):
        documents: dict[str, Any] = {}
        for group, info in batch:
            documents.update(_scene_documents(group, info, shard_chips, threshold))
        consolidated.update(documents)
        _store_batch(location, {f"{path}/zarr.json": json.dumps(document).encode()
                                for path, document in documents.items()})
        written += len(documents)
    document = {"zarr_format": 3, "node_type": "group", "attributes": root_attrs,
                "consolidated_metadata": {"kind": "inline", "must_understand": False,
                                          "metadata": consolidated}}
    storage.write_bytes(storage.join(location, "zarr.json"),
                        json.dumps(document, default=str).encode())
    return written + 1


Write = tuple[zarr.Array, Any, np.ndarray]
"""``(array, selection, values)``: one write into an array of the store."""


def _write_together(writes: Sequence[Write]) -> list[Exception | None]:
    """Write ``writes`` concurrently, in one round trip through zarr's I/O loop; each one's
    error (``None``: written), once all have finished."""
    async def write_all() -> list[Any]:
        return await asyncio.gather(*(array.async_array.setitem(selection, values)
                                      for array, selection, values in writes),
                                    return_exceptions=True)

    outcomes = sync(write_all()) if writes else []
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
            raise outcome  # an interrupt, not a failed write
    return [outcome if isinstance(outcome, Exception) else None for outcome in outcomes]


@dataclass(frozen=True)
class ShardWrite:
    """One whole shard of a scene on its way to the store (:meth:`OutputStore.write_shards`).

    Attributes
    ----------
    scene, shard
        The scene and the shard's row-major index on its shard grid.
    refs
        The shard's chips that were mapped; every other chip of the shard is stored as
        not mapped (255), which is what a chip without valid pixels is.
    probabilities, masks
        uint8 ``(ref.height, ref.width)`` per chip: :func:`quantise`'d probability and
        the building mask (0/1; :func:`resflow.masks.building_mask`), where invalid
        pixels already hold :data:`NOT_MAPPED`.
    buckets
        Per chip, its bucket, or :data:`NO_DATA_CHIP` for a chip without valid pixels
        (whose pixels stay not mapped), or :data:`UNWRITTEN` for a chip that failed.
    transform
        The scene's affine ``(a, b, c, d, e, f)``, for the coordinates written with
        shard 0 (read from ``spatial_ref`` when not given).
    """

    scene: str
    shard: int
    refs: Sequence[ChipRef]
    probabilities: Sequence[np.ndarray]
    masks: Sequence[np.ndarray]
    buckets: Sequence[int]
    transform: tuple[float, ...] | None = None

    def arrays(self) -> tuple[str, ...]:
        """The scene's arrays this shard writes: the coordinates come with shard 0."""
        return ("probability", "mask", LEDGER, *(("x", "y") if self.shard == 0 else ()))


@dataclass
class OutputStore:
    """A resflow output store: create it once on the driver, open it cheaply on workers.

    Attributes
    ----------
    path
        The store: a local :class:`~pathlib.Path` or an object-storage URL.
    groups
        Archive scene name -> safe group name inside the store.
    shard_chips
        Edge of a shard in chips (the unit of writing and of resume state).
    """

    path: Path | str
    groups: dict[str, str]
    shard_chips: int = 1
    _arrays: dict[tuple[str, str], zarr.Array] = field(default_factory=dict, repr=False,
                                                      compare=False)

    def __getstate__(self) -> dict[str, Any]:
        """Ship only the location, the group map and the shard size; workers reopen arrays
        lazily."""
        return {"path": self.path, "groups": self.groups, "shard_chips": self.shard_chips}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path, self.groups = state["path"], state["groups"]
        self.shard_chips, self._arrays = state["shard_chips"], {}

    @property
    def display(self) -> str:
        """The store's location as messages show it (never with credentials)."""
        return storage.display(self.path)

    @classmethod
    def create(cls, out_path: storage.Location, archive: Archive, *, overwrite: bool = False,
               resume: bool = False, run_config: dict[str, Any], shard_chips: int = 1,
               bucket_models: dict[int, str] | None = None,
               gallery_version: str = "") -> OutputStore:
        """Create the output store for every scene of ``archive`` (or reopen it to resume).

        Parameters
        ----------
        out_path
            Location of the new Zarr v3 store (a folder or an object-storage URL).
        archive
            The imagery archive; each scene gets a group on its exact grid, CRS and transform.
        overwrite
            Delete an existing resflow output at ``out_path`` first.
        resume
            Reopen an existing, incomplete output made from the same scenes and pixel
            settings (``gallery``, ``halo``, ``threshold``, ``min_building_m2``); shards in
            its ledger are skipped by the caller through :meth:`done_shards`.
        run_config
            The exact run configuration (JSON-ready), kept in the root attributes.
        shard_chips
            Shard edge in chips for a new store (a resumed one keeps its own).
        bucket_models
            Bucket number -> the model that serves it (``"mono"``, ``"bucket-1"``), kept in
            the root attributes so every chip's model can be told from ``chip_bucket``.
        gallery_version
            The sha256 of the gallery's manifest, kept in the root attributes: a resumed
            output must be finished with the same gallery, not only the same location.

        Raises
        ------
        OutputComplete
            ``resume`` over a complete output: there is nothing to do.
        ResflowError
            ``out_path`` exists and neither flag is given, it is not a resflow output (never
            deleted), it is the archive itself, or a resumed output does not match.
        """
        out = storage.normalise(out_path)
        action = cls.check_target(out, archive, overwrite=overwrite, resume=resume,
                                  run_config=run_config, gallery_version=gallery_version)
        if action == "resume":
            return cls.open(out)
        if action == "overwrite":
            storage.remove_tree(out)
        return cls._new(out, archive, run_config, shard_chips, bucket_models or {},
                        gallery_version)

    @classmethod
    def check_target(cls, out_path: storage.Location, archive: Archive, *,
                     overwrite: bool = False, resume: bool = False,
                     run_config: dict[str, Any], gallery_version: str = "") -> str:
        """Every refusal of :meth:`create`, without writing anything.

        ``resflow run`` calls it before starting an engine, so a run that would be refused
        is refused before any work and leaves no output behind.

        Returns
        -------
        str
            ``"new"`` (nothing there yet), ``"resume"`` (an unfinished output to finish) or
            ``"overwrite"`` (an existing resflow output to replace).

        Raises
        ------
        OutputComplete, ResflowError
            As :meth:`create`.
        """
        out = storage.normalise(out_path)
        cls._refuse_archive_path(out, archive.path)
        if not storage.occupied(out):
            return "new"
        attrs = read_root_attrs(out)
        where = storage.display(out)
        if attrs is None or attrs.get("resflow_kind") != KIND:
            raise ResflowError(where, "the location exists and is not a resflow output, so "
                               "resflow will not write into or delete it",
                               "choose another output location or remove it yourself")
        if attrs.get("format_version") != FORMAT_VERSION:
            if resume and not overwrite:
                raise ResflowError(where, f"the output has format {attrs.get('format_version')},"
                                   f" this resflow writes format {FORMAT_VERSION}",
                                   "pass --overwrite to recompute it")
        elif resume and not overwrite:
            cls.open(out)._check_resumable(attrs, archive, run_config, gallery_version)
            return "resume"
        if not overwrite:
            state = "a complete" if attrs.get("complete") else "an unfinished"
            raise ResflowError(where, f"{state} resflow output already exists here",
                               "pass --resume to finish it or --overwrite to replace it")
        return "overwrite"

    @staticmethod
    def _refuse_archive_path(out: Path | str, archive_path: Path | str) -> None:
        """Refuse an output location that is, or contains, the input archive."""
        if isinstance(out, Path) and isinstance(archive_path, Path):
            out_r, arch_r = out.resolve(), archive_path.resolve()
            inside = arch_r == out_r or arch_r.is_relative_to(out_r)
        else:
            out_s, arch_s = str(out).rstrip("/"), str(archive_path).rstrip("/")
            inside = arch_s == out_s or arch_s.startswith(out_s + "/")
        if inside:
            raise ResflowError(storage.display(out), "the output location is the input "
                               "archive or contains it", "choose an output outside the archive")

    @classmethod
    def _new(cls, out: Path | str, archive: Archive, run_config: dict[str, Any],
             shard_chips: int, bucket_models: dict[int, str],
             gallery_version: str) -> OutputStore:
        groups = _group_names(archive.scenes)
        if isinstance(out, Path):
            for group in groups.values():
                if not (out / group).resolve().is_relative_to(out.resolve()):
                    raise ResflowError(group, "a scene group would leave the output directory",
                                       "rename the scene in the archive")
        attrs = {
            "resflow_kind": KIND, "format_version": FORMAT_VERSION, "complete": False,
            "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "archive": storage.display(archive.path), "scenes": groups,
            "shard_chips": shard_chips,
            "bucket_models": {str(b): m for b, m in sorted(bucket_models.items())},
            "run_config": redact(run_config), "gallery_version": gallery_version,
        }
        write_hierarchy(out, attrs, ((groups[name], info) for name, info in
                                     archive.scenes.items()),
                        shard_chips=shard_chips, threshold=run_config.get("threshold"))
        return cls(out, groups, shard_chips)

    def _check_resumable(self, attrs: dict[str, Any], archive: Archive,
                         run_config: dict[str, Any], gallery_version: str) -> None:
        if attrs.get("complete"):
            raise OutputComplete(self.display, "the output is already complete, so there is "
                                 "nothing to resume", "use --overwrite to recompute it, or "
                                 f"`resflow info {self.display}` to see it")
        if set(self.groups) != set(archive.scenes):
            raise ResflowError(self.display, "the output was made from other scenes than "
                               "this archive holds", "resume with the original archive or "
                               "pass --overwrite")
        for name, info in archive.scenes.items():
            probability = self.read_array(name, "probability")
            if probability.shape != (info.height, info.width) or \
                    probability.chunks != (info.chip, info.chip):
                raise ResflowError(f"{self.display}/{self.groups[name]}", "the scene grid "
                                   "differs from the archive's", "pass --overwrite to "
                                   "recompute it")
        previous = PIXEL_SETTINGS_BEFORE | attrs.get("run_config", {})
        run_config = redact(run_config)  # as it was stored: secrets masked
        for key in PIXEL_SETTINGS:
            if key in previous and key in run_config and previous[key] != run_config[key]:
                raise ResflowError(f"{self.display}: run_config.{key}", f"the output was "
                                   f"started with {key}={previous[key]!r}, not "
                                   f"{run_config[key]!r}", f"resume with {key}="
                                   f"{previous[key]!r} or pass --overwrite")
        started = attrs.get("gallery_version", "")
        if started and gallery_version and started != gallery_version:
            raise ResflowError(f"{self.display}: gallery_version", "the output was started "
                               f"with another version of its gallery (manifest sha256 "
                               f"{started[:12]}, now {gallery_version[:12]}), and one map "
                               "must not mix two galleries' models", "resume with the "
                               "gallery it was started with, or pass --overwrite")

    @classmethod
    def open(cls, out_path: storage.Location) -> OutputStore:
        """Open an existing output for writing chips: reads only the root attributes.

        Raises
        ------
        ResflowError
            ``out_path`` is not a resflow output store of this format.
        """
        out = storage.normalise(out_path)
        attrs = read_root_attrs(out)
        if attrs is None or attrs.get("resflow_kind") != KIND:
            raise ResflowError(storage.display(out), "not a resflow output store (no "
                               "resflow_kind='output' in zarr.json)",
                               "check the location, or run `resflow run` to make one")
        if attrs.get("format_version") != FORMAT_VERSION:
            raise ResflowError(storage.display(out), f"output format "
                               f"{attrs.get('format_version')} is not this resflow's "
                               f"{FORMAT_VERSION}", "recompute it with `resflow run "
                               "--overwrite`")
        return cls(out, _checked_groups(out, attrs.get("scenes")), int(attrs["shard_chips"]))

    def _group(self, scene: str) -> str:
        if scene not in self.groups:
            raise ResflowError(f"{self.display}: scene {scene!r}", "the scene has no group in "
                               "this output", f"use one of {sorted(self.groups)}")
        return self.groups[scene]

    def _zarr_store(self, *, read_only: bool) -> Any:
        return storage.zarr_store(self.path, read_only=read_only)

    def _open_all(self, arrays: Iterable[tuple[str, str]]) -> None:
        """Open the ``(scene, array)`` read-write handles not yet cached (a worker opens each
        array's metadata once), all together: one round trip through zarr's I/O loop instead
        of one per array, which is most of a small scene's cost."""
        missing = list(dict.fromkeys(key for key in arrays if key not in self._arrays))
        if not missing:
            return
        store = self._zarr_store(read_only=False)
        paths = [f"{self._group(scene)}/{name}" for scene, name in missing]

        async def open_all() -> list[Any]:
            return await asyncio.gather(*(
                zarr.api.asynchronous.open_array(store=store, path=path, mode="r+",
                                                 zarr_format=3) for path in paths))

        for key, opened in zip(missing, sync(open_all()), strict=True):
            self._arrays[key] = zarr.Array(opened)

    def read_array(self, scene: str, name: str) -> zarr.Array:
        """A read-only handle on one array (``probability``, ``mask``, ``chip_bucket``...)
        of a scene."""
        return zarr.open_array(self._zarr_store(read_only=True),
                               path=f"{self._group(scene)}/{name}", mode="r", zarr_format=3)

    def georeference(self, scene: str) -> tuple[str, tuple[float, ...]]:
        """The scene's CRS as WKT and its affine ``(a, b, c, d, e, f)`` (rasterio order)."""
        attrs = self.read_array(scene, "spatial_ref").attrs
        c, a, b, f, d, e = (float(v) for v in attrs["GeoTransform"].split())
        return str(attrs["crs_wkt"]), (a, b, c, d, e, f)

    def bucket_models(self) -> dict[int, str]:
        """Bucket number -> the model that served its chips (from the root attributes)."""
        attrs = read_root_attrs(self.path) or {}
        return {int(b): m for b, m in attrs.get("bucket_models", {}).items()}

    @property
    def complete(self) -> bool:
        """True once :meth:`finalize` has run."""
        return bool((read_root_attrs(self.path) or {}).get("complete"))

    def write_shard(self, scene: str, shard: int, refs: Sequence[ChipRef],
                    probabilities: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                    buckets: Sequence[int], transform: tuple[float, ...] | None = None
                    ) -> None:
        """Write one whole shard (the fields of :class:`ShardWrite`), raising its error.

        Writing a shard twice writes identical bytes, so re-executed tasks are harmless.
        """
        errors = self.write_shards([ShardWrite(scene, shard, refs, probabilities, masks,
                                               buckets, transform)])
        if errors:
            raise errors[0]

    def write_shards(self, shards: Sequence[ShardWrite]) -> dict[int, Exception]:
        """Write whole shards, of any scenes: every shard's pixels (and the coordinates that
        come with a scene's first shard) in one round trip through zarr's I/O loop, then, in
        a second, the ledger blocks of the shards whose pixels were all written.

        A task writes its partition's shards this way, so a partition of many small scenes
        costs three round trips (arrays opened, pixels, ledgers), not three per scene.

        Returns
        -------
        dict
            Index into ``shards`` -> the error of each shard not written, whose ledger
            block is left untouched (its chips stay unwritten). Empty when all were.
        """
        errors: dict[int, Exception] = {}
        try:
            self._open_all((s.scene, name) for s in shards for name in s.arrays())
        except Exception as exc:  # nothing can be written without the arrays
            return dict.fromkeys(range(len(shards)), exc)
        pixels: list[tuple[int, Write]] = []
        ledgers: dict[int, Write] = {}
        for index, shard in enumerate(shards):
            try:
                writes, ledgers[index] = self._shard_writes(shard)
            except Exception as exc:  # a chip that does not fit its shard
                errors[index] = exc
                continue
            pixels.extend((index, write) for write in writes)
        for (index, _), error in zip(pixels, _write_together([w for _, w in pixels]),
                                     strict=True):
            if error is not None:
                errors.setdefault(index, error)
        # last: a shard is done once its pixels are
        done = [index for index in ledgers if index not in errors]
        for index, error in zip(done, _write_together([ledgers[i] for i in done]),
                                strict=True):
            if error is not None:
                errors[index] = error
        return errors

    def _shard_writes(self, write: ShardWrite) -> tuple[list[Write], Write]:
        """The pixel writes of one shard (its scene's coordinates with shard 0) and its
        ledger write, from arrays already open."""
        probability_array, mask_array, ledger_array, *coordinates = (
            self._arrays[(write.scene, name)] for name in write.arrays())
        height, width = probability_array.shape
        chip = probability_array.chunks[0]
        r0, r1, c0, c1 = shard_chip_window(write.shard, height, width, chip, self.shard_chips)
        y0, x0 = r0 * chip, c0 * chip
        y1, x1 = min(height, r1 * chip), min(width, c1 * chip)
        probability = np.full((y1 - y0, x1 - x0), NOT_MAPPED, np.uint8)
        mask = np.full_like(probability, NOT_MAPPED)
        ledger = np.full((r1 - r0, c1 - c0), UNWRITTEN, np.int16)
        for ref, prob, chip_mask, bucket in zip(write.refs, write.probabilities, write.masks,
                                                write.buckets, strict=True):
            self._check_window(ref, prob, chip_mask, write.scene, (r0, r1, c0, c1), chip)
            ledger[ref.row - r0, ref.col - c0] = bucket
            if bucket >= 0:
                window = (slice(ref.y0 - y0, ref.y0 - y0 + ref.height),
                          slice(ref.x0 - x0, ref.x0 - x0 + ref.width))
                probability[window] = prob
                mask[window] = chip_mask
        region = np.s_[y0:y1, x0:x1]
        writes: list[Write] = [(probability_array, region, probability),
                               (mask_array, region, mask)]
        if coordinates:  # the scene's x and y come with its first shard
            a, _, c, _, e, f = (write.transform or self.georeference(write.scene)[1])[:6]
            writes += [(coordinates[0], np.s_[:], c + (np.arange(width) + 0.5) * a),
                       (coordinates[1], np.s_[:], f + (np.arange(height) + 0.5) * e)]
        return writes, (ledger_array, np.s_[r0:r1, c0:c1], ledger)

    def _check_window(self, ref: ChipRef, probability: np.ndarray, mask: np.ndarray,
                      scene: str, window: tuple[int, int, int, int], chip: int) -> None:
        """Refuse a chip that is not one whole chunk of this shard, before any write."""
        where = f"{self.display}: chip {ref.scene}/{ref.row}_{ref.col}"
        r0, r1, c0, c1 = window
        if ref.scene != scene or not (r0 <= ref.row < r1 and c0 <= ref.col < c1):
            raise ResflowError(where, f"the chip is not in shard rows {r0}..{r1 - 1}, cols "
                               f"{c0}..{c1 - 1} of scene {scene}", "plan shards with "
                               "resflow.planning")
        if probability.dtype != np.uint8 or probability.shape != (ref.height, ref.width):
            raise ResflowError(where, f"probability is {probability.dtype} {probability.shape}, "
                               f"expected uint8 {(ref.height, ref.width)}",
                               "quantise the chip's probability to uint8 and trim the halo")
        if mask.shape != probability.shape:
            raise ResflowError(where, f"mask is {mask.shape}, its probability {probability.shape}",
                               "trim the mask's halo as the probability's")
        if ref.y0 != ref.row * chip or ref.x0 != ref.col * chip:
            raise ResflowError(where, f"the window (y0={ref.y0}, x0={ref.x0}) is not chunk "
                               f"({ref.row}, {ref.col}) of the {chip}-pixel chip grid",
                               "plan chips with Archive.shard_chips()")

    def ledger(self, scene: str) -> np.ndarray:
        """The scene's ``chip_bucket`` grid (see the module docstring for its values).

        A ledger object that cannot be decoded (a process killed while writing it) counts as
        not written, so ``--resume`` maps its shard again instead of failing.
        """
        array = self.read_array(scene, LEDGER)
        try:
            return np.asarray(array[...])
        except Exception:  # one torn object: read shard by shard, the torn one as unwritten
            ledger = np.full(array.shape, UNWRITTEN, np.int16)
            step = self.shard_chips
            for r0 in range(0, array.shape[0], step):
                for c0 in range(0, array.shape[1], step):
                    block = np.s_[r0:r0 + step, c0:c0 + step]
                    try:
                        ledger[block] = array[block]
                    except Exception:
                        continue
            return ledger

    def ledgers(self, batch: int = 256) -> dict[str, tuple[np.ndarray, tuple[int, int], int]]:
        """Every scene's ledger (:meth:`ledger`), grid shape ``(height, width)`` in pixels
        and chip edge, read ``batch`` scenes at a time in one round trip through zarr's I/O
        loop each: what finishing or describing a run of many small scenes reads."""
        store = self._zarr_store(read_only=True)

        async def read(scene: str) -> tuple[np.ndarray | None, tuple[int, int], int]:
            group = self._group(scene)
            ledger, probability = await asyncio.gather(*(
                zarr.api.asynchronous.open_array(store=store, path=f"{group}/{name}",
                                                 mode="r", zarr_format=3)
                for name in (LEDGER, "probability")))
            try:
                values = np.asarray(await ledger.getitem(...))
            except Exception:  # a torn object: :meth:`ledger` reads it shard by shard
                values = None
            height, width = probability.shape
            return values, (int(height), int(width)), int(probability.chunks[0])

        async def read_all(scenes: list[str]) -> list[Any]:
            return await asyncio.gather(*(read(scene) for scene in scenes))

        found = {}
        for scenes in _batches(self.groups, batch):
            for scene, (values, shape, chip) in zip(scenes, sync(read_all(scenes)),
                                                    strict=True):
                found[scene] = (self.ledger(scene) if values is None else values, shape, chip)
        return found

    def done_shards(self, scene: str) -> set[int]:
        """Shards of ``scene`` whose every chip is written (mapped or skipped as empty)."""
        ledger = self.ledger(scene)
        done: set[int] = set()
        rows, cols = ledger.shape
        shard_cols = -(-cols // self.shard_chips)
        for sr in range(-(-rows // self.shard_chips)):
            for sc in range(shard_cols):
                block = ledger[sr * self.shard_chips:(sr + 1) * self.shard_chips,
                               sc * self.shard_chips:(sc + 1) * self.shard_chips]
                if (block != UNWRITTEN).all():
                    done.add(sr * shard_cols + sc)
        return done

    def done_chips(self) -> set[tuple[str, int, int]]:
        """Chips whose pixels are stored (or that hold no valid pixel), as
        ``(scene, row, col)``."""
        done: set[tuple[str, int, int]] = set()
        for scene, (ledger, _, _) in self.ledgers().items():
            rows, cols = np.nonzero(ledger != UNWRITTEN)
            done.update((scene, int(r), int(c)) for r, c in zip(rows, cols, strict=True))
        return done

    def finalize(self, report: dict[str, Any]) -> None:
        """Mark the store complete, after every chip is in the ledger.

        Writes ``report`` to ``OUT/run_report.json`` and as the root attribute ``run_report``,
        then sets ``complete: true``: the last write of a run, so an interrupted output never
        looks complete.

        Raises
        ------
        ResflowError
            Some chips are not in the ledger.
        """
        progress = describe(self.path)
        if progress["chips_done"] < progress["chips_total"]:
            missing = progress["chips_total"] - progress["chips_done"]
            raise ResflowError(self.display, f"{missing} of {progress['chips_total']} chips "
                               "are not written, so the output cannot be marked complete",
                               "run again with --resume to finish them")
        self._keep_report(report, complete=True)

    def record_unfinished(self, report: dict[str, Any]) -> None:
        """Keep the report of a run whose failed chips left the ledger short.

        The report (with one error per failed chip) goes where :meth:`finalize` puts it, but
        the store stays incomplete: a map with holes must never look finished, and
        ``--resume`` retries exactly the shards the ledger lacks.
        """
        self._keep_report(report, complete=False)

    def _keep_report(self, report: dict[str, Any], *, complete: bool) -> None:
        report = redact(report)
        text = json.dumps(report, indent=2, default=str) + "\n"
        storage.write_bytes(storage.join(self.path, REPORT_NAME), text.encode())
        _update_root_attrs(self.path, {"run_report": json.loads(text), "complete": complete})


def describe(path: storage.Location) -> dict[str, Any]:
    """Progress and provenance of an output, for ``resflow info OUT``.

    Returns
    -------
    dict
        ``path``, ``kind`` (``"output"``), ``complete``, ``chips_done``, ``chips_total``,
        ``percent``, ``scenes`` (one dict per scene: ``scene``, ``group``, ``height``,
        ``width`` (pixels), ``chip``, ``chips_done``, ``chips_total``, ``percent``),
        ``summary`` (the run report's one-line summary, or None while incomplete) and
        ``failed_chips`` (chips the last run could not map, listed in its report).
    """
    store = OutputStore.open(path)
    attrs = read_root_attrs(store.path) or {}
    scenes = []
    for name, (ledger, (height, width), chip) in store.ledgers().items():
        done = int(np.count_nonzero(ledger != UNWRITTEN))
        total = ledger.size
        scenes.append({"scene": name, "group": store.groups[name], "height": height,
                       "width": width, "chip": chip, "chips_done": done,
                       "chips_total": total, "percent": _percent(done, total)})
    done = sum(s["chips_done"] for s in scenes)
    total = sum(s["chips_total"] for s in scenes)
    complete = bool(attrs.get("complete"))
    report = attrs.get("run_report") or {}
    failed = sum(1 for error in report.get("errors", []) if "chip" in error)
    return {"path": store.display, "kind": KIND, "complete": complete, "chips_done": done,
            "chips_total": total, "percent": _percent(done, total), "scenes": scenes,
            "summary": report.get("summary") if complete else None, "failed_chips": failed}


def format_description(desc: dict[str, Any]) -> str:
    """Render :func:`describe`'s dict as the text ``resflow info OUT`` prints."""
    state = "complete" if desc["complete"] else "INCOMPLETE (finish with --resume)"
    lines = [f"{desc['path']}: {state}, {desc['chips_done']}/{desc['chips_total']} chips "
             f"({desc['percent']:.1f}%)"]
    width = max((len(s["scene"]) for s in desc["scenes"]), default=5)
    for s in desc["scenes"]:
        lines.append(f"  {s['scene']:<{width}}  {s['height']}x{s['width']} px, chip {s['chip']}:"
                     f" {s['chips_done']}/{s['chips_total']} chips ({s['percent']:.1f}%)")
    if desc.get("failed_chips"):
        lines.append(f"{desc['failed_chips']} chips failed in the last run: see "
                     f"{desc['path']}/{REPORT_NAME}; --resume retries them")
    if desc["summary"]:
        lines.append(desc["summary"])
    return "\n".join(lines)


def _percent(done: int, total: int) -> float:
    return 100.0 * done / total if total else 100.0
