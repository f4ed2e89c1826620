"""The ``fused`` plan: the three stages of one partition and its writes as one task.

Each prediction window is read once, with its halo, and encoded once; nothing crosses
processes between stages and no stage waits for another's slowest partition.
"""

from __future__ import annotations

import numpy as np

from resflow.chips import ChipRef
from resflow.executor import TaskEnv
from resflow.failures import ChipFailure
from resflow.inference.caches import cached_archive, cached_store, load_gallery
from resflow.inference.clock import Clock
from resflow.inference.settings import FUSED, STAGE1, GraphSettings
from resflow.inference.summary import PartitionSummary, failed_partition
from resflow.inference.window_work import (
    WindowFailed,
    cut_window,
    device_held,
    expand,
    map_window,
    read_window,
    windows_of,
    with_data,
    write_partition_shards,
)
from resflow.planning import Partition
from resflow.retries import RetryCount


def fused_stages(settings: GraphSettings, records: list[Partition],
                 env: TaskEnv) -> list[PartitionSummary]:
    """Stages 1, 2 and 3 of one partition in one task, then its shards written.

    Each prediction window of the partition is read once, with its halo, and encoded once:
    stage 1 embeds the window from its encoder maps, stage 2 routes it, and stage 3 decodes
    the same maps with the model of its bucket, the task's GPU held for that device work
    only. The maps, routes and failures are those of
    the regrouped plan; only where the work runs differs: nothing crosses processes between
    stages and no stage waits for another's slowest partition.
    """
    summaries = []
    for partition in records:
        try:
            summaries.append(_fused_partition(settings, partition, env))
        except Exception as exc:  # e.g. the gallery or store vanished under a worker
            summaries.append(failed_partition(partition, FUSED, exc))
    return summaries


def _fused_partition(settings: GraphSettings, partition: Partition,
                     env: TaskEnv) -> PartitionSummary:
    clock, counter = Clock(), RetryCount()
    summary = PartitionSummary(partition=partition.index)
    gallery = load_gallery(settings.gallery, settings.gallery_version)
    archive = cached_archive(settings.archive)
    failures: list[ChipFailure] = []
    shards = expand(partition, archive, cached_store(settings.out))
    mapped: dict[ChipRef, tuple[np.ndarray, np.ndarray, int]] = {}
    for window, refs in windows_of(settings, archive, with_data(shards)).items():
        try:
            source = read_window(settings, archive, window, STAGE1, counter, clock)
            with device_held(settings, env) as device:
                bucket, chip = map_window(settings, gallery, device, source, STAGE1, clock)
            mapped.update(cut_window(settings, window, refs, source, chip, bucket, clock))
        except WindowFailed as failed:
            failures.extend(ChipFailure(ref, failed.stage, failed.problem) for ref in refs)
    write_partition_shards(settings, shards, mapped, failures, summary, counter, clock, FUSED)
    summary.seconds = dict(clock.seconds)
    return summary
