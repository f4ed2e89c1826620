"""Parameter sweeps: the cluster shape and run settings that change the area rate.

Each point starts its own engine with the changed settings and is measured like the main
comparison (:func:`benchmarks.engine_study.engines.bench_engine`), after a pass of the compute
limit of its own, so points are comparable with each other and with the limit of their
moment.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.engine_study.engines import bench_engine
from resflow.config import RunConfig
from resflow.plugins import engine_models

Point = tuple[str, dict[str, Any]]


def override(config: RunConfig, settings: dict[str, Any]) -> RunConfig:
    """``config`` with dotted settings replaced (``{"dask.workers": 1}``), re-validated."""
    data = config.model_dump()
    for key, value in settings.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return RunConfig.model_validate(data, context={"engines": engine_models()})


def plan_sweeps(cores: int, gpus: int) -> dict[str, list[Point]]:
    """The sweeps of a full benchmark: name -> ``(label, settings)`` points.

    Shapes go from one core to twice the machine's cores (oversubscribed); tasks per GPU
    are swept only where there is a GPU.
    """
    shapes = sorted({(1, 1), (1, cores), (cores, 1), (cores, 2), (2 * cores, 1)})
    sweeps: dict[str, list[Point]] = {
        "dask workers x threads": [
            (f"{w}x{t}", {"backend": "dask", "dask.workers": w, "dask.threads_per_worker": t})
            for w, t in shapes],
        "spark executors x cores": [
            (f"local[{cores}]", {"backend": "spark", "spark.master": f"local[{cores}]"}),
            *((f"{e}x{c}", {"backend": "spark",
                            "spark.master": f"local-cluster[{e},{c},1024]"})
              for e, c in sorted({(1, cores), (cores, 1)}))],
        "partition chips (dask)": [
            (str(n), {"backend": "dask", "partition_chips": n}) for n in (2, 4, 8, 16, 32)],
        "batch size (dask)": [
            (str(n), {"backend": "dask", "batch_size": n}) for n in (1, 4, 8, 16)],
        "torch threads per worker (dask)": [
            (str(n), {"backend": "dask", "torch_threads": n}) for n in sorted({1, cores})],
    }
    if gpus:
        sweeps["tasks per GPU (dask)"] = [
            (str(n), {"backend": "dask", "device": "cuda", "dask.gpu_per_task": 1 / n})
            for n in (1, 2, 4)]
    return sweeps


def run_sweeps(config: RunConfig, sweeps: dict[str, list[Point]], *, repeats: int,
               out_dir: Path, cores: int,
               limit_pass: Callable[[], dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Measure every point of every sweep; returns name -> per-point summaries.

    A sweep runs for many minutes, over which a shared machine's speed drifts, so each point
    is set against its own pass of the compute limit (``limit_pass``, e.g.
    :func:`benchmarks.engine_study.limit.one_pass`), timed just before the point's runs:
    ``of_limit`` compares like with like.
    """
    results: dict[str, list[dict[str, Any]]] = {}
    for name, points in sweeps.items():
        results[name] = []
        for label, settings in points:
            limit_wall = limit_pass()["wall_s"]
            run = bench_engine(override(config, settings), repeats=repeats, out_dir=out_dir,
                               cores=cores, label=label)
            limit_rate = run["km2"] / limit_wall
            results[name].append({
                "label": label, "settings": settings, "km2_per_s": run["km2_per_s"],
                "chips_per_s": run["chips_per_s"], "startup_s": run["startup_s"],
                "stage_fractions": run["stage_fractions"], "memory": run["memory"],
                "limit_km2_per_s": limit_rate,
                "of_limit": run["km2_per_s"]["median"] / limit_rate,
            })
    return results
