"""The inference graph, defined once for every engine, in two plans with the same maps.

The ``regrouped`` plan is RESFlow's shape::

    partitions of ChipRefs
      -> stage 1  read chips, Lite0 features                    (GPU stage)
      -> stage 2  hash codes, nearest bucket                    -> (chip ref, bucket) records
      -> regroup by bucket                                      (references move, not pixels)
      -> stage 3  re-read chips with a halo, segment with that bucket's model, trim the halo,
                  quantise to uint8, write through the output store   (GPU stage)
      -> per-chip results

The ``fused`` plan (the default) runs the same three stages of a partition in one task
(:func:`fused_stages`): each chip is read once, with its halo, stage 1 sees its centre, and
stage 3 serves the partition's chips bucket by bucket. With every bucket's model already
loaded in each worker, the regroup buys nothing but a shuffle, a second read of every chip
and a barrier between stages; ``benchmarks/README.md`` measures the difference.

Stage 3 is overlap-tile inference, dask's ``map_overlap`` in three steps: *add a halo*
(``Archive.read_chip(ref, halo)``, reflected beyond scene edges as ``boundary="reflect"``),
*compute* on the padded chip, *trim* the halo so only the centre, predicted with context on
every side, is written. Neighbouring chips therefore meet without seams.

Tasks carry chip references and a few paths (:class:`GraphSettings`), never models or pixels:
each worker process loads the gallery once into a process-level cache keyed by the gallery's
path and manifest hash (a Dask ``WorkerPlugin`` fills it at worker start, Spark's reused
Python workers keep it across tasks). Stage timings are measured inside the tasks and
travel with each chip's records.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from resflow.allocator import steady_malloc
from resflow.archive import Archive
from resflow.chips import ChipPixels, ChipRef
from resflow.config import RunConfig
from resflow.executor import CPU, Executor, StageResources, TaskEnv
from resflow.failures import (
    ChipFailure,
    compute_chips,
    empty_scene_errors,
    failing_partition,
    read_chips,
    write_chips,
)
from resflow.gallery import DEFAULT_PATH, MANIFEST, Gallery
from resflow.masks import building_mask, min_pixels
from resflow.outputs import OutputStore
from resflow.preflight import check_resolution

STAGE1 = "stage1-features"
STAGE2 = "stage2-hashing"
STAGE3 = "stage3-segment"
#: the three stages of one partition as one task (the ``fused`` plan)
FUSED = "stages-fused"

#: A partition holds at most ``1 / (PARTITIONS_PER_SLOT x slots)`` of the chips still to
#: plan, so partitions shrink towards the end of a run and every slot finishes at about the
#: same time. Measured on 2 cores (benchmarks/README.md): 2 beat equal partitions on the x8
#: archive (local 0.83 -> 0.90 of the limit, Dask 0.90 -> 0.93, Spark level) where 4 made
#: too many small tasks for Spark's per-task cost (about 30 ms of wall time each).
PARTITIONS_PER_SLOT = 2
#: The smallest partition planned while more chips remain: smaller ones pay a task's fixed
#: costs (dispatch, a read and a write per array) for too little model work.
MIN_PARTITION_CHIPS = 2


@dataclass(frozen=True)
class GraphSettings:
    """What every task needs to know: paths and pixel settings, cheap to ship.

    Parameters
    ----------
    archive, gallery, out
        Imagery archive, model gallery (``None`` = bundled default) and output store paths.
    batch_size
        Chips per model call on CUDA.
    halo
        Context pixels read around each chip in stage 3 and trimmed before writing.
    threshold
        Probability above which a pixel is building, for the mask.
    min_building_m2
        Smallest building kept in the mask, m^2 on the ground (:mod:`resflow.masks`).
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"``; a task uses the GPU its engine assigned.
    torch_threads
        Intra-op threads per worker process.
    """

    archive: Path
    gallery: Path | None
    out: Path
    batch_size: int = 8
    halo: int = 32
    threshold: float = 0.5
    min_building_m2: float = 0.0
    device: str = "auto"
    torch_threads: int = 1

    @classmethod
    def from_config(cls, config: RunConfig) -> GraphSettings:
        if config.archive is None or config.out is None:
            raise ValueError("a run needs both an archive and an output path")
        return cls(archive=Path(config.archive), gallery=config.gallery, out=Path(config.out),
                   batch_size=config.batch_size, halo=config.halo, threshold=config.threshold,
                   min_building_m2=config.min_building_m2, device=config.device,
                   torch_threads=config.torch_threads)


@dataclass(frozen=True)
class Features:
    """Stage 1 output: one chip's embedding."""

    ref: ChipRef
    features: np.ndarray
    seconds: dict[str, float]


