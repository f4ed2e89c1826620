"""The task functions, run on the workers: read chips, three stages, write shards.

Tasks carry a :class:`~resflow.planning.Partition` or chip references plus a few settings
(:class:`GraphSettings`), never models or pixels from the driver: each worker process loads
the gallery once into a process-level cache keyed by the gallery's location and manifest
hash (a Dask ``WorkerPlugin`` fills it at worker start, Spark's reused Python workers keep it
across tasks), and opens the archive and the output store once.

Stage 3 is overlap-tile inference, dask's ``map_overlap`` in three steps: *add a halo*
(``Archive.read_sources(refs, halo)``, reflected beyond scene edges as ``boundary="reflect"``),
*compute* on the padded chip, *trim* the halo so only the centre, predicted with context on
every side, is written. Neighbouring chips therefore meet without seams. The encoder runs
once on that halo read and serves both stages (:mod:`resflow.stages`): stage 1 embeds the
chip from its maps, stage 3 decodes them.

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
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from resflow import storage
from resflow.allocator import steady_malloc
from resflow.archive import Archive
from resflow.chips import ChipRef, SourceChip
from resflow.errors import GalleryError
from resflow.executor import TaskEnv
from resflow.failures import ChipFailure, compute_chips, describe_error, read_chips
from resflow.gallery import DEFAULT_PATH, MANIFEST, Gallery
from resflow.masks import min_pixels
from resflow.outputs import (
    NO_DATA_CHIP,
    NOT_MAPPED,
    UNWRITTEN,
    OutputStore,
    ShardWrite,
)
from resflow.planning import Partition, Segment

if TYPE_CHECKING:
    from resflow.model_input import SourceImages
    from resflow.stages import FeatureMaps, QuantisedChip

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
    batch_size
        Chips per model call on CUDA.
    halo
        Context pixels read around each chip, encoded with it (stages 1 and 3) and
        trimmed before writing.
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
    batch_size: int = 8
    halo: int = 32
    threshold: float = 0.5
    min_building_m2: float = 0.0
    split_dip: float = 0.0
    device: str = "auto"
    torch_threads: int = 1
    gallery_version: str = ""


# -- what tasks return -------------------------------------------------------------------

@dataclass(frozen=True)
class Features:
    """Stage 1 output: one chip's embedding (regrouped plan)."""

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


def _reader(archive: Archive, halo: int, counter: storage.RetryCount
            ) -> Callable[[Sequence[ChipRef]], list[SourceChip]]:
    """``archive.read_sources`` with transient storage errors retried (and counted)."""
    def read(refs: Sequence[ChipRef]) -> list[SourceChip]:
        return storage.retrying(lambda: archive.read_sources(refs, halo), counter)
    return read


def trim(probability: np.ndarray, ref: ChipRef, halo: int) -> np.ndarray:
    """The chip's in-scene window from a halo-padded prediction (``map_overlap``'s trim).

    Examples
    --------
    >>> from resflow.chips import ChipRef
    >>> ref = ChipRef("s", 0, 0, 0, 0, 3, 2, 4, 0.0, 1.0)
    >>> trim(np.zeros((8, 8)), ref, halo=2).shape
    (3, 2)
    """
    return probability[halo:halo + ref.height, halo:halo + ref.width]


def encode_chips(settings: GraphSettings, gallery: Gallery, device: Any,
                 refs: Sequence[ChipRef], images: SourceImages, stage: str,
                 failures: list[ChipFailure]
                 ) -> tuple[list[ChipRef], list[np.ndarray], dict[ChipRef, FeatureMaps]]:
    """The one encoder pass over halo-read chips: each chip's embedding (stage 2 routes on
    it) and its encoder maps (stage 3 decodes them).

    ``images`` holds one halo read per chip of ``refs``, harmonised on ``device`` as it is
    encoded. A chip that cannot be encoded, or
    whose embedding is not finite, is appended to ``failures`` under ``stage``; the others
    come back with their embeddings and maps.
    """
    from resflow.stages import encode

    maps: dict[ChipRef, FeatureMaps] = {}

    def run(rows: np.ndarray) -> np.ndarray:  # rows, not pixels, so a retried chip keeps its ref
        features, chip_maps = encode(images[rows], gallery.feature_extractor(),
                                     halo=settings.halo, batch_size=settings.batch_size,
                                     device=device)
        maps.update(zip((refs[i] for i in rows), chip_maps, strict=True))
        return features

    kept, vectors = compute_chips(refs, np.arange(len(refs)), run, stage, failures)
    return kept, vectors, {ref: maps[ref] for ref in kept}


