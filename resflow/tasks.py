"""The task functions, run on the workers: read chips, three stages, write shards.

Tasks carry a :class:`~resflow.planning.Partition` or chip references plus a few settings
(:class:`GraphSettings`), never models or pixels from the driver: each worker process loads
the gallery once into a process-level cache keyed by the gallery's location and manifest
hash (a Dask ``WorkerPlugin`` fills it at worker start, Spark's reused Python workers keep it
across tasks), and opens the archive and the output store once.

Chips are predicted a window of chips at a time (:mod:`resflow.windows`), as overlap-tile
inference, dask's ``map_overlap`` in three steps: *add a halo* (``Archive.read_window``,
reflected beyond scene edges as ``boundary="reflect"``), *compute* on the padded window,
*trim* the halo and cut the window back into its chips. The encoder runs once on that read
and serves both stages (:mod:`resflow.stages`): stage 1 embeds the window from its maps,
stage 3 decodes them. A window that cannot be read or mapped fails its chips.

Every task ends in a :class:`PartitionSummary` (counts, km^2, bucket use, seconds, failures,
storage retries): what the driver adds up, instead of a record per chip.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from resflow import storage
from resflow.allocator import steady_malloc
from resflow.archive import Archive
from resflow.chips import ChipRef, SourceChip
from resflow.errors import GalleryError
from resflow.executor import TaskEnv
from resflow.failures import ChipFailure, describe_error
from resflow.gallery import DEFAULT_PATH, MANIFEST, Gallery
from resflow.masks import min_pixels
from resflow.planning import Partition, Segment
from resflow.store.format import NO_DATA_CHIP, NOT_MAPPED, UNWRITTEN
from resflow.store.mask_rule import MaskRule
from resflow.store.shards import ShardWrite
from resflow.store.writer import OutputStore
from resflow.windows import WINDOW_CHIPS, WINDOW_HALO, Window, group_by_window

if TYPE_CHECKING:
    from resflow.stages import FeatureMaps

STAGE1 = "stage1-features"
STAGE2 = "stage2-hashing"
STAGE3 = "stage3-segment"
#: the regrouped plan's last stage: chips back with their partition, shards written
WRITE = "write-shards"
#: the three stages of one partition and its writes as one task (the ``fused`` plan)
FUSED = "stages-fused"


@dataclass(frozen=True)
class GraphSettings:
    """What every task needs to know: locations and pixel settings, cheap to ship.

    Parameters
    ----------
    archive, gallery, out
        Imagery archive, model gallery (``None`` = bundled default) and output store
        locations (paths or URLs, :mod:`resflow.storage`).
    halo
        Context pixels read around each prediction window, encoded with it (stages 1 and 3)
        and trimmed before writing.
    window
        Chips per side of a prediction window (:mod:`resflow.windows`).
    threshold
        Probability above which a pixel is building, for the mask.
    min_building_m2
        Smallest building kept in the mask, m^2 on the ground (:mod:`resflow.masks`).
    split_dip
        Probability dip between two roof peaks that splits a blob (:mod:`resflow.masks`).
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"``; a task uses the GPU its engine assigned.
    torch_threads
        Intra-op threads per worker process.
    gallery_version
        The sha256 of the gallery's manifest when the run started (:func:`load_gallery`);
        empty: whatever the gallery holds when a task loads it.
    """

    archive: Path | str
    gallery: Path | str | None
    out: Path | str
    halo: int = WINDOW_HALO
    window: int = WINDOW_CHIPS
    threshold: float = 0.5
    min_building_m2: float = 0.0
    split_dip: float = 0.0
    device: str = "auto"
    torch_threads: int = 1
    gallery_version: str = ""


# -- what tasks return -------------------------------------------------------------------

@dataclass(frozen=True)
class Features:
    """Stage 1 output: one chip and its window's embedding (regrouped plan)."""

    ref: ChipRef
    features: np.ndarray
    seconds: dict[str, float]
    origin: int


@dataclass(frozen=True)
class Routed:
    """Stage 2 output: a chip reference and the bucket whose model will segment it."""

    ref: ChipRef
    bucket: int
    seconds: dict[str, float]
    origin: int
    #: which stage-3 partition of its bucket it goes to, so a big bucket spreads out
    split: int = 0