@dataclass(frozen=True)
class Routed:
    """Stage 2 output: a chip reference and the bucket whose model will segment it."""

    ref: ChipRef
    bucket: int
    seconds: dict[str, float]
    #: which stage-3 partition of its bucket it goes to, so a big bucket spreads out
    split: int = 0


@dataclass(frozen=True)
class ChipResult:
    """Stage 3 output: what was written for one chip.

    Attributes
    ----------
    ref
        The chip.
    bucket, model
        Its bucket and the segmenter that served it (``"mono"`` or ``"bucket-<k>"``).
    building_fraction
        Share of the chip's in-scene pixels in the mask.
    seconds
        This chip's share of each stage's task time (keys of ``resflow.report.STAGES``).
    """

    ref: ChipRef
    bucket: int
    model: str
    building_fraction: float
    seconds: dict[str, float] = field(default_factory=dict)


# -- per-process caches ------------------------------------------------------------------

_LOCK = threading.Lock()
_GALLERIES: dict[tuple[str, str], Gallery] = {}
_ARCHIVES: dict[tuple[str, int], Archive] = {}
_STORES: dict[tuple[str, int], OutputStore] = {}


def gallery_key(path: Path | None) -> tuple[str, str]:
    """The cache key of a gallery: its resolved path and the sha256 of its manifest."""
    path = DEFAULT_PATH if path is None else Path(path)
    try:
        digest = hashlib.sha256((path / MANIFEST).read_bytes()).hexdigest()
    except OSError:
        Gallery.load(path)  # raises the GalleryError that names the missing manifest
        raise
    return str(path.resolve()), digest


def load_gallery(path: Path | None) -> Gallery:
    """The gallery, loaded and verified once per process (a retrained gallery reloads)."""
    key = gallery_key(path)
    with _LOCK:
        if key not in _GALLERIES:
            _GALLERIES[key] = Gallery.load(path)
        return _GALLERIES[key]


def preload_models(path: Path | None) -> None:
    """Build every model of the gallery in this process, before the first task needs it,
    and fix the process's malloc thresholds (:mod:`resflow.allocator`)."""
    steady_malloc()
    gallery = load_gallery(path)
    gallery.feature_extractor()
    gallery.hashing_head()
    for bucket in range(len(gallery.bucket_codes)):
        gallery.segmenter(bucket)


def _store_key(path: Path) -> tuple[str, int]:
    """A cache key that changes when the store at ``path`` is made anew: a later run in the
    same process may overwrite an output, or re-ingest an archive, at the same path."""
    return str(path), (Path(path) / "zarr.json").stat().st_mtime_ns


def _cached(cache: dict[tuple[str, int], Any], path: Path, open_store: Any) -> Any:
    """The store at ``path`` opened once per process (and again once it is made anew)."""
    key = _store_key(path)
    with _LOCK:
        if key not in cache:
            cache[key] = open_store(path)
        return cache[key]


def _archive(path: Path) -> Archive:
    return _cached(_ARCHIVES, path, Archive.open)


def _store(path: Path) -> OutputStore:
    return _cached(_STORES, path, OutputStore.open)


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


# -- planning ----------------------------------------------------------------------------

def plan_partitions(archive: Archive, partition_chips: int,
                    skip: set[tuple[str, int, int]] | None = None,
                    slots: int = 1) -> list[list[ChipRef]]:
    """Partitions of at most ``partition_chips`` chip references, in archive order, with
    sizes from :func:`partition_sizes`.

    Parameters
    ----------
    archive
        The imagery archive; all its complete scenes are planned.
    partition_chips
        The most chips a partition holds (the user's setting).
    skip
        ``(scene, row, col)`` of chips already written (``--resume``).
    slots
        Tasks the engine runs at once (workers x threads).
    """
    refs = [r for r in archive.chips() if not skip or (r.scene, r.row, r.col) not in skip]
    partitions, start = [], 0
    for size in partition_sizes(len(refs), partition_chips, slots):
        partitions.append(refs[start:start + size])
        start += size
    return partitions