def _decode_rows(maps: list[FeatureMaps], valid: list[np.ndarray], rows: np.ndarray,
                 **decode_args: Any) -> list[QuantisedChip]:
    """:func:`resflow.stages.decode_quantised` of the chips at ``rows``: lets
    :func:`~resflow.failures.compute_chips` retry a chip alone by its row."""
    from resflow.stages import decode_quantised

    return decode_quantised([maps[i] for i in rows], [valid[i] for i in rows], **decode_args)


def segment_chips(settings: GraphSettings, gallery: Gallery, device: Any,
                  buckets: dict[ChipRef, int], pixels: dict[ChipRef, SourceChip],
                  maps: dict[ChipRef, FeatureMaps], clock: _Clock,
                  failures: list[ChipFailure]
                  ) -> dict[ChipRef, tuple[np.ndarray, np.ndarray, int]]:
    """Decode encoded chips model by model, quantise and threshold them on the device, split
    touching roofs and drop small components with their halo (so blobs and specks crossing
    a chip border are judged whole), and trim.

    Chips are grouped by the model serving their bucket, not by bucket, so every bucket the
    mono model serves shares its micro-batches. Returns ``chip -> (probability, mask,
    bucket)``, uint8 on the chip's in-scene window with
    :data:`~resflow.outputs.NOT_MAPPED` where the source holds no data; chips that fail are
    appended to ``failures``. Time goes to ``clock``.
    """
    halo = settings.halo
    scenes = _archive(settings.archive).scenes
    out: dict[ChipRef, tuple[np.ndarray, np.ndarray, int]] = {}
    groups: dict[str, list[ChipRef]] = {}
    for ref in sorted(buckets):
        groups.setdefault(gallery.model_name(buckets[ref]), []).append(ref)
    for group in groups.values():
        run = partial(_decode_rows, [maps[ref] for ref in group],
                      [pixels[ref].valid for ref in group],
                      segmenter=gallery.segmenter(buckets[group[0]]),
                      threshold=settings.threshold, size=pixels[group[0]].valid.shape,
                      batch_size=settings.batch_size, device=device)
        with clock("stage3"):
            kept, decoded = compute_chips(group, np.arange(len(group)), run, STAGE3,
                                          failures, finite=lambda chip: chip.finite)
            masks = [chip.building_mask(settings.split_dip, min_pixels(
                settings.min_building_m2, scenes[ref.scene].gsd_m))
                for ref, chip in zip(kept, decoded, strict=True)]
        with clock("write"):
            for ref, chip, building in zip(kept, decoded, masks, strict=True):
                mask = building.astype(np.uint8)
                mask[~pixels[ref].valid] = NOT_MAPPED
                out[ref] = (trim(chip.probability, ref, halo), trim(mask, ref, halo),
                            buckets[ref])
    return out


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

    Each chip is read once, with its halo, and encoded once: stage 1 embeds the chip from
    the encoder maps of its halo read, stage 2 routes it, and stage 3 decodes the same maps
    with the model of its bucket. The maps, routes and failures are those of the regrouped
    plan; only where the work runs differs: nothing crosses processes between stages and no
    stage waits for another's slowest partition.
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
    from resflow.model_input import SourceImages
    from resflow.stages import map_codes

    clock, counter = _Clock(), storage.RetryCount()
    summary = PartitionSummary(partition=partition.index)
    device = _device(settings, env)
    gallery = load_gallery(settings.gallery, settings.gallery_version)
    archive = _archive(settings.archive)
    failures: list[ChipFailure] = []
    shards = expand(partition, archive, _store(settings.out))
    work = with_data(shards)
    with clock("read"):
        work, pixels = read_chips(work, _reader(archive, settings.halo, counter), STAGE1,
                                  failures)
    with clock("stage1"):
        embedded, vectors, maps = encode_chips(settings, gallery, device, work,
                                               SourceImages(pixels), STAGE1, failures)
    mapped: dict[ChipRef, tuple[np.ndarray, np.ndarray, int]] = {}
    if embedded:
        with clock("stage2"):
            _, buckets = map_codes(np.stack(vectors), gallery.hashing_head(),
                                   gallery.bucket_codes)
        mapped = segment_chips(settings, gallery, device,
                               dict(zip(embedded, buckets.tolist(), strict=True)),
                               dict(zip(work, pixels, strict=True)), maps, clock, failures)
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
    """Expand each partition, read its chips with their halo and compute their Lite0
    embeddings as the fused plan does; a chip that cannot be read or embedded becomes a
    :class:`ChipFailure`. The partition travels on as :class:`Planned`."""
    out: list[Any] = []
    for partition in records:
        out.append(Planned(partition))
        try:
            out.extend(_features(settings, partition, env))
        except Exception:  # its chips reach the write stage without results, and fail there
            continue
    return out