@dataclass(frozen=True)
class Segmented:
    """Stage 3 output of the regrouped plan: a chip's quantised maps, on their way back to
    the task that writes its shard."""

    ref: ChipRef
    bucket: int
    probability: np.ndarray
    mask: np.ndarray
    seconds: dict[str, float]
    origin: int


@dataclass(frozen=True)
class StorageRetries:
    """Retries a regrouped-plan task made, on their way to the write stage's summary."""

    origin: int
    count: int


@dataclass(frozen=True)
class Planned:
    """The partition itself, travelling with its chips so the write stage knows every
    shard it must write, including shards whose chips all failed or hold no data."""

    partition: Partition

    @property
    def origin(self) -> int:
        return self.partition.index


@dataclass
class Tally:
    """What tasks wrote and spent: one partition's (a :class:`PartitionSummary`) or the
    whole run's, added up summary by summary as they arrive (:meth:`add`).

    Its size does not grow with chips: counts, a failure per failed chip, scene names.

    Attributes
    ----------
    chips, km2
        Chips mapped and written, and their ground area.
    empty_chips
        Chips without a valid pixel, stored as not mapped.
    buckets
        ``(bucket, model) -> chips`` served.
    seconds
        Task seconds per stage (keys of ``resflow.report.STAGES``).
    failures
        Chips that could not be mapped.
    lost_shards
        ``(segment, problem)`` of shards whose whole task failed, so no chip of them was
        read (their chips stay unwritten for ``--resume``).
    retries
        Reads and writes tried again after a transient storage error.
    scenes, scenes_with_data
        Scenes covered, and those where a valid pixel was found.
    """

    chips: int = 0
    km2: float = 0.0
    empty_chips: int = 0
    buckets: Counter = field(default_factory=Counter)
    seconds: dict[str, float] = field(default_factory=dict)
    failures: list[ChipFailure] = field(default_factory=list)
    lost_shards: list[tuple[Segment, str]] = field(default_factory=list)
    retries: int = 0
    scenes: set[str] = field(default_factory=set)
    scenes_with_data: set[str] = field(default_factory=set)

    def add(self, other: Tally) -> None:
        """Fold in another tally (a partition's summary)."""
        self.chips += other.chips
        self.km2 += other.km2
        self.empty_chips += other.empty_chips
        self.retries += other.retries
        self.buckets.update(other.buckets)
        for key, value in other.seconds.items():
            self.seconds[key] = self.seconds.get(key, 0.0) + value
        self.failures.extend(other.failures)
        self.lost_shards.extend(other.lost_shards)
        self.scenes |= other.scenes
        self.scenes_with_data |= other.scenes_with_data

    @property
    def complete(self) -> bool:
        """Whether every planned chip was written (failures leave the ledger short)."""
        return not self.failures and not self.lost_shards


@dataclass
class PartitionSummary(Tally):
    """One partition's :class:`Tally`: the only thing a task returns to the driver."""

    #: the partition's index in the plan
    partition: int = -1


# -- per-process caches ------------------------------------------------------------------

_LOCK = threading.Lock()
_GALLERIES: dict[tuple[str, str], Gallery] = {}
_ARCHIVES: dict[tuple[str, str], Archive] = {}
_STORES: dict[tuple[str, str], OutputStore] = {}


def gallery_folder(location: Path | str | None) -> Path:
    """The gallery's local folder: the bundled default for None, a verified local copy for
    a URL (:func:`resflow.storage.local_copy`, keyed by its manifest)."""
    if location is None:
        return DEFAULT_PATH
    return storage.local_copy(storage.normalise(location), MANIFEST)


def gallery_key(location: Path | str | None) -> tuple[str, str]:
    """The cache key of a gallery: its resolved path and the sha256 of its manifest."""
    path = gallery_folder(location)
    try:
        digest = hashlib.sha256((path / MANIFEST).read_bytes()).hexdigest()
    except OSError:
        Gallery.load(path)  # raises the GalleryError that names the missing manifest
        raise
    return str(path.resolve()), digest