def partition_sizes(chips: int, partition_chips: int, slots: int) -> list[int]:
    """Chips per partition, largest first, shrinking as the run nears its end.

    Each partition takes at most ``1 / (PARTITIONS_PER_SLOT x slots)`` of the chips left,
    capped at ``partition_chips`` and floored at :data:`MIN_PARTITION_CHIPS`. Equal
    partitions leave every slot but one idle while the last of them runs (up to a whole
    partition's time); shrinking ones end within a small partition of each other, at the
    cost of a few more tasks.

    >>> partition_sizes(16, 16, slots=2)
    [4, 3, 3, 2, 2, 2]
    >>> partition_sizes(120, 16, slots=2)
    [16, 16, 16, 16, 14, 11, 8, 6, 5, 3, 3, 2, 2, 2]
    """
    sizes, left = [], chips
    floor = min(MIN_PARTITION_CHIPS, max(1, partition_chips))
    while left > 0:
        share = math.ceil(left / (PARTITIONS_PER_SLOT * max(1, slots)))
        size = min(left, max(floor, min(partition_chips, share)))
        sizes.append(size)
        left -= size
    return sizes


def task_slots(description: dict[str, Any]) -> int:
    """Tasks an engine runs at once, from its :meth:`~resflow.executor.Executor.describe`."""
    threads = description.get("threads_per_worker", 1)
    threads = max(threads) if isinstance(threads, list) and threads else int(threads or 1)
    return max(1, int(description.get("workers", 1)) * threads)


def bucket_splits(n_chips: int, n_buckets: int, partition_chips: int) -> int:
    """Stage-3 partitions per bucket so that partitions hold about ``partition_chips`` chips
    even when every chip falls in one bucket."""
    return max(1, math.ceil(n_chips / max(1, n_buckets * partition_chips)))


# -- the stage functions -----------------------------------------------------------------

@failing_partition(STAGE1)
def stage1_features(settings: GraphSettings, refs: list[ChipRef],
                    env: TaskEnv) -> list[Features | ChipFailure]:
    """Read each chip (no halo) and compute its Lite0 embedding; a chip that cannot be read
    or embedded becomes a :class:`~resflow.failures.ChipFailure`."""
    from resflow.stages import extract_features

    if not refs:
        return []
    clock = _Clock()
    device = _device(settings, env)
    gallery = load_gallery(settings.gallery)
    archive = _archive(settings.archive)
    failures: list[ChipFailure] = []
    with clock("read"):
        refs, pixels = read_chips(refs, archive.read_chips, STAGE1, failures)
    with clock("stage1"):
        refs, vectors = compute_chips(
            refs, np.stack([p.image for p in pixels]) if pixels else np.empty((0,)),
            partial(extract_features, extractor=gallery.feature_extractor(),
                    batch_size=settings.batch_size, device=device), STAGE1, failures)
    share = clock.share(len(refs))
    return [*failures, *(Features(ref, vec, share) for ref, vec in zip(refs, vectors, strict=True))]


@failing_partition(STAGE2)
def stage2_hashing(settings: GraphSettings, splits: int, records: list[Features | ChipFailure],
                   env: TaskEnv) -> list[Routed | ChipFailure]:
    """Hash each embedding and route the chip reference to its nearest bucket (failures of
    stage 1 pass on unchanged)."""
    from resflow.stages import map_codes

    failures = [r for r in records if isinstance(r, ChipFailure)]
    records = [r for r in records if not isinstance(r, ChipFailure)]
    if not records:
        return list(failures)
    clock = _Clock()
    gallery = load_gallery(settings.gallery)
    with clock("stage2"):
        _, buckets = map_codes(np.stack([r.features for r in records]), gallery.hashing_head(),
                               gallery.bucket_codes)
    return [*failures, *(
        Routed(r.ref, int(b), clock.share(len(records), r.seconds),
               split=_split_of(r.ref, splits))
        for r, b in zip(records, buckets, strict=True)
    )]


def _split_of(ref: ChipRef, splits: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{ref.scene}/{ref.row}/{ref.col}".encode(),
                                          digest_size=4).digest()) % splits


