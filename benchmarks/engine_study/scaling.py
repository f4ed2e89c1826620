"""Scaling: time per km^2 and peak memory per worker as the archive grows x1 to x8.

The scenes are dihedral mosaics of the real Atlanta tile
(:func:`benchmarks.engine_study.scaled_archive.write_scaled_scene`), each ingested into its own
archive and run on one warm engine (worker peaks are reset before every run). resflow holds
chip references, never pixels, between stages, so both numbers should stay flat: a growing
time per km^2 points at per-run work that grows faster than the area (planning, regrouping,
the driver's result list), a growing worker peak at something that keeps pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.engine_study.engines import EngineSeries, with_settings
from benchmarks.engine_study.scaled_archive import write_scaled_scene
from resflow.config import IngestConfig, RunConfig
from resflow.ingestion import ingest

FACTORS = (1, 2, 4, 8)
#: Largest allowed change of time per km^2 and worker peak RSS between sizes (target).
FLAT_TOLERANCE = 0.15


def scaled_archive(factor: int, work_dir: Path, *, chip: int = 256,
                   source: Path | None = None) -> Path:
    """The archive of the x``factor`` mosaic of ``source`` (default: the Atlanta tile) under
    ``work_dir``, ingested at ``chip``; written once and reused."""
    stem = f"{source.stem if source else 'atlanta'}-x{factor}"
    archive = work_dir / f"{stem}-chip{chip}.zarr"
    if not archive.exists():
        scene = write_scaled_scene(factor, work_dir / f"{stem}.tif", source)
        result = ingest([scene], archive, IngestConfig(chip=chip))
        if not result.ok:
            raise RuntimeError(f"ingest of {scene} refused it: {result.refused}")
    return archive


def spread(values: list[float]) -> float:
    """``max / min - 1``: 0.15 means the largest value is 15% above the smallest.

    >>> round(spread([2.0, 2.2, 2.1]), 3)
    0.1
    """
    low = min(values)
    return max(values) / low - 1 if low > 0 else float("inf")


def runs_per_round(factor: int, factors: tuple[int, ...]) -> int:
    """Timed runs of size x``factor`` per round: as many as fit in the largest size's run.

    >>> [runs_per_round(f, (1, 2, 4, 8)) for f in (1, 2, 4, 8)]
    [8, 4, 2, 1]
    """
    return max(1, round(max(factors) / factor))


def scaling_study(config: RunConfig, work_dir: Path, *, factors: tuple[int, ...] = FACTORS,
                  repeats: int, cores: int, chip: int = 256,
                  source: Path | None = None) -> dict[str, Any]:
    """Run every size on one engine (``config.backend``) and check flatness.

    Parameters
    ----------
    config
        Run settings; ``archive`` and ``out`` are replaced per size.
    work_dir
        Where the mosaics, archives and output stores go.
    factors
        Sizes, in multiples of the Atlanta tile.
    repeats
        Rounds of timed runs, after one untimed run of each size on the same cluster. In
        each round size x``f`` runs :func:`runs_per_round` times, so every size gets about
        the same seconds of measurement: a 2-second x1 run is as noisy as a 16-second x8
        one in absolute terms, eight times more so per km^2.
    cores
        The machine's cores.
    chip, source
        Chip edge of the archives and the tile to mosaic (see :func:`scaled_archive`).

    Returns
    -------
    dict
        ``backend``, ``sizes`` (per factor: ``factor``, ``chips``, ``km2``, ``s_per_km2``
        and ``km2_per_s`` summaries, ``worker_peak_mb``, ``driver_peak_mb``),
        ``time_spread`` and ``memory_spread`` (:func:`spread` of the medians and peaks) and
        ``flat`` (both within :data:`FLAT_TOLERANCE`).
    """
    archives = {f: scaled_archive(f, work_dir, chip=chip, source=source) for f in factors}
    sizes = []
    series = EngineSeries(with_settings(config, archive=archives[factors[0]]),
                          work_dir, label=f"{config.backend}-scaling")
    try:
        for factor in factors[1:]:
            series.retarget(archives[factor])
            series.warm()
        for _ in range(repeats):
            for factor in factors:  # round by round, so drift in machine speed hits every size
                series.retarget(archives[factor])
                for _ in range(runs_per_round(factor, factors)):
                    series.run()
        for factor in factors:
            run = series.summary(cores, archives[factor])
            memory = run["memory"]
            sizes.append({
                "factor": factor, "chips": run["chips"], "km2": run["km2"],
                "s_per_km2": run["s_per_km2"], "km2_per_s": run["km2_per_s"],
                "others_cores": run["others_cores"],
                "worker_peak_mb": memory["worker_mb"] or memory["driver_mb"],
                "driver_peak_mb": memory["driver_mb"],
                "stage_fractions": run["stage_fractions"],
            })
    finally:
        series.close()
    time_spread = spread([s["s_per_km2"]["median"] for s in sizes])
    memory_spread = spread([s["worker_peak_mb"] for s in sizes])
    return {
        "backend": config.backend, "engine": series.executor.__class__.__name__,
        "sizes": sizes,
        "time_spread": time_spread, "memory_spread": memory_spread,
        "flat": time_spread <= FLAT_TOLERANCE and memory_spread <= FLAT_TOLERANCE,
    }