def load_gallery(location: Path | str | None, version: str = "") -> Gallery:
    """The gallery (a folder, a URL, or None for the bundled one), loaded and verified once
    per process; a retrained gallery (another manifest) loads anew.

    ``version`` is the sha256 of the manifest a run started with
    (:attr:`GraphSettings.gallery_version`). A process that holds that version reads
    nothing, not even the manifest (a URL gallery costs no request per task); one that has
    to load the gallery checks it is still that version, so a gallery replaced during a run
    fails the tasks that would have mixed its models with the old ones.

    Raises
    ------
    GalleryError
        if the gallery is missing, does not verify, or is not ``version``.
    """
    if version:
        with _LOCK:
            held = _GALLERIES.get((str(location), version))
        if held is not None:
            return held
    folder, digest = gallery_key(location)
    if version and digest != version:
        raise GalleryError(
            storage.display(location) if location is not None else str(DEFAULT_PATH),
            f"the gallery changed during the run (its manifest's sha256 is now "
            f"{digest[:12]}, the run started with {version[:12]})",
            "let a run finish before replacing its gallery; run again with --resume to map "
            "the chips this one could not")
    key = (str(location), digest)
    with _LOCK:
        if key not in _GALLERIES:
            _GALLERIES[key] = Gallery.load(Path(folder))
        return _GALLERIES[key]


def preload_models(path: Path | str | None, version: str = "") -> None:
    """Build every model of the gallery in this process, before the first task needs it,
    and fix the process's malloc thresholds (:mod:`resflow.allocator`)."""
    steady_malloc()
    gallery = load_gallery(path, version)
    gallery.feature_extractor()
    gallery.hashing_head()
    for bucket in range(len(gallery.bucket_codes)):
        gallery.segmenter(bucket)


def _cached(cache: dict[tuple[str, str], Any], location: Path | str, open_store: Any) -> Any:
    """The store at ``location`` opened once per process, and again once it is made anew
    (a later run in the same process may overwrite an output, or re-ingest an archive)."""
    key = (str(location), storage.version(storage.join(location, "zarr.json")))
    with _LOCK:
        if key not in cache:
            cache[key] = open_store(location)
        return cache[key]


def _archive(location: Path | str) -> Archive:
    return _cached(_ARCHIVES, location, Archive.open)


def _store(location: Path | str) -> OutputStore:
    return _cached(_STORES, location, OutputStore.open)


def _device(settings: GraphSettings, env: TaskEnv) -> Any:
    from resflow.devices import resolve_device, set_torch_threads

    set_torch_threads(settings.torch_threads)
    return resolve_device(settings.device, env.gpu)  # type: ignore[arg-type]


class _Clock:
    """Adds elapsed seconds per stage key: ``with clock("read"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, key: str) -> _Timer:
        return _Timer(self, key)

    def share(self, n: int, base: dict[str, float] | None = None) -> dict[str, float]:
        """Each of ``n`` chips' equal share of the measured seconds, added to ``base``."""
        out = dict(base or {})
        for key, value in self.seconds.items():
            out[key] = out.get(key, 0.0) + value / max(n, 1)
        return out


class _Timer:
    def __init__(self, clock: _Clock, key: str) -> None:
        self.clock, self.key = clock, key

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        elapsed = time.perf_counter() - self.start
        self.clock.seconds[self.key] = self.clock.seconds.get(self.key, 0.0) + elapsed


# -- pieces shared by both plans ---------------------------------------------------------

ShardChips = tuple[str, int, list[ChipRef]]
"""One shard of a partition: its scene, its index, and its chips."""


def expand(partition: Partition, archive: Archive, store: OutputStore) -> list[ShardChips]:
    """Every shard of the partition with its chips, in plan order: built once per task and
    used both to read the chips and to write the shards."""
    archive.prefetch(segment.scene for segment in partition.segments)
    return [(scene, shard, archive.shard_chips(scene, shard, store.shard_chips))
            for scene, shard in partition.shards()]


def with_data(shards: list[ShardChips]) -> list[ChipRef]:
    """The chips of ``shards`` that hold a valid pixel: those worth reading and mapping."""
    return [ref for _, _, refs in shards for ref in refs if ref.valid_fraction > 0]