def regroup_key(splits: int, record: Routed | ChipFailure) -> int:
    """Stage-3 partition key: one partition per (bucket, split); failures go to the first."""
    if isinstance(record, ChipFailure):
        return 0
    return record.bucket * splits + record.split


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


def quantise(probability: np.ndarray) -> np.ndarray:
    """Probability in ``[0, 1]`` to uint8 ``0..255``, rounded to nearest."""
    return np.rint(np.clip(probability, 0.0, 1.0) * 255.0).astype(np.uint8)


def _segment_and_write(settings: GraphSettings, gallery: Gallery, device: Any,
                       buckets: dict[ChipRef, int], pixels: dict[ChipRef, ChipPixels],
                       clock: _Clock, failures: list[ChipFailure]
                       ) -> list[tuple[ChipRef, int, float]]:
    """Segment halo-read chips bucket by bucket with each bucket's model, quantise them, mask
    them with their halo (so specks crossing a chip border are judged whole), trim, then
    write them all at once (side-by-side chips share one write per array).

    Returns ``(chip, bucket, building fraction)`` of every chip written; the others are
    appended to ``failures``. Time goes to ``clock``.
    """
    from resflow.stages import segment

    halo = settings.halo
    scenes = _archive(settings.archive).scenes
    done: list[tuple[ChipRef, int]] = []
    chips: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    for bucket in sorted(set(buckets.values())):
        group = sorted(ref for ref, b in buckets.items() if b == bucket)
        with clock("preprocess"):
            images = np.stack([pixels[ref].image for ref in group])
        with clock("stage3"):
            kept, probability = compute_chips(
                group, images, partial(segment, segmenter=gallery.segmenter(bucket),
                                       batch_size=settings.batch_size, device=device),
                STAGE3, failures)
        with clock("write"):
            for ref, prob in zip(kept, probability, strict=True):
                quantised = quantise(np.where(pixels[ref].valid, prob, 0.0))
                mask = building_mask(quantised, settings.threshold * 255, min_pixels(
                    settings.min_building_m2, scenes[ref.scene].gsd_m))
                chips.append(trim(quantised, ref, halo))
                masks.append(trim(mask, ref, halo).astype(np.uint8))
                done.append((ref, bucket))
        del images, probability  # before the next bucket's stack: one bucket's floats at a time
    with clock("write"):
        written = set(write_chips(_store(settings.out), [ref for ref, _ in done], chips,
                                  masks, STAGE3, failures))
    return [(ref, bucket, float(np.mean(mask)))
            for (ref, bucket), mask in zip(done, masks, strict=True) if ref in written]


@failing_partition(STAGE3)
def stage3_segment(
    settings: GraphSettings, records: list[Routed | ChipFailure], env: TaskEnv
) -> list[ChipResult | ChipFailure]:
    """Re-read each chip with a halo of context, segment it with its bucket's model, and
    write it.

    Writing a chip twice writes the same bytes, so a re-executed task is harmless. A chip
    that cannot be read, segmented or written becomes a :class:`~resflow.failures.ChipFailure`
    (earlier failures pass on unchanged).
    """
    failures = [r for r in records if isinstance(r, ChipFailure)]
    routed = {r.ref: r for r in records if not isinstance(r, ChipFailure)}
    if not routed:
        return list(failures)
    clock = _Clock()
    device = _device(settings, env)
    gallery = load_gallery(settings.gallery)
    archive = _archive(settings.archive)
    with clock("read"):
        refs, pixels = read_chips(sorted(routed), partial(archive.read_chips, halo=settings.halo),
                                  STAGE3, failures)
    written = _segment_and_write(settings, gallery, device,
                                 {ref: routed[ref].bucket for ref in refs},
                                 dict(zip(refs, pixels, strict=True)), clock, failures)
    return [*failures, *(ChipResult(ref, bucket, gallery.model_name(bucket), fraction,
                                    clock.share(len(written), routed[ref].seconds))
                         for ref, bucket, fraction in written)]


def centre(pixels: ChipPixels, ref: ChipRef, halo: int) -> np.ndarray:
    """The nominal chip (``chip x chip``) inside a halo read: what stage 1 sees.

    Equal, bit for bit, to reading the chip without a halo.
    """
    return pixels.image[:, halo:halo + ref.chip, halo:halo + ref.chip]


