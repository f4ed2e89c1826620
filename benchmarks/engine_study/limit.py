"""The pure-compute limit: the graph's model passes over preloaded prediction windows on
every core, the speed no engine can beat on a machine.

The same stage calls the graph makes (:mod:`resflow.inference.window_work`, ``map_window``
and ``cut_window``) over the same prediction windows (:mod:`resflow.windows`), every window
in memory as stored (harmonised where the models run, as the graph does); nothing read,
written, serialised or scheduled. Per window: one encoder pass over it and its halo, one
route, one decode with its bucket's model, quantised and thresholded, and its building mask.
Each stage call uses one torch thread (:mod:`resflow.stages`), so one Python thread per core
runs an interleaved share of the windows (torch releases the GIL in its kernels); on a GPU
(``device``) they share the device. Rates count chips with data, as engines do, so an engine's
rate over this limit's is the fraction of the machine it turns into maps.
``python -m benchmarks.engine_study.limit ARCHIVE`` times window settings side by side
(:func:`compare_settings`; by default ``window=1, halo=32`` against ``window=4, halo=128``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator, Sequence
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
from resflow.config import MIN_BUILDING_M2, SPLIT_DIP, RunConfig
from resflow.gallery import Gallery
from resflow.masks import min_pixels
from resflow.model_input import SourceImages
from resflow.stages import decode_quantised, encode, map_codes
from resflow.store.mask_rule import MaskRule
from resflow.windows import Window, group_by_window

CPU = torch.device("cpu")
LIMIT_STAGES = ("stage1", "stage2", "stage3")
#: The graph's default probability threshold (``RunConfig.threshold``).
THRESHOLD = 0.5
#: The graph's default prediction window and halo (``RunConfig.window``, ``RunConfig.halo``).
WINDOW = int(RunConfig.model_fields["window"].default)
HALO = int(RunConfig.model_fields["halo"].default)
#: ``(window, halo)`` pairs :func:`main` compares by default: chip by chip with the halo
#: chips used to have, against the graph's defaults.
SETTINGS = ((1, 32), (WINDOW, HALO))


@dataclass
class Preloaded:
    """Every prediction window of an archive holding data, in memory as the graph's stages
    receive it.

    Attributes
    ----------
    windows
        The windows holding chips with data, in scene and lattice order.
    chips
        Per window, its chips with data: what the graph maps and counts.
    stored
        Per window, its pixels read with ``halo`` as stored (:meth:`Archive.read_window`).
    smallest
        Per window, the smallest building kept, pixels: the graph's default
        ``min_building_m2`` at its scene's ground resolution.
    halo
        Context pixels around each window.
    window
        Chips per side of a prediction window.
    """

    windows: list[Window]
    chips: list[list[ChipRef]]
    stored: list[SourceChip]
    smallest: list[int]
    halo: int
    window: int

    @classmethod
    def read(cls, archive: Archive, halo: int, window: int) -> Preloaded:
        """Read every window of ``window x window`` chips of ``archive`` that holds a chip
        with data, with ``halo``, untimed."""
        refs = [ref for ref in archive.chips() if ref.valid_fraction > 0]
        shapes = {name: (info.height, info.width) for name, info in archive.scenes.items()}
        groups = group_by_window(refs, window, shapes)
        windows = list(groups)
        return cls(windows=windows, chips=list(groups.values()),
                   stored=[archive.read_window(w, halo) for w in windows],
                   smallest=[min_pixels(MIN_BUILDING_M2, archive.scenes[w.scene].gsd_m)
                             for w in windows],
                   halo=halo, window=window)

    @property
    def refs(self) -> list[ChipRef]:
        """The chips with data of every window, window by window."""
        return [ref for chips in self.chips for ref in chips]

    @property
    def km2(self) -> float:
        """Ground area of the chips with data, km^2."""
        return float(sum(ref.km2 for ref in self.refs))

    def subset(self, index: Sequence[int] | np.ndarray) -> Preloaded:
        """The windows at ``index``, in that order (repeats allowed)."""
        return replace(self, windows=[self.windows[i] for i in index],
                       chips=[self.chips[i] for i in index],
                       stored=[self.stored[i] for i in index],
                       smallest=[self.smallest[i] for i in index])


def window_batches(index: np.ndarray, data: Preloaded, batch_size: int
                   ) -> Iterator[list[int]]:
    """``index`` in order, cut into runs of at most ``batch_size`` windows of one shape:
    what one model call can hold (the graph: one window)."""
    batch: list[int] = []
    for i in index.tolist():
        if batch and (len(batch) == batch_size
                      or data.stored[i].valid.shape != data.stored[batch[0]].valid.shape):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def _share(index: np.ndarray, data: Preloaded, gallery: Gallery, device: torch.device,
           batch_size: int = 1) -> dict[str, float]:
    """Every window at ``index`` predicted; returns seconds per stage."""
    seconds = dict.fromkeys(LIMIT_STAGES, 0.0)
    for batch in window_batches(index, data, batch_size):
        _predict(batch, data, gallery, device, batch_size, seconds)
    return seconds


def _predict(batch: list[int], data: Preloaded, gallery: Gallery, device: torch.device,
             batch_size: int, seconds: dict[str, float]) -> None:
    """The graph's calls on the windows of ``batch`` (one window, as the graph makes them,
    when ``batch_size`` is 1): encode with the halo, route on the embedding, decode with
    the bucket's model, quantised and thresholded where it was decoded, and the building
    mask over the whole window on the host."""
    sources = [data.stored[i] for i in batch]
    start = time.perf_counter()
    embeddings, maps = encode(SourceImages(sources), gallery.feature_extractor(),
                              halo=data.halo, batch_size=batch_size, device=device)
    seconds["stage1"] += time.perf_counter() - start
    start = time.perf_counter()
    _, buckets = map_codes(embeddings, gallery.hashing_head(), gallery.bucket_codes)
    seconds["stage2"] += time.perf_counter() - start
    start = time.perf_counter()
    models = np.array([gallery.model_name(int(b)) for b in buckets])
    for name in np.unique(models):
        group = np.flatnonzero(models == name)
        decoded = decode_quantised([maps[g] for g in group], [sources[g].valid for g in group],
                                   gallery.segmenter(int(buckets[group[0]])),
                                   threshold=THRESHOLD, size=sources[group[0]].valid.shape,
                                   batch_size=batch_size, device=device)
        for g, window in zip(group, decoded, strict=True):
            window.building_mask(MaskRule(THRESHOLD, data.smallest[batch[g]], data.halo,
                                          SPLIT_DIP))
    seconds["stage3"] += time.perf_counter() - start


def warm_up(data: Preloaded, gallery: Gallery, device: torch.device = CPU,
            batch_size: int = 1) -> None:
    """Build every model and let oneDNN (or CUDA) create its kernels for every window shape,
    outside any timing.

    Segmenters are built lazily and cached by the gallery; building them here, in one
    thread, also keeps the timed threads from racing to build the same one.
    """
    for bucket in range(len(gallery.bucket_codes)):
        gallery.segmenter(bucket)
    per_shape = batch_size if device.type == "cuda" else 1
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, source in enumerate(data.stored):
        by_shape.setdefault(source.valid.shape, []).append(i)
    for index in by_shape.values():
        _share(np.array(index[:per_shape]), data, gallery, device, batch_size)


def one_pass(data: Preloaded, gallery: Gallery, threads: int, device: torch.device = CPU,
             batch_size: int = 1) -> dict[str, Any]:
    """One timed pass of all windows on ``threads`` threads, windows dealt round-robin, the
    models on ``device``. ``batch_size`` windows of one shape go to each model call on a GPU
    (the graph: 1); the CPU runs one window a call whatever it is.

    Returns
    -------
    dict
        ``wall_s``, ``others_cores`` (:mod:`benchmarks.engine_study.contention`) and
        ``stage_seconds`` (summed over threads, like a run report's).
    """
    shares = [np.arange(i, len(data.windows), threads) for i in range(threads)]
    with contention() as record, ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="resflow-limit") as pool:
        results = list(pool.map(
            lambda idx: _share(idx, data, gallery, device, batch_size), shares))
    stage_seconds = {s: float(sum(r[s] for r in results)) for s in LIMIT_STAGES}
    return {**record, "stage_seconds": stage_seconds}


def summarise_passes(data: Preloaded, passes: list[dict[str, Any]], threads: int,
                     single: dict[str, Any] | None = None) -> dict[str, Any]:
    """The limit's rates from timed passes (:func:`one_pass`).

    Returns
    -------
    dict
        ``threads``, ``window``, ``halo``, ``windows``, ``chips`` (with data), ``km2``, the
        summaries ``wall_s``, ``km2_per_s``, ``chips_per_s``, ``others_cores``;
        ``stage_seconds`` of the median pass and, given a one-thread pass ``single``,
        ``single_thread_km2_per_s`` and ``thread_scaling`` (rate on ``threads`` / rate on
        one / ``threads``: how well the cores add up).
    """
    walls = [p["wall_s"] for p in passes]
    median_pass = sorted(passes, key=lambda p: p["wall_s"])[len(passes) // 2]
    chips, km2 = len(data.refs), data.km2
    result: dict[str, Any] = {
        "threads": threads,
        "window": data.window,
        "halo": data.halo,
        "windows": len(data.windows),
        "chips": chips,
        "km2": km2,
        "wall_s": summarise(walls),
        "km2_per_s": summarise([km2 / w for w in walls]),
        "chips_per_s": summarise([chips / w for w in walls]),
        "others_cores": summarise([p["others_cores"] for p in passes]),
        "stage_seconds": median_pass["stage_seconds"],
    }
    if single is not None:
        result["single_thread_km2_per_s"] = km2 / single["wall_s"]
        result["thread_scaling"] = (result["km2_per_s"]["median"] * single["wall_s"]
                                    / km2 / threads)
    return result


def compute_limit(data: Preloaded, gallery: Gallery, *, threads: int, repeats: int,
                  device: torch.device = CPU, batch_size: int = 1) -> dict[str, Any]:
    """Warm up, then ``repeats`` passes on ``threads`` threads and one on a single thread.

    See :func:`summarise_passes` for the result.
    """
    warm_up(data, gallery, device, batch_size)
    passes = [one_pass(data, gallery, threads, device, batch_size) for _ in range(repeats)]
    single = one_pass(data, gallery, 1, device, batch_size) if threads > 1 else None
    return summarise_passes(data, passes, threads, single)


def compare_settings(archive: Archive, gallery: Gallery, settings: Sequence[tuple[int, int]],
                     *, threads: int, repeats: int, device: torch.device = CPU
                     ) -> dict[str, Any]:
    """The limit at each ``(window, halo)`` of ``settings`` over the same archive, timed in
    alternating passes so that drifting load on a shared machine hits each alike.

    Returns
    -------
    dict
        ``settings``: :func:`summarise_passes` of each, in order, with ``of_first``: its
        median chips/s over the first setting's, and ``paired_of_first``: the same ratio
        round by round (:func:`~benchmarks.engine_study.series.summarise`), which the
        machine's drift between rounds does not move.
    """
    data = [Preloaded.read(archive, halo, window) for window, halo in settings]
    for preloaded in data:
        warm_up(preloaded, gallery, device)
    timed: list[list[dict[str, Any]]] = [[] for _ in data]
    for _ in range(repeats):
        for preloaded, passes in zip(data, timed, strict=True):
            passes.append(one_pass(preloaded, gallery, threads, device))
    found = [summarise_passes(preloaded, passes, threads)
             for preloaded, passes in zip(data, timed, strict=True)]
    first = found[0]["chips_per_s"]
    for result in found:
        result["of_first"] = result["chips_per_s"]["median"] / first["median"]
        result["paired_of_first"] = summarise(
            [a / b for a, b in zip(result["chips_per_s"]["values"], first["values"],
                                   strict=True)])
    return {"settings": found}


def _setting(text: str) -> tuple[int, int]:
    """``"4:128"`` -> ``(4, 128)``."""
    window, halo = text.split(":")
    return int(window), int(halo)


def main() -> None:
    """Time the limit at several window settings on an archive and write them as JSON."""
    from benchmarks.engine_study.machine import describe_machine

    parser = argparse.ArgumentParser(description=compare_settings.__doc__.split("\n")[0])
    parser.add_argument("archive", type=Path)
    parser.add_argument("--settings", type=lambda s: [_setting(p) for p in s.split(",")],
                        default=list(SETTINGS),
                        help="comma-separated window:halo pairs, the first the reference "
                        "(default: 1:32,4:128)")
    parser.add_argument("--threads", type=int, default=None, help="default: usable cores")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args()
    machine = describe_machine()
    threads = args.threads or int(machine["cores"])
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    compared = compare_settings(Archive.open(args.archive), Gallery.load(), args.settings,
                                threads=threads, repeats=args.repeats)
    found = {"archive": str(args.archive), "started_utc": started, "machine": machine,
             "threads": threads, "repeats": args.repeats, **compared}
    text = json.dumps(found, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