class WindowFailed(Exception):
    """A step of a window's prediction failed: every chip of the window fails with it."""

    def __init__(self, stage: str, problem: str) -> None:
        super().__init__(problem)
        self.stage, self.problem = stage, problem


def windows_of(settings: GraphSettings, archive: Archive,
               refs: Sequence[ChipRef]) -> dict[Window, list[ChipRef]]:
    """The prediction windows (:mod:`resflow.windows`) holding ``refs``, each with its chips
    among them."""
    shapes = {scene: (archive.scenes[scene].height, archive.scenes[scene].width)
              for scene in {ref.scene for ref in refs}}
    return group_by_window(refs, settings.window, shapes)


def encode_window(settings: GraphSettings, gallery: Gallery, device: Any, archive: Archive,
                  window: Window, stage: str, counter: storage.RetryCount, clock: _Clock
                  ) -> tuple[SourceChip, np.ndarray, FeatureMaps]:
    """Read a window with its halo and run the encoder once over it: its pixels as stored,
    its ``(1, 1280)`` embedding (pooled over the window without its halo, what stage 2
    routes on) and its encoder maps (what stage 3 decodes).

    Raises
    ------
    WindowFailed
        The window cannot be read, holds pixels that harmonise to NaN or Inf, or embeds to
        a value that is not finite.
    """
    from resflow.model_input import SourceImages
    from resflow.stages import encode

    with clock("read"):
        try:
            source = storage.retrying(lambda: archive.read_window(window, settings.halo),
                                      counter)
        except Exception as exc:
            raise WindowFailed(stage, "reading its window of chips failed "
                               f"({describe_error(exc)})") from exc
        if not source.finite():
            raise WindowFailed(stage, "its window's harmonised pixels hold NaN or Inf (source "
                               "values too extreme to scale), so no model can map it")
    with clock("stage1"):
        try:
            embedding, maps = encode(SourceImages([source]), gallery.feature_extractor(),
                                     halo=settings.halo, batch_size=1, device=device)
        except Exception as exc:
            raise WindowFailed(stage, f"the model raised {describe_error(exc)}") from exc
        if not np.isfinite(embedding).all():
            raise WindowFailed(stage, "the model returned NaN or Inf")
    return source, embedding, maps[0]


def segment_window(settings: GraphSettings, gallery: Gallery, device: Any, window: Window,
                   refs: Sequence[ChipRef], source: SourceChip, maps: FeatureMaps,
                   bucket: int, clock: _Clock
                   ) -> dict[ChipRef, tuple[np.ndarray, np.ndarray, int]]:
    """Decode a window's encoder maps with its bucket's model, quantise and threshold on the
    device, split touching roofs and drop small components over the whole window with its
    halo, and cut out ``refs``.

    Returns ``chip -> (probability, mask, bucket)``, uint8 on the chip's in-scene window
    with :data:`~resflow.store.format.NOT_MAPPED` where the source holds no data.

    Raises
    ------
    WindowFailed
        The model raised or returned probabilities that are not finite.
    """
    from resflow.stages import decode_quantised

    scene = _archive(settings.archive).scenes[window.scene]
    with clock("stage3"):
        try:
            chip = decode_quantised([maps], [source.valid], gallery.segmenter(bucket),
                                    threshold=settings.threshold, size=source.valid.shape,
                                    batch_size=1, device=device)[0]
        except Exception as exc:
            raise WindowFailed(STAGE3, f"the model raised {describe_error(exc)}") from exc
        if not chip.finite:
            raise WindowFailed(STAGE3, "the model returned NaN or Inf")
        building = chip.building_mask(MaskRule(
            settings.threshold, min_pixels(settings.min_building_m2, scene.gsd_m),
            settings.halo, settings.split_dip))
    with clock("write"):
        mask = building.astype(np.uint8)
        mask[~source.valid] = NOT_MAPPED
        return {ref: (window.crop(chip.probability, ref, settings.halo),
                      window.crop(mask, ref, settings.halo), bucket) for ref in refs}