@failing_partition(FUSED)
def fused_stages(settings: GraphSettings, refs: list[ChipRef],
                 env: TaskEnv) -> list[ChipResult | ChipFailure]:
    """Stages 1, 2 and 3 of one partition in one task: each chip is read once, with its halo.

    Stage 1 embeds the centre of each halo read (the chip itself), stage 2 routes it, and
    stage 3 segments the partition's chips bucket by bucket from the same pixels. The maps,
    routes and failures are those of the regrouped plan (:func:`stage1_features` ->
    :func:`stage2_hashing` -> regroup -> :func:`stage3_segment`); only where the work runs
    differs: nothing crosses processes between stages, no stage waits for another's slowest
    partition, and the partition's chips are written together.
    """
    from resflow.stages import extract_features, map_codes

    if not refs:
        return []
    clock = _Clock()
    device = _device(settings, env)
    gallery = load_gallery(settings.gallery)
    archive = _archive(settings.archive)
    failures: list[ChipFailure] = []
    halo = settings.halo
    with clock("read"):
        refs, pixels = read_chips(refs, partial(archive.read_chips, halo=halo), STAGE1,
                                  failures)
    with clock("preprocess"):
        centres = (np.stack([centre(p, r, halo) for p, r in zip(pixels, refs, strict=True)])
                   if pixels else np.empty((0,)))
    with clock("stage1"):
        embedded, vectors = compute_chips(
            refs, centres, partial(extract_features, extractor=gallery.feature_extractor(),
                                   batch_size=settings.batch_size, device=device),
            STAGE1, failures)
    del centres  # a copy of every chip: freed before stage 3's own stacks
    if not embedded:
        return list(failures)
    with clock("stage2"):
        _, buckets = map_codes(np.stack(vectors), gallery.hashing_head(), gallery.bucket_codes)
    written = _segment_and_write(settings, gallery, device,
                                 dict(zip(embedded, buckets.tolist(), strict=True)),
                                 dict(zip(refs, pixels, strict=True)), clock, failures)
    return [*failures, *(ChipResult(ref, bucket, gallery.model_name(bucket), fraction,
                                    clock.share(len(written)))
                         for ref, bucket, fraction in written)]


# -- running it --------------------------------------------------------------------------

@dataclass
class RunResult:
    """What :func:`run_graph` did: per-chip results, the report, and where the maps are.

    Attributes
    ----------
    results
        One :class:`ChipResult` per chip written by this run, in chip order.
    report
        The run report (also in ``OUT/run_report.json``).
    exports
        Files written besides the store (COGs, footprints GeoJSON); none when chips failed.
    failures
        Chips that could not be mapped, in chip order (also in the report's ``errors``).
    """

    results: list[ChipResult]
    report: Any
    exports: list[Path] = field(default_factory=list)
    failures: list[ChipFailure] = field(default_factory=list)


def build_graph(executor: Executor, settings: GraphSettings, partitions: list[list[ChipRef]],
                n_buckets: int, partition_chips: int, plan: str = "fused") -> Any:
    """The graph on ``executor``; returns the collection of per-chip results.

    ``plan="fused"``: one task per partition runs stages 1 to 3 (:func:`fused_stages`).
    ``plan="regrouped"``: stage 1 and stage 2 per partition, a regroup by bucket, then
    stage 3 per (bucket, split), so every stage-3 task serves one bucket's model. Both
    write the same maps; see ``RunConfig.plan``.
    """
    gpu = StageResources(cpus=settings.torch_threads, gpu=executor.gpu_share)
    coll = executor.from_partitions(partitions)
    if plan == "fused":
        return executor.map_partitions(coll, partial(fused_stages, settings), name=FUSED,
                                       resources=gpu)
    n_chips = sum(map(len, partitions))
    splits = bucket_splits(n_chips, n_buckets, partition_chips)
    cpu = replace(CPU, cpus=settings.torch_threads)
    coll = executor.map_partitions(coll, partial(stage1_features, settings), name=STAGE1,
                                   resources=gpu)
    coll = executor.map_partitions(coll, partial(stage2_hashing, settings, splits), name=STAGE2,
                                   resources=cpu)
    coll = executor.group_by_key(coll, partial(regroup_key, splits), n_buckets * splits)
    return executor.map_partitions(coll, partial(stage3_segment, settings), name=STAGE3,
                                   resources=gpu)


