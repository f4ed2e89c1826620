"""chips/s of the stage functions per batch size on preloaded windows, one thread
feeding the device, with peak device memory and ``nvidia-smi`` samples beside.

Preloading takes the archive's reads and the engines out of the figure: it is the models'
own rate on the device, which the engines' end-to-end runs are read beside.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from benchmarks.gpu_check.card import gpu_samples
from benchmarks.gpu_check.options import CheckOptions
from benchmarks.gpu_check.rates import rates, reference_scale

if TYPE_CHECKING:  # the check imports torch and resflow only once it runs
    import torch

    from benchmarks.engine_study.limit import Preloaded
    from resflow.archive import Archive
    from resflow.gallery import Gallery


def batch_sweep(data: Preloaded, archive: Archive, gallery: Gallery, device: torch.device,
                options: CheckOptions) -> list[dict[str, Any]]:
    """chips/s of the graph's stage calls on preloaded prediction windows per batch size
    (windows of one shape per model call; the graph makes one) and, on CUDA, per precision
    (the graph's autocast, then float32: :func:`resflow.devices.cuda_float32`), one thread
    feeding the device (:func:`benchmarks.engine_study.limit.one_pass`), kernels warmed up
    untimed for each point; peak device memory and ``nvidia-smi`` samples beside."""
    from contextlib import nullcontext

    from resflow.devices import autocast_dtype, cuda_float32

    precisions = {"float32": nullcontext}
    if device.type == "cuda":
        import torch

        autocast = str(autocast_dtype(torch.cuda.get_device_capability(device)))
        precisions = {autocast.removeprefix("torch."): nullcontext, "float32": cuda_float32}
    scale = reference_scale(data.refs, archive)
    points = []
    for size in options.batch_sizes:
        for precision, context in precisions.items():
            with context():
                points.append({"precision": precision,
                               **_point(data, scale, gallery, device, options, size, precision)})
    return points


def _point(data: Preloaded, scale: float, gallery: Gallery, device: torch.device,
           options: CheckOptions, size: int, precision: str) -> dict[str, Any]:
    """One point of the sweep: ``size`` windows a call, ``options.repeats`` timed passes."""
    import torch

    from benchmarks.engine_study.limit import one_pass, summarise_passes, warm_up

    warm_up(data, gallery, device, size)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with gpu_samples(options.logs / f"nvidia-smi-sweep-{size}-{precision}.csv") as samples:
        passes = [one_pass(data, gallery, 1, device, size)
                  for _ in range(options.repeats)]
    summary = summarise_passes(data, passes, threads=1)
    median_s = summary["wall_s"]["median"]
    return {
        "batch_size": size, "windows": len(data.windows), "chips": len(data.refs),
        "km2": data.km2,
        "wall_s": summary["wall_s"], "chips_per_s_range": summary["chips_per_s"],
        **rates(len(data.refs), data.km2, median_s, scale),
        "stage_seconds": summary["stage_seconds"],
        "peak_device_mib": (torch.cuda.max_memory_allocated(device) / 2**20
                            if device.type == "cuda" else None),
        "nvidia_smi": samples,
    }
