"""The inference graph, defined once for every engine, in two plans with the same maps.

This module is the orchestration: it plans on the driver (:mod:`resflow.planning`), wires
the task functions (:mod:`resflow.inference`, run on the workers) into an engine's graph
(:func:`build_graph`, which draws both plans), and adds up what the tasks report
(:func:`run_graph`).

The driver never holds a record per chip: partitions are runs of shards, tasks return one
:class:`~resflow.inference.summary.PartitionSummary` each, and a
:class:`~resflow.inference.summary.Tally` adds them up as they arrive.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from resflow.archive import Archive
from resflow.bars import RunProgress
from resflow.config import RunConfig
from resflow.executor import CPU, Executor, StageResources
from resflow.failures import ChipFailure, empty_scene_errors
from resflow.inference.caches import load_gallery, preload_models
from resflow.inference.fused import fused_stages
from resflow.inference.regrouped import (
    failing_stage,
    origin_key,
    regroup_key,
    stage1_features,
    stage2_hashing,
    stage3_segment,
    write_stage,
)
from resflow.inference.settings import (
    FUSED,
    STAGE1,
    STAGE2,
    STAGE3,
    WRITE,
    GraphSettings,
    settings_from_config,
)
from resflow.inference.summary import Tally
from resflow.planning import (
    Partition,
    bucket_splits,
    plan,
    regroup_blocks,
    shard_edge,
    task_slots,
)
from resflow.preflight import check_plan, check_resolution
from resflow.store.format import STAC_FOLDER
from resflow.store.writer import OutputStore


@dataclass
class RunResult:
    """What :func:`run_graph` did.

    Attributes
    ----------
    report
        The run report (also in ``OUT/run_report.json``).
    totals
        The run's added-up partition summaries.
    exports
        Files written besides the store (COGs, footprints); none when chips failed.
    """

    report: Any
    totals: Tally
    exports: list[Path] = field(default_factory=list)

    @property
    def failures(self) -> list[ChipFailure]:
        """Chips that could not be mapped, in chip order (also in the report's ``errors``)."""
        return sorted(self.totals.failures, key=lambda f: f.ref)


def build_graph(executor: Executor, settings: GraphSettings, partitions: list[Partition],
                n_buckets: int, partition_chips: int, plan_name: str = "fused") -> Any:
    """The graph on ``executor``; returns the collection of partition summaries.

    ``regrouped`` is RESFlow's shape::

        partitions of whole output shards
          -> stage 1  read prediction windows, Lite0 features       (GPU stage)
          -> stage 2  hash codes, nearest bucket                    -> (chip ref, bucket) records
          -> regroup by bucket, within blocks of FAN_IN partitions  (references move, not pixels)
          -> stage 3  re-read the chips' windows with a halo, segment with that bucket's
                      model, trim the halo, quantise to uint8       (GPU stage)
          -> regroup back to the planned partitions, within the same blocks
          -> write    each partition's shards, one object per shard and array
          -> one summary per partition

    ``fused`` (the default) runs the same three stages of a partition, and its writes, in
    one task (:func:`~resflow.inference.fused.fused_stages`): each prediction window
    (:mod:`resflow.windows`) is read once, with its halo, and no pixels cross processes.
    With every bucket's model already loaded in each worker, the regroup buys nothing but
    two shuffles, a second read of every window and barriers between stages;
    ``benchmarks/README.md`` measures the difference. Both plans keep a window's chips in
    one task per stage, so a stage encodes each window once, and both write the same maps;
    see ``RunConfig.plan``.
    """
    gpu = StageResources(cpus=settings.torch_threads, gpu=executor.gpu_share)
    coll = executor.from_partitions([[p] for p in partitions])
    if plan_name == "fused":
        return executor.map_partitions(coll, partial(fused_stages, settings), name=FUSED,
                                       resources=gpu)
    n = len(partitions)
    blocks = regroup_blocks(n)
    block_chips = sum(p.chips for p in partitions) / blocks
    splits = bucket_splits(math.ceil(block_chips), n_buckets, partition_chips)
    per_block = n_buckets * splits
    cpu = replace(CPU, cpus=settings.torch_threads)
    coll = executor.map_partitions(coll, partial(stage1_features, settings), name=STAGE1,
                                   resources=gpu)
    coll = executor.map_partitions(coll, failing_stage(STAGE2, partial(stage2_hashing, settings,
                                                                  splits)),
                                   name=STAGE2, resources=cpu)
    coll = executor.group_by_key(coll, partial(regroup_key, splits, per_block, n, blocks),
                                 blocks * per_block, blocks=blocks)
    coll = executor.map_partitions(coll, failing_stage(STAGE3, partial(stage3_segment, settings)),
                                   name=STAGE3, resources=gpu)
    coll = executor.group_by_key(coll, origin_key, n, blocks=blocks)
    return executor.map_partitions(coll, partial(write_stage, settings), name=WRITE,
                                   resources=cpu)


def run_graph(config: RunConfig, executor: Executor) -> RunResult:
    """Run the whole graph on ``executor``: plan, compute, write, finalize, export.

    Inputs refused at ingest, scenes without a valid pixel and chips that failed are the
    report's ``errors``. When chips failed, the store keeps its report but is not marked
    complete (its ledger lacks them, so ``--resume`` retries just those shards) and nothing
    is exported.

    Raises
    ------
    resflow.store.targets.OutputComplete
        ``resume`` over a complete output (nothing to do).
    ResflowError
        for an unusable archive, gallery or output location, or a plan the engine cannot
        run, before any task runs.
    """
    from resflow.report import BucketUse, ClusterShape, RunReport

    start = time.perf_counter()
    check_plan(type(executor), config.plan)
    settings = settings_from_config(config)
    archive = Archive.open(settings.archive)
    archive.check()
    # verified here, before any task is shipped
    gallery = load_gallery(settings.gallery, settings.gallery_version)
    check_resolution(archive, gallery)
    run_config = config.model_dump(mode="json")
    store = OutputStore.create(
        settings.out, archive, overwrite=config.overwrite, resume=config.resume,
        run_config=run_config, shard_chips=shard_edge(config.partition_chips, config.window),
        bucket_models={b: gallery.model_name(b) for b in range(len(gallery.bucket_codes))},
        gallery_version=settings.gallery_version)
    description = executor.describe()
    partitions = plan(archive.scenes, shard_chips=store.shard_chips,
                      partition_chips=config.partition_chips, slots=task_slots(description),
                      done=store.done_shards if config.resume else None)
    executor.preload(partial(preload_models, settings.gallery, settings.gallery_version),
                     name=f"models-{settings.gallery_version[:12]}")
    mean_partition = math.ceil(sum(p.chips for p in partitions) / max(1, len(partitions)))
    progress = RunProgress(partitions, archive.scenes, store.shard_chips,
                           enabled=executor.progress)
    if executor.progress:
        # the last stage of both plans has one task per planned partition
        executor.on_task_done(FUSED if config.plan == "fused" else WRITE,
                              progress.partition_done)
    graph = build_graph(executor, settings, partitions, len(gallery.bucket_codes),
                        mean_partition, config.plan)  # regrouped stage 3 splits to this size
    compute_start = time.perf_counter()
    totals = Tally()
    with progress:
        for summary in executor.collect(graph):
            totals.add(summary)
    compute_wall = time.perf_counter() - compute_start
    report = RunReport(
        out=store.display, chips=totals.chips, km2=totals.km2,
        buckets=[BucketUse(bucket=b, model=m, chips=n)
                 for (b, m), n in sorted(totals.buckets.items())],
        stage_seconds=_stage_seconds(totals, compute_wall, description),
        wall_s=time.perf_counter() - start, backend=executor.name,
        cluster=ClusterShape.from_executor(description), config=run_config,
        errors=_errors(archive, totals), skipped=archive.skipped_records(),
        empty_chips=totals.empty_chips, store_retries=totals.retries,
        peak_rss_mb=_peak_rss_mb(),
    )
    if not totals.complete:
        store.record_unfinished(report.to_dict())
        return RunResult(report, totals)
    store.finalize(report.to_dict())
    return RunResult(report, totals, _export(config, store))


def _errors(archive: Archive, totals: Tally) -> list[dict[str, str]]:
    """Refused inputs, scenes without data, lost shards and failed chips, as report errors."""
    lost = [{"source": archive.scenes[segment.scene].source,
             "where": f"{archive.scenes[segment.scene].source}: scene {segment.scene}, shards "
             f"{segment.start}..{segment.stop - 1}", "problem": problem,
             "fix": "run again with --resume to retry them", "scene": segment.scene}
            for segment, problem in totals.lost_shards]
    failed = [f.as_record(archive.scenes[f.ref.scene].source)
              for f in sorted(totals.failures, key=lambda f: f.ref)]
    empty = totals.scenes - totals.scenes_with_data - {f.ref.scene for f in totals.failures} \
        - {segment.scene for segment, _ in totals.lost_shards}
    return [*archive.refused, *empty_scene_errors(archive, empty), *lost, *failed]


def _stage_seconds(totals: Tally, compute_wall: float,
                   description: dict[str, Any]) -> dict[str, float]:
    """Task seconds per stage, plus ``scheduling``: the compute wall time the task slots
    spent outside stage functions (dispatch, serialisation, regroup, waiting)."""
    from resflow.report import STAGES

    out = dict.fromkeys(STAGES, 0.0)
    for key, value in totals.seconds.items():
        out[key] = out.get(key, 0.0) + value
    busy = sum(v for k, v in out.items() if k != "scheduling")
    out["scheduling"] = max(0.0, compute_wall * task_slots(description) - busy)
    return out


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _export(config: RunConfig, store: OutputStore) -> list[Path]:
    """The run's exports (:func:`resflow.exports.export_run`): the COGs and footprints asked
    for, and a STAC Collection describing them, in ``config.stac_dir`` or, for a store on
    local disk, in ``OUT/stac`` (a store in object storage gets one when asked). Files
    already there were refused before the run (:func:`resflow.preflight.check_run`) unless
    it overwrites or resumes, so they are replaced here."""
    stac_dir = config.stac_dir if config.stac else None
    if config.stac and stac_dir is None and isinstance(store.path, Path):
        stac_dir = store.path / STAC_FOLDER
    if config.cog_dir is None and config.footprints is None and stac_dir is None:
        return []  # and the export libraries (geopandas, pystac) are never imported
    from resflow.exports import export_run

    return export_run(store, cog_dir=config.cog_dir, footprints=config.footprints,
                      stac_dir=stac_dir, overwrite=config.overwrite or config.resume)