def run_graph(config: RunConfig, executor: Executor) -> RunResult:
    """Run the whole graph on ``executor``: plan, compute, write, finalize, export.

    Inputs refused at ingest, scenes without a valid pixel and chips that failed are the
    report's ``errors``. When chips failed, the store keeps its report but is not marked
    complete (its ledger lacks them, so ``--resume`` retries just those) and nothing is
    exported.

    Raises
    ------
    resflow.outputs.OutputComplete
        ``resume`` over a complete output (nothing to do).
    ResflowError
        for an unusable archive, gallery or output path, before any task runs.
    """
    from resflow.report import BucketUse, ClusterShape, RunReport

    start = time.perf_counter()
    settings = GraphSettings.from_config(config)
    archive = Archive.open(settings.archive)
    gallery = load_gallery(settings.gallery)  # verified here, before any task is shipped
    check_resolution(archive, gallery)
    run_config = config.model_dump(mode="json")
    store = OutputStore.create(settings.out, archive, overwrite=config.overwrite,
                               resume=config.resume, run_config=run_config)
    skip = store.done_chips() if config.resume else None
    partitions = plan_partitions(archive, config.partition_chips, skip,
                                 slots=task_slots(executor.describe()))
    models_id = gallery_key(settings.gallery)[1][:12]
    executor.preload(partial(preload_models, settings.gallery), name=f"models-{models_id}")
    mean_partition = math.ceil(sum(map(len, partitions)) / max(1, len(partitions)))
    graph = build_graph(executor, settings, partitions, len(gallery.bucket_codes),
                        mean_partition, config.plan)  # regrouped stage 3 splits to this size
    compute_start = time.perf_counter()
    collected = sorted(executor.collect(graph), key=lambda r: r.ref)
    compute_wall = time.perf_counter() - compute_start
    failures = [r for r in collected if isinstance(r, ChipFailure)]
    results = [r for r in collected if not isinstance(r, ChipFailure)]
    errors = [*archive.refused, *empty_scene_errors(archive, [r for p in partitions for r in p]),
              *(f.as_record(archive.scenes[f.ref.scene].source) for f in failures)]
    report = RunReport(
        out=str(settings.out), chips=len(results), km2=sum(r.ref.km2 for r in results),
        buckets=_bucket_uses(results, BucketUse),
        stage_seconds=_stage_seconds(results, compute_wall, executor.describe()),
        wall_s=time.perf_counter() - start, backend=executor.name,
        cluster=ClusterShape.from_executor(executor.describe()), config=run_config,
        errors=errors, skipped=archive.skipped_records(), peak_rss_mb=_peak_rss_mb(),
    )
    if failures:
        store.record_unfinished(report.to_dict())
        return RunResult(results, report, failures=failures)
    store.finalize(report.to_dict())
    return RunResult(results, report, _export(config, store))


def _bucket_uses(results: list[ChipResult], bucket_use: Any) -> list[Any]:
    counts: dict[tuple[int, str], int] = {}
    for r in results:
        counts[(r.bucket, r.model)] = counts.get((r.bucket, r.model), 0) + 1
    return [bucket_use(bucket=b, model=m, chips=n) for (b, m), n in sorted(counts.items())]


def _stage_seconds(results: list[ChipResult], compute_wall: float,
                   description: dict[str, Any]) -> dict[str, float]:
    """Task seconds per stage, plus ``scheduling``: the compute wall time the task slots
    spent outside stage functions (dispatch, serialisation, regroup, waiting)."""
    from resflow.report import STAGES

    totals = dict.fromkeys(STAGES, 0.0)
    for r in results:
        for key, value in r.seconds.items():
            totals[key] = totals.get(key, 0.0) + value
    slots = task_slots(description)
    busy = sum(v for k, v in totals.items() if k != "scheduling")
    totals["scheduling"] = max(0.0, compute_wall * slots - busy)
    return totals


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _export(config: RunConfig, store: OutputStore) -> list[Path]:
    from resflow.export import export_cogs, export_footprints

    written: list[Path] = []
    if config.cog_dir is not None:
        written.extend(export_cogs(store, config.cog_dir))
    if config.footprints is not None:
        written.extend(export_footprints(store, config.footprints))
    return written
