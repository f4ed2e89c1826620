"""The ``regrouped`` plan, RESFlow's shape: stages 1 and 2 per partition, a regroup by
bucket, stage 3 per bucket, a regroup back by partition, and the writes.

Chip references move between stages, not pixels (:mod:`resflow.inference.records`); stage 3
reads and encodes each window again. :func:`regroup_key` and :func:`origin_key` say where a
record goes at each regroup, within blocks of ``FAN_IN`` partitions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np

from resflow.chips import ChipRef
from resflow.executor import TaskEnv, block_of
from resflow.failures import ChipFailure, describe_error
from resflow.inference.caches import cached_archive, cached_store, load_gallery
from resflow.inference.clock import Clock
from resflow.inference.records import Features, Planned, Routed, Segmented, StorageRetries
from resflow.inference.settings import STAGE1, STAGE3, WRITE, GraphSettings
from resflow.inference.summary import PartitionSummary, failed_partition
from resflow.inference.window_work import (
    WindowFailed,
    cut_window,
    device_held,
    embed_window,
    expand,
    map_window,
    read_window,
    windows_of,
    with_data,
    write_partition_shards,
)
from resflow.planning import Partition
from resflow.retries import RetryCount


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
    clock, counter = Clock(), RetryCount()
    gallery = load_gallery(settings.gallery, settings.gallery_version)
    archive = cached_archive(settings.archive)
    refs = with_data(expand(partition, archive, cached_store(settings.out)))
    failures: list[ChipFailure] = []
    embedded: list[tuple[ChipRef, np.ndarray]] = []
    for window, chips in windows_of(settings, archive, refs).items():
        try:
            source = read_window(settings, archive, window, STAGE1, counter, clock)
            with device_held(settings, env) as device:
                embedding = embed_window(settings, gallery, device, source, STAGE1, clock)
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
    clock = Clock()
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
    clock, counter = Clock(), RetryCount()
    gallery = load_gallery(settings.gallery, settings.gallery_version)
    archive = cached_archive(settings.archive)
    failures: list[ChipFailure] = []
    mapped: dict[ChipRef, tuple[np.ndarray, np.ndarray, int]] = {}
    for window, refs in windows_of(settings, archive, sorted(routed)).items():
        try:
            source = read_window(settings, archive, window, STAGE3, counter, clock)
            with device_held(settings, env) as device:
                bucket, chip = map_window(settings, gallery, device, source, STAGE3, clock,
                                          bucket=routed[refs[0]].bucket)
            mapped.update(cut_window(settings, window, refs, source, chip, bucket, clock))
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
            summaries.append(failed_partition(partition, WRITE, exc))
    return summaries


def _write_partition(settings: GraphSettings, partition: Partition,
                     records: list[Any]) -> PartitionSummary:
    clock, counter = Clock(), RetryCount()
    summary = PartitionSummary(partition=partition.index)
    failures = [r for r in records if isinstance(r, ChipFailure)]
    chips = [r for r in records if isinstance(r, Segmented)]
    mapped = {r.ref: (r.probability, r.mask, r.bucket) for r in chips}
    shards = expand(partition, cached_archive(settings.archive), cached_store(settings.out))
    write_partition_shards(settings, shards, mapped, failures, summary, counter, clock, WRITE)
    summary.retries += sum(r.count for r in records if isinstance(r, StorageRetries))
    seconds = dict(clock.seconds)
    for r in chips:
        for key, value in r.seconds.items():
            seconds[key] = seconds.get(key, 0.0) + value
    summary.seconds = seconds
    return summary


def regroup_key(splits: int, per_block: int, partitions: int, blocks: int, record: Any) -> int:
    """Stage-3 partition of a regrouped-plan record: one per (block, bucket, split), in the
    block of the partition the chip was planned in; everything that is not a routed chip
    goes to its block's first stage-3 partition."""
    base = block_of(record.origin, partitions, blocks) * per_block
    bucket = getattr(record, "bucket", None)
    return base if bucket is None else base + bucket * splits + record.split


def origin_key(record: Any) -> int:
    """The partition a record was planned in: where the regrouped plan writes it."""
    return record.origin