def write_shards(settings: GraphSettings, shards: list[ShardChips],
                 mapped: dict[ChipRef, tuple[np.ndarray, np.ndarray, int]],
                 failures: list[ChipFailure], summary: PartitionSummary,
                 counter: storage.RetryCount, clock: _Clock, stage: str) -> None:
    """Write every shard of the partition, together (:meth:`OutputStore.write_shards`), and
    count what was written into ``summary``.

    A chip without valid pixels is written as not mapped (ledger -1); a chip with neither a
    result nor a failure record (lost on the way) becomes a failure here, so no chip is ever
    silently missing. A shard that cannot be written fails its chips.
    """
    store, archive = _store(settings.out), _archive(settings.archive)
    failed = {f.ref for f in failures}
    models = _gallery_models(settings)
    writes = []
    for scene, shard, chips in shards:
        summary.scenes.add(scene)
        probabilities, masks, buckets = [], [], []
        for ref in chips:
            if ref in mapped:
                prob, mask, bucket = mapped[ref]
            else:
                bucket = NO_DATA_CHIP if ref.valid_fraction == 0 else UNWRITTEN
                if bucket == UNWRITTEN and ref not in failed:
                    failures.append(ChipFailure(ref, stage, "no result reached the write "
                                                "(its task was lost)"))
                prob = mask = np.full((ref.height, ref.width), NOT_MAPPED, np.uint8)
            probabilities.append(prob)
            masks.append(mask)
            buckets.append(bucket)
        writes.append(ShardWrite(scene, shard, chips, probabilities, masks, buckets,
                                 archive.scenes[scene].transform))
    with clock("write"):
        lost = storage.retrying_each(
            lambda indices: _renumbered(store.write_shards([writes[i] for i in indices]),
                                        indices), len(writes), counter)
    for index, write in enumerate(writes):
        if index in lost:  # a shard that cannot be written fails its chips
            failures.extend(ChipFailure(ref, stage, f"writing its shard failed "
                                        f"({describe_error(lost[index])})")
                            for ref, bucket in zip(write.refs, write.buckets, strict=True)
                            if bucket >= 0)
            continue
        for ref, bucket in zip(write.refs, write.buckets, strict=True):
            if bucket >= 0:
                summary.chips += 1
                summary.km2 += ref.km2
                summary.buckets[(bucket, models[bucket])] += 1
                summary.scenes_with_data.add(write.scene)
            elif bucket == NO_DATA_CHIP:
                summary.empty_chips += 1
    summary.failures.extend(failures)
    summary.retries += counter.retries


def _renumbered(errors: dict[int, Exception], indices: Sequence[int]) -> dict[int, Exception]:
    """Errors keyed by position in ``indices``, keyed by the index itself."""
    return {indices[position]: error for position, error in errors.items()}


def _gallery_models(settings: GraphSettings) -> dict[int, str]:
    gallery = load_gallery(settings.gallery, settings.gallery_version)
    return {b: gallery.model_name(b) for b in range(len(gallery.bucket_codes))}


def _failed_partition(partition: Partition, stage: str, exc: Exception) -> PartitionSummary:
    """A partition whose task failed outside any one chip: its shards are reported lost
    (the archive itself may be what failed, so chips are not expanded)."""
    summary = PartitionSummary(partition=partition.index)
    problem = f"{stage}: the partition's task failed ({describe_error(exc)})"
    for segment in partition.segments:
        summary.scenes.add(segment.scene)
        summary.lost_shards.append((segment, problem))
    return summary


# -- the fused plan ----------------------------------------------------------------------

def fused_stages(settings: GraphSettings, records: list[Partition],
                 env: TaskEnv) -> list[PartitionSummary]:
    """Stages 1, 2 and 3 of one partition in one task, then its shards written.

    Each prediction window of the partition is read once, with its halo, and encoded once:
    stage 1 embeds the window from its encoder maps, stage 2 routes it, and stage 3 decodes
    the same maps with the model of its bucket. The maps, routes and failures are those of
    the regrouped plan; only where the work runs differs: nothing crosses processes between
    stages and no stage waits for another's slowest partition.
    """
    summaries = []
    for partition in records:
        try:
            summaries.append(_fused_partition(settings, partition, env))
        except Exception as exc:  # e.g. the gallery or store vanished under a worker
            summaries.append(_failed_partition(partition, FUSED, exc))
    return summaries


