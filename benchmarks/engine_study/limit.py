"""The pure-compute limit: the graph's model passes over preloaded chips on every core.

This is the speed no engine can beat on a machine: the same stage functions the graph
runs (:mod:`resflow.stages`), over the same chips, with every chip already in memory as
stored (harmonised as the graph harmonises it, where the models run), nothing read,
written, serialised or scheduled. Each stage call uses one
torch thread (see the determinism notes in :mod:`resflow.stages`), so the limit runs one
Python thread per core, each on its own interleaved share of the chips; torch releases the
GIL inside its kernels, so the threads compute in parallel.

The graph runs the frozen encoder once per chip (``encoder_passes=1``, the default): stage 1
encodes each chip read with its halo and embeds it from those maps, stage 2 routes it and
stage 3 decodes the same maps, one model's chips together, a partition's chips at a time
as the fused plan holds them. ``encoder_passes=2`` is the graph as it was before: stage 1
encodes the chip without its halo and stage 3 encodes chip and halo again, bucket by bucket;
``python -m benchmarks.engine_study.limit`` times both side by side.

An engine's area rate divided by this limit's is the fraction of the machine it turns into
maps; the remainder is reading, writing, regrouping and scheduling. On a GPU (``device``)
the threads share the one device and every model call holds ``batch_size`` chips, as the
graph's tasks do there.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.engine_study.contention import contention
from benchmarks.engine_study.series import summarise
from resflow.archive import Archive
from resflow.chips import ChipRef, SourceChip
from resflow.config import MIN_BUILDING_M2, SPLIT_DIP
from resflow.gallery import Gallery
from resflow.masks import min_pixels
from resflow.model_input import SourceImages
from resflow.stages import decode_quantised, encode, extract_features, map_codes, segment

CPU = torch.device("cpu")
LIMIT_STAGES = ("stage1", "stage2", "stage3")
#: Chips a fused task encodes before decoding them: the graph's default partition
#: (``RunConfig.partition_chips``), which bounds the encoder maps held at once.
PARTITION_CHIPS = 16
#: The graph's default probability threshold (``RunConfig.threshold``).
THRESHOLD = 0.5


@dataclass
class Preloaded:
    """Every chip of an archive in memory, as the graph's stages receive them.

    Attributes
    ----------
    refs
        The chips, in archive order.
    plain
        float32 ``(N, 3, chip, chip)``: chips read without halo, harmonised (stage 1 of the
        two-pass graph).
    context
        float32 ``(N, 3, chip + 2*halo, chip + 2*halo)``: chips read with their halo,
        harmonised (stage 3 of the two-pass graph).
    stored
        The same chips with their halo as stored (:meth:`Archive.read_sources`): what the
        graph encodes, harmonising them where the models run.
    km2
        Ground area of the chips, km^2.
    halo
        Context pixels on each side of ``context`` and ``stored``.
    smallest
        Each chip's smallest building kept, pixels: the graph's default
        ``min_building_m2`` at its scene's ground resolution.
    """

    refs: list[ChipRef]
    plain: np.ndarray
    context: np.ndarray
    stored: list[SourceChip]
    km2: float
    halo: int
    smallest: list[int]

    @classmethod
    def read(cls, archive: Archive, halo: int) -> Preloaded:
        """Read every chip of ``archive`` without and with ``halo``, untimed."""
        refs = archive.chips()
        plain = np.stack([archive.read_chip(ref).image for ref in refs])
        stored = archive.read_sources(refs, halo)
        context = np.stack([chip.harmonised().image for chip in stored])
        smallest = [min_pixels(MIN_BUILDING_M2, archive.scenes[ref.scene].gsd_m)
                    for ref in refs]
        return cls(refs, plain, context, stored, float(sum(ref.km2 for ref in refs)), halo,
                   smallest)

    def subset(self, index: np.ndarray) -> Preloaded:
        """The chips at ``index``, in that order (repeats allowed)."""
        refs = [self.refs[i] for i in index]
        return replace(self, refs=refs, plain=self.plain[index], context=self.context[index],
                       stored=[self.stored[i] for i in index],
                       km2=float(sum(r.km2 for r in refs)),
                       smallest=[self.smallest[i] for i in index])


def _share(index: np.ndarray, data: Preloaded, gallery: Gallery, batch_size: int,
           device: torch.device, encoder_passes: int = 1) -> dict[str, float]:
    """Stages 1, 2 and 3 on the chips at ``index``, a partition's worth at a time (and at
    least one micro-batch, so a GPU batch sweep is not capped by it); returns seconds per
    stage."""
    run = _one_encoder_pass if encoder_passes == 1 else _two_encoder_passes
    chunk = max(PARTITION_CHIPS, batch_size)
    seconds = dict.fromkeys(LIMIT_STAGES, 0.0)
    for start in range(0, len(index), chunk):
        run(index[start:start + chunk], data, gallery, batch_size, device, seconds)
    return seconds


def _one_encoder_pass(index: np.ndarray, data: Preloaded, gallery: Gallery, batch_size: int,
                      device: torch.device, seconds: dict[str, float]) -> None:
    """The graph: encode once with the halo, route, decode one model's chips together,
    quantise and threshold them where they were decoded, and split touching roofs and drop
    specks on the host."""
    start = time.perf_counter()
    chips = [data.stored[i] for i in index]
    features, maps = encode(SourceImages(chips), gallery.feature_extractor(), halo=data.halo,
                            batch_size=batch_size, device=device)
    seconds["stage1"] += time.perf_counter() - start
    start = time.perf_counter()
    _, buckets = map_codes(features, gallery.hashing_head(), gallery.bucket_codes)
    seconds["stage2"] += time.perf_counter() - start
    start = time.perf_counter()
    size = data.context.shape[-2:]
    models = np.array([gallery.model_name(int(b)) for b in buckets])
    for name in np.unique(models):
        group = np.flatnonzero(models == name)
        decoded = decode_quantised([maps[i] for i in group], [chips[i].valid for i in group],
                                   gallery.segmenter(int(buckets[group[0]])),
                                   threshold=THRESHOLD, size=size, batch_size=batch_size,
                                   device=device)
        for i, chip in zip(group, decoded, strict=True):
            chip.building_mask(SPLIT_DIP, data.smallest[index[i]])
    seconds["stage3"] += time.perf_counter() - start


def _two_encoder_passes(index: np.ndarray, data: Preloaded, gallery: Gallery,
                        batch_size: int, device: torch.device,
                        seconds: dict[str, float]) -> None:
    """The graph before one encoder pass: stage 1 on the chip alone, stage 3 encoding chip
    and halo again, bucket by bucket."""
    start = time.perf_counter()
    features = extract_features(data.plain[index], gallery.feature_extractor(),
                                batch_size=batch_size, device=device)
    seconds["stage1"] += time.perf_counter() - start
    start = time.perf_counter()
    _, buckets = map_codes(features, gallery.hashing_head(), gallery.bucket_codes)
    seconds["stage2"] += time.perf_counter() - start
    start = time.perf_counter()
    for bucket in np.unique(buckets):
        segment(data.context[index[buckets == bucket]], gallery.segmenter(int(bucket)),
                batch_size=batch_size, device=device)
    seconds["stage3"] += time.perf_counter() - start


def warm_up(data: Preloaded, gallery: Gallery, device: torch.device = CPU,
            batch_size: int = 1, encoder_passes: int = 1) -> None:
    """Build every model and let oneDNN (or CUDA) create its kernels, outside any timing.

    Segmenters are built lazily and cached by the gallery; building them here, in one
    thread, also keeps the timed threads from racing to build the same one.
    """
    for bucket in range(len(gallery.bucket_codes)):
        gallery.segmenter(bucket)
    _share(np.arange(min(batch_size if device.type == "cuda" else 1, len(data.refs))), data,
           gallery, batch_size, device, encoder_passes)


def one_pass(data: Preloaded, gallery: Gallery, threads: int,
             batch_size: int = 8, device: torch.device = CPU,
             encoder_passes: int = 1) -> dict[str, Any]:
    """One timed pass of all chips on ``threads`` threads, chips dealt round-robin, the
    models on ``device``, the encoder run ``encoder_passes`` times a chip.

    Returns
    -------
    dict
        ``wall_s``, ``others_cores`` (:mod:`benchmarks.engine_study.contention`) and
        ``stage_seconds`` (summed over threads, like a run report's).
    """
    shares = [np.arange(i, len(data.refs), threads) for i in range(threads)]
    with contention() as record, ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="resflow-limit") as pool:
        results = list(pool.map(
            lambda idx: _share(idx, data, gallery, batch_size, device, encoder_passes), shares))
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
                  batch_size: int = 8, device: torch.device = CPU,
                  encoder_passes: int = 1) -> dict[str, Any]:
    """Warm up, then ``repeats`` passes on ``threads`` threads and one on a single thread.

    ``batch_size`` is passed to the stage functions as the graph does (no effect on CPU).
    See :func:`summarise_passes` for the result.
    """
    warm_up(data, gallery, device, batch_size, encoder_passes)
    passes = [one_pass(data, gallery, threads, batch_size, device, encoder_passes)
              for _ in range(repeats)]
    single = (one_pass(data, gallery, 1, batch_size, device, encoder_passes) if threads > 1
              else None)
    return summarise_passes(data, passes, threads, single)


def compare_encoder_passes(data: Preloaded, gallery: Gallery, *, threads: int, repeats: int,
                           batch_size: int = 8, device: torch.device = CPU
                           ) -> dict[str, Any]:
    """The limit with two encoder passes a chip and with one, timed in alternating passes
    so that drifting load on a shared machine hits both alike.

    Returns
    -------
    dict
        ``two_passes`` and ``one_pass`` (:func:`summarise_passes`) and ``speedup``: the
        median chips/s with one pass over the median with two.
    """
    for passes in (2, 1):
        warm_up(data, gallery, device, batch_size, passes)
    timed: dict[int, list[dict[str, Any]]] = {2: [], 1: []}
    for _ in range(repeats):
        for passes in (2, 1):
            timed[passes].append(one_pass(data, gallery, threads, batch_size, device, passes))
    two, one = (summarise_passes(data, timed[p], threads) for p in (2, 1))
    return {"two_passes": two, "one_pass": one,
            "speedup": one["chips_per_s"]["median"] / two["chips_per_s"]["median"]}


def main() -> None:
    """Time both limits on an archive and write the comparison as JSON."""
    from benchmarks.engine_study.machine import describe_machine

    parser = argparse.ArgumentParser(description=compare_encoder_passes.__doc__.split("\n")[0])
    parser.add_argument("archive", type=Path)
    parser.add_argument("--halo", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="default: usable cores")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args()
    machine = describe_machine()
    threads = args.threads or int(machine["cores"])
    data = Preloaded.read(Archive.open(args.archive), args.halo)
    found = {"archive": str(args.archive), "chips": len(data.refs), "halo": args.halo,
             "machine": machine, "repeats": args.repeats,
             **compare_encoder_passes(data, Gallery.load(), threads=threads,
                                      repeats=args.repeats)}
    text = json.dumps(found, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
