"""One chip's path through the graph, top to bottom: read, encode, route, segment, trim, write.

Chips are predicted a window of chips at a time (:mod:`resflow.windows`), as overlap-tile
inference, dask's ``map_overlap`` in three steps: *add a halo* (``Archive.read_window``,
reflected beyond scene edges as ``boundary="reflect"``), *compute* on the padded window,
*trim* the halo and cut the window back into its chips. The encoder runs once on that read
and serves both stages (:mod:`resflow.stages`): stage 1 embeds the window from its maps,
stage 3 decodes them. Only that device work holds the task's GPU (:func:`device_held`);
reads, masks and writes do not. A window that cannot be read or mapped fails its chips.
Both plans (:mod:`resflow.inference.fused`, :mod:`resflow.inference.regrouped`) are built
from these steps, so they map every chip the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from resflow.archive import Archive
from resflow.chips import ChipRef, SourceChip
from resflow.executor import TaskEnv
from resflow.failures import ChipFailure, describe_error
from resflow.gallery import Gallery
from resflow.inference.caches import cached_archive, cached_store, load_gallery
from resflow.inference.clock import Clock
from resflow.inference.settings import STAGE3, GraphSettings
from resflow.inference.summary import PartitionSummary
from resflow.masks import min_pixels
from resflow.planning import Partition
from resflow.retries import RetryCount, retrying, retrying_each
from resflow.store.format import NO_DATA_CHIP, NOT_MAPPED, UNWRITTEN
from resflow.store.mask_rule import MaskRule
from resflow.store.shards import ShardWrite
from resflow.store.writer import OutputStore
from resflow.windows import Window, group_by_window

if TYPE_CHECKING:
    from resflow.stages import FeatureMaps, QuantisedChip


def task_device(settings: GraphSettings, gpu: str | None) -> Any:
    """The torch device a task computes on: ``gpu`` (its engine's, or a ticket's) or the
    CPU, with this process's intra-op threads set from the run's settings."""
    from resflow.devices import resolve_device, set_torch_threads

    set_torch_threads(settings.torch_threads)
    return resolve_device(settings.device, gpu)  # type: ignore[arg-type]


@contextmanager
def device_held(settings: GraphSettings, env: TaskEnv) -> Iterator[Any]:
    """The torch device for one window's device work, its GPU held for that work only
    (:meth:`resflow.executor.TaskEnv.gpu_held`): reads, masks and writes hold none."""
    with env.gpu_held() as gpu:
        yield task_device(settings, gpu)


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


def read_window(settings: GraphSettings, archive: Archive, window: Window, stage: str,
                counter: RetryCount, clock: Clock) -> SourceChip:
    """A window's pixels as stored, with its halo, retried on storage errors.

    Raises
    ------
    WindowFailed
        The window cannot be read, or holds pixels that harmonise to NaN or Inf.
    """
    with clock("read"):
        try:
            source = retrying(lambda: archive.read_window(window, settings.halo), counter)
        except Exception as exc:
            raise WindowFailed(stage, "reading its window of chips failed "
                               f"({describe_error(exc)})") from exc
        if not source.finite():
            raise WindowFailed(stage, "its window's harmonised pixels hold NaN or Inf (source "
                               "values too extreme to scale), so no model can map it")
    return source


def embed_window(settings: GraphSettings, gallery: Gallery, device: Any, source: SourceChip,
                 stage: str, clock: Clock) -> np.ndarray:
    """Stage 1 alone: a window's ``(1, 1280)`` embedding, pooled without its halo (what
    stage 2 routes on), its encoder maps dropped on the device.

    Raises
    ------
    WindowFailed
        The model raised, or embedded the window to a value that is not finite.
    """
    return _encoded(settings, gallery, device, source, stage, clock)[0]


def map_window(settings: GraphSettings, gallery: Gallery, device: Any, source: SourceChip,
               stage: str, clock: Clock, bucket: int | None = None
               ) -> tuple[int, QuantisedChip]:
    """A window's device work: one encoder pass, its route (stage 2, unless ``bucket`` was
    routed before) and its bucket's decoder over the same maps, quantised and thresholded
    on ``device``. The maps never leave this function, so they are freed before the device
    is given back (:func:`device_held`).

    Raises
    ------
    WindowFailed
        The model raised or returned values that are not finite.
    """
    from resflow.stages import decode_quantised

    embedding, maps = _encoded(settings, gallery, device, source, stage, clock)
    if bucket is None:
        bucket = route_window(gallery, embedding, clock)
    with clock("stage3"):
        try:
            chip = decode_quantised([maps], [source.valid], gallery.segmenter(bucket),
                                    threshold=settings.threshold, size=source.valid.shape,
                                    batch_size=1, device=device)[0]
        except Exception as exc:
            raise WindowFailed(STAGE3, f"the model raised {describe_error(exc)}") from exc
        if not chip.finite:
            raise WindowFailed(STAGE3, "the model returned NaN or Inf")
    return bucket, chip


def _encoded(settings: GraphSettings, gallery: Gallery, device: Any, source: SourceChip,
             stage: str, clock: Clock) -> tuple[np.ndarray, FeatureMaps]:
    """The encoder's one pass over a window read with its halo: its embedding and maps."""
    from resflow.model_input import SourceImages
    from resflow.stages import encode

    with clock("stage1"):
        try:
            embedding, maps = encode(SourceImages([source]), gallery.feature_extractor(),
                                     halo=settings.halo, batch_size=1, device=device)
        except Exception as exc:
            raise WindowFailed(stage, f"the model raised {describe_error(exc)}") from exc
        if not np.isfinite(embedding).all():
            raise WindowFailed(stage, "the model returned NaN or Inf")
    return embedding, maps[0]