def _fused_partition(settings: GraphSettings, partition: Partition,
                     env: TaskEnv) -> PartitionSummary:
    from resflow.stages import map_codes

    clock, counter = _Clock(), storage.RetryCount()
    summary = PartitionSummary(partition=partition.index)
    device = _device(settings, env)
    gallery = load_gallery(settings.gallery, settings.gallery_version)
    archive = _archive(settings.archive)
    failures: list[ChipFailure] = []
    shards = expand(partition, archive, _store(settings.out))
    mapped: dict[ChipRef, tuple[np.ndarray, np.ndarray, int]] = {}
    for window, refs in windows_of(settings, archive, with_data(shards)).items():
        try:
            source, embedding, maps = encode_window(settings, gallery, device, archive,
                                                    window, STAGE1, counter, clock)
            with clock("stage2"):
                _, buckets = map_codes(embedding, gallery.hashing_head(), gallery.bucket_codes)
            mapped.update(segment_window(settings, gallery, device, window, refs, source,
                                         maps, int(buckets[0]), clock))
        except WindowFailed as failed:
            failures.extend(ChipFailure(ref, failed.stage, failed.problem) for ref in refs)
    write_shards(settings, shards, mapped, failures, summary, counter, clock, FUSED)
    summary.seconds = dict(clock.seconds)
    return summary


# -- the regrouped plan ------------------------------------------------------------------

def failing_stage(stage: str, fn: Callable[..., list[Any]]) -> Callable[..., list[Any]]:
    """Run a regrouped-plan stage so an error outside any one chip fails its chips, not the
    run: chip records become :class:`ChipFailure`\\ s, partitions travel on to be written."""
    def run(*args: Any) -> list[Any]:
        try:
            return fn(*args)
        except Exception as exc:
            problem = f"the partition's task failed ({describe_error(exc)})"
            return [r if isinstance(r, ChipFailure | Planned | StorageRetries) else
                    ChipFailure(r.ref, stage, problem, origin=r.origin) for r in args[-2]]
    return run


def stage1_features(settings: GraphSettings, records: list[Partition],
                    env: TaskEnv) -> list[Any]:
    """Expand each partition, read its prediction windows with their halo and compute their
    Lite0 embeddings as the fused plan does, one record per chip carrying its window's
    embedding; the chips of a window that cannot be read or embedded become
    failure records (:class:`ChipFailure`). The partition travels on as :class:`Planned`."""
    out: list[Any] = []
    for partition in records:
        out.append(Planned(partition))
        try:
            out.extend(_features(settings, partition, env))
        except Exception:  # its chips reach the write stage without results, and fail there
            continue
    return out


def _features(settings: GraphSettings, partition: Partition, env: TaskEnv) -> list[Any]:
    clock, counter = _Clock(), storage.RetryCount()
    device = _device(settings, env)
    gallery = load_gallery(settings.gallery, settings.gallery_version)
    archive = _archive(settings.archive)
    refs = with_data(expand(partition, archive, _store(settings.out)))
    failures: list[ChipFailure] = []
    embedded: list[tuple[ChipRef, np.ndarray]] = []
    for window, chips in windows_of(settings, archive, refs).items():
        try:
            _, embedding, _ = encode_window(settings, gallery, device, archive, window,
                                            STAGE1, counter, clock)
        except WindowFailed as failed:
            failures.extend(ChipFailure(ref, failed.stage, failed.problem) for ref in chips)
            continue
        embedded.extend((ref, embedding[0]) for ref in chips)
    share = clock.share(len(embedded))
    return [StorageRetries(partition.index, counter.retries),
            *(ChipFailure(f.ref, f.stage, f.problem, origin=partition.index) for f in failures),
            *(Features(ref, vec, share, partition.index) for ref, vec in embedded)]


