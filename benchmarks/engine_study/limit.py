"""The pure-compute limit: the three model passes over preloaded chips on every core.

This is the speed no engine can beat on a machine: the same stage functions the graph
runs (:mod:`resflow.stages`), over the same chips, with every chip already in memory as a
float32 tensor, nothing read, written, serialised or scheduled. Each stage call uses one
torch thread (see the determinism notes in :mod:`resflow.stages`), so the limit runs one
Python thread per core, each on its own interleaved share of the chips; torch releases the
GIL inside its kernels, so the threads compute in parallel.

An engine's area rate divided by this limit's is the fraction of the machine it turns into
maps; the remainder is reading, writing, regrouping and scheduling. On a GPU (``device``)
the threads share the one device and every model call holds ``batch_size`` chips, as the
graph's tasks do there.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from benchmarks.engine_study.contention import contention
from benchmarks.engine_study.series import summarise
from resflow.archive import Archive
from resflow.chips import ChipRef
from resflow.gallery import Gallery
from resflow.stages import extract_features, map_codes, segment

CPU = torch.device("cpu")
LIMIT_STAGES = ("stage1", "stage2", "stage3")


@dataclass
class Preloaded:
    """Every chip of an archive in memory, as the graph's stages receive them.

    Attributes
    ----------
    refs
        The chips, in archive order.
    plain
        float32 ``(N, 3, chip, chip)``: stage 1 inputs, chips read without halo.
    context
        float32 ``(N, 3, chip + 2*halo, chip + 2*halo)``: stage 3 inputs, read with halo.
    km2
        Ground area of the chips, km^2.
    """

    refs: list[ChipRef]
    plain: np.ndarray
    context: np.ndarray
    km2: float

    @classmethod
    def read(cls, archive: Archive, halo: int) -> Preloaded:
        """Read every chip of ``archive`` twice (without and with ``halo``), untimed."""
        refs = archive.chips()
        plain = np.stack([archive.read_chip(ref).image for ref in refs])
        context = np.stack([archive.read_chip(ref, halo).image for ref in refs])
        return cls(refs, plain, context, float(sum(ref.km2 for ref in refs)))


def _share(index: np.ndarray, data: Preloaded, gallery: Gallery, batch_size: int,
           device: torch.device) -> dict[str, float]:
    """Stages 1, 2 and 3 on the chips at ``index``; returns seconds per stage."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    features = extract_features(data.plain[index], gallery.feature_extractor(),
                                batch_size=batch_size, device=device)
    seconds["stage1"] = time.perf_counter() - start
    start = time.perf_counter()
    _, buckets = map_codes(features, gallery.hashing_head(), gallery.bucket_codes)
    seconds["stage2"] = time.perf_counter() - start
    start = time.perf_counter()
    for bucket in np.unique(buckets):
        segment(data.context[index[buckets == bucket]], gallery.segmenter(int(bucket)),
                batch_size=batch_size, device=device)
    seconds["stage3"] = time.perf_counter() - start
    return seconds


def warm_up(data: Preloaded, gallery: Gallery, device: torch.device = CPU,
            batch_size: int = 1) -> None:
    """Build every model and let oneDNN (or CUDA) create its kernels, outside any timing.

    Segmenters are built lazily and cached by the gallery; building them here, in one
    thread, also keeps the timed threads from racing to build the same one.
    """
    for bucket in range(len(gallery.bucket_codes)):
        gallery.segmenter(bucket)
    _share(np.arange(min(batch_size if device.type == "cuda" else 1, len(data.refs))), data,
           gallery, batch_size, device)


def one_pass(data: Preloaded, gallery: Gallery, threads: int,
             batch_size: int = 8, device: torch.device = CPU) -> dict[str, Any]:
    """One timed pass of all chips on ``threads`` threads, chips dealt round-robin, the
    models on ``device``.

    Returns
    -------
    dict
        ``wall_s``, ``others_cores`` (:mod:`benchmarks.engine_study.contention`) and
        ``stage_seconds`` (summed over threads, like a run report's).
    """
    shares = [np.arange(i, len(data.refs), threads) for i in range(threads)]
    with contention() as record, ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="resflow-limit") as pool:
        results = list(pool.map(lambda idx: _share(idx, data, gallery, batch_size, device),
                                shares))
    stage_seconds = {s: float(sum(r[s] for r in results)) for s in LIMIT_STAGES}
    return {**record, "stage_seconds": stage_seconds}


def summarise_passes(data: Preloaded, passes: list[dict[str, Any]], threads: int,
                     single: dict[str, Any] | None = None) -> dict[str, Any]:
    """The limit's rates from timed passes (:func:`one_pass`).

    Returns
    -------
    dict
        ``threads``, ``chips``, ``km2``, the summaries ``wall_s``, ``km2_per_s``,
        ``chips_per_s``, ``others_cores``; ``stage_seconds`` of the median pass and, given
        a one-thread pass ``single``, ``single_thread_km2_per_s`` and ``thread_scaling``
        (rate on ``threads`` / rate on one / ``threads``: how well the cores add up).
    """
    walls = [p["wall_s"] for p in passes]
    median_pass = sorted(passes, key=lambda p: p["wall_s"])[len(passes) // 2]
    result: dict[str, Any] = {
        "threads": threads,
        "chips": len(data.refs),
        "km2": data.km2,
        "wall_s": summarise(walls),
        "km2_per_s": summarise([data.km2 / w for w in walls]),
        "chips_per_s": summarise([len(data.refs) / w for w in walls]),
        "others_cores": summarise([p["others_cores"] for p in passes]),
        "stage_seconds": median_pass["stage_seconds"],
    }
    if single is not None:
        result["single_thread_km2_per_s"] = data.km2 / single["wall_s"]
        result["thread_scaling"] = (result["km2_per_s"]["median"] * single["wall_s"]
                                    / data.km2 / threads)
    return result


def compute_limit(data: Preloaded, gallery: Gallery, *, threads: int, repeats: int,
                  batch_size: int = 8, device: torch.device = CPU) -> dict[str, Any]:
    """Warm up, then ``repeats`` passes on ``threads`` threads and one on a single thread.

    ``batch_size`` is passed to the stage functions as the graph does (no effect on CPU).
    See :func:`summarise_passes` for the result.
    """
    warm_up(data, gallery, device, batch_size)
    passes = [one_pass(data, gallery, threads, batch_size, device) for _ in range(repeats)]
    single = one_pass(data, gallery, 1, batch_size, device) if threads > 1 else None
    return summarise_passes(data, passes, threads, single)