def route_window(gallery: Gallery, embedding: np.ndarray, clock: Clock) -> int:
    """The bucket whose model segments a window: its embedding hashed and matched to the
    nearest bucket code (stage 2), the same function the regrouped plan runs per batch."""
    from resflow.stages import map_codes

    with clock("stage2"):
        _, buckets = map_codes(embedding, gallery.hashing_head(), gallery.bucket_codes)
    return int(buckets[0])


def cut_window(settings: GraphSettings, window: Window, refs: Sequence[ChipRef],
               source: SourceChip, chip: QuantisedChip, bucket: int, clock: Clock
               ) -> dict[ChipRef, tuple[np.ndarray, np.ndarray, int]]:
    """Split touching roofs and drop small components over the whole window with its halo,
    on the host, and cut out ``refs``.

    Returns ``chip -> (probability, mask, bucket)``, uint8 on the chip's in-scene window
    with :data:`~resflow.store.format.NOT_MAPPED` where the source holds no data.
    """
    scene = cached_archive(settings.archive).scenes[window.scene]
    with clock("stage3"):
        building = chip.building_mask(MaskRule(
            settings.threshold, min_pixels(settings.min_building_m2, scene.gsd_m),
            settings.halo, settings.split_dip))
    with clock("write"):
        mask = building.astype(np.uint8)
        mask[~source.valid] = NOT_MAPPED
        return {ref: (window.crop(chip.probability, ref, settings.halo),
                      window.crop(mask, ref, settings.halo), bucket) for ref in refs}


def write_partition_shards(settings: GraphSettings, shards: list[ShardChips],
                 mapped: dict[ChipRef, tuple[np.ndarray, np.ndarray, int]],
                 failures: list[ChipFailure], summary: PartitionSummary,
                 counter: RetryCount, clock: Clock, stage: str) -> None:
    """Write every shard of the partition, together (:meth:`OutputStore.write_shards`), and
    count what was written into ``summary``.

    A chip without valid pixels is written as not mapped (ledger -1); a chip with neither a
    result nor a failure record (lost on the way) becomes a failure here, so no chip is ever
    silently missing. A shard that cannot be written fails its chips.
    """
    store, archive = cached_store(settings.out), cached_archive(settings.archive)
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
        lost = retrying_each(
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