def stage2_hashing(settings: GraphSettings, splits: int, records: list[Any],
                   env: TaskEnv) -> list[Any]:
    """Hash each embedding and route the chip reference to its nearest bucket (failures and
    partitions pass on unchanged)."""
    from resflow.stages import map_codes

    passing = [r for r in records if not isinstance(r, Features)]
    features = [r for r in records if isinstance(r, Features)]
    if not features:
        return passing
    clock = _Clock()
    gallery = load_gallery(settings.gallery, settings.gallery_version)
    with clock("stage2"):
        _, buckets = map_codes(np.stack([r.features for r in features]), gallery.hashing_head(),
                               gallery.bucket_codes)
    return [*passing, *(
        Routed(r.ref, int(b), clock.share(len(features), r.seconds), r.origin,
               split=_split_of(r.ref, settings.window, splits))
        for r, b in zip(features, buckets, strict=True)
    )]


def _split_of(ref: ChipRef, window: int, splits: int) -> int:
    """The stage-3 partition of a chip: chips of one prediction window go together, so the
    window is encoded once there."""
    key = f"{ref.scene}/{ref.row // window}/{ref.col // window}"
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest()) % splits


def stage3_segment(settings: GraphSettings, records: list[Any], env: TaskEnv) -> list[Any]:
    """Re-read each routed chip's prediction window with its halo, encode it again (the
    maps are too big to travel with the chip) and segment it with its bucket's model; the
    quantised maps travel on to the task that writes their shard."""
    passing = [r for r in records if not isinstance(r, Routed)]
    routed = {r.ref: r for r in records if isinstance(r, Routed)}
    if not routed:
        return passing
    clock, counter = _Clock(), storage.RetryCount()
    device = _device(settings, env)
    gallery = load_gallery(settings.gallery, settings.gallery_version)
    archive = _archive(settings.archive)
    failures: list[ChipFailure] = []
    mapped: dict[ChipRef, tuple[np.ndarray, np.ndarray, int]] = {}
    for window, refs in windows_of(settings, archive, sorted(routed)).items():
        try:
            source, _, maps = encode_window(settings, gallery, device, archive, window,
                                            STAGE3, counter, clock)
            mapped.update(segment_window(settings, gallery, device, window, refs, source,
                                         maps, routed[refs[0]].bucket, clock))
        except WindowFailed as failed:
            failures.extend(ChipFailure(ref, failed.stage, failed.problem) for ref in refs)
    share = clock.share(len(routed))
    first = next(iter(routed.values())).origin
    return [*passing, StorageRetries(first, counter.retries),
            *(ChipFailure(f.ref, f.stage, f.problem, origin=routed[f.ref].origin)
              for f in failures),
            *(Segmented(ref, bucket, prob, mask, _add(routed[ref].seconds, share),
                        routed[ref].origin)
              for ref, (prob, mask, bucket) in mapped.items())]


def _add(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    out = dict(a)
    for key, value in b.items():
        out[key] = out.get(key, 0.0) + value
    return out


def write_stage(settings: GraphSettings, records: list[Any], env: TaskEnv
                ) -> list[PartitionSummary]:
    """The regrouped plan's last stage: one partition's chips, back together, written shard
    by shard."""
    plans = [r.partition for r in records if isinstance(r, Planned)]
    summaries = []
    for partition in plans:
        mine = [r for r in records if not isinstance(r, Planned) and r.origin == partition.index]
        try:
            summaries.append(_write_partition(settings, partition, mine))
        except Exception as exc:
            summaries.append(_failed_partition(partition, WRITE, exc))
    return summaries


def _write_partition(settings: GraphSettings, partition: Partition,
                     records: list[Any]) -> PartitionSummary:
    clock, counter = _Clock(), storage.RetryCount()
    summary = PartitionSummary(partition=partition.index)
    failures = [r for r in records if isinstance(r, ChipFailure)]
    chips = [r for r in records if isinstance(r, Segmented)]
    mapped = {r.ref: (r.probability, r.mask, r.bucket) for r in chips}
    shards = expand(partition, _archive(settings.archive), _store(settings.out))
    write_shards(settings, shards, mapped, failures, summary, counter, clock, WRITE)
    summary.retries += sum(r.count for r in records if isinstance(r, StorageRetries))
    seconds = dict(clock.seconds)
    for r in chips:
        for key, value in r.seconds.items():
            seconds[key] = seconds.get(key, 0.0) + value
    summary.seconds = seconds
    return summary