def _features(settings: GraphSettings, partition: Partition, env: TaskEnv) -> list[Any]:
    from resflow.model_input import SourceImages
    from resflow.stages import extract_features

    clock, counter = _Clock(), storage.RetryCount()
    device = _device(settings, env)
    gallery = load_gallery(settings.gallery, settings.gallery_version)
    archive = _archive(settings.archive)
    refs = with_data(expand(partition, archive, _store(settings.out)))
    failures: list[ChipFailure] = []
    with clock("read"):
        refs, pixels = read_chips(refs, _reader(archive, settings.halo, counter), STAGE1,
                                  failures)
    with clock("stage1"):
        refs, vectors = compute_chips(
            refs, SourceImages(pixels),
            partial(extract_features, extractor=gallery.feature_extractor(),
                    halo=settings.halo, batch_size=settings.batch_size, device=device),
            STAGE1, failures)
    share = clock.share(len(refs))
    return [StorageRetries(partition.index, counter.retries),
            *(ChipFailure(f.ref, f.stage, f.problem, origin=partition.index) for f in failures),
            *(Features(ref, vec, share, partition.index)
              for ref, vec in zip(refs, vectors, strict=True))]


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
               split=_split_of(r.ref, splits))
        for r, b in zip(features, buckets, strict=True)
    )]


def _split_of(ref: ChipRef, splits: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{ref.scene}/{ref.row}/{ref.col}".encode(),
                                          digest_size=4).digest()) % splits


def stage3_segment(settings: GraphSettings, records: list[Any], env: TaskEnv) -> list[Any]:
    """Re-read each routed chip with a halo of context, encode it again (the maps are too
    big to travel with the chip) and segment it with its bucket's model; the quantised maps
    travel on to the task that writes their shard."""
    from resflow.model_input import SourceImages

    passing = [r for r in records if not isinstance(r, Routed)]
    routed = {r.ref: r for r in records if isinstance(r, Routed)}
    if not routed:
        return passing
    clock, counter = _Clock(), storage.RetryCount()
    device = _device(settings, env)
    gallery = load_gallery(settings.gallery, settings.gallery_version)
    archive = _archive(settings.archive)
    failures: list[ChipFailure] = []
    with clock("read"):
        refs, pixels = read_chips(sorted(routed), _reader(archive, settings.halo, counter),
                                  STAGE3, failures)
    with clock("stage3"):
        encoded, _, maps = encode_chips(settings, gallery, device, refs,
                                        SourceImages(pixels), STAGE3, failures)
    mapped = segment_chips(settings, gallery, device,
                           {ref: routed[ref].bucket for ref in encoded},
                           dict(zip(refs, pixels, strict=True)), maps, clock, failures)
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
