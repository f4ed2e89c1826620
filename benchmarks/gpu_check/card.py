"""The card the check ran on and how busy it was: ``nvidia-smi`` listed and sampled in
the background, and the versions behind every figure.

Without ``nvidia-smi`` (the CPU rehearsal) the samples say why they are missing rather
than failing the step.
"""

from __future__ import annotations

import importlib.util
import shutil
import statistics
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the check imports torch and resflow only once it runs
    import torch


def summarise_samples(lines: Sequence[str]) -> dict[str, Any]:
    """``nvidia-smi --query-gpu=utilization.gpu,memory.used,power.draw --format=csv,noheader,
    nounits`` lines as mean and max of each (``[N/A]`` fields left out).

    >>> summarise_samples(["30, 1000, 100.5", "90, 3000, [N/A]"])["utilization_pct"]
    {'mean': 60.0, 'max': 90.0}
    """
    columns: dict[str, list[float]] = {"utilization_pct": [], "memory_used_mib": [],
                                       "power_w": []}
    for line in lines:
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != len(columns):
            continue
        for key, field in zip(columns, fields, strict=True):
            try:
                columns[key].append(float(field))
            except ValueError:
                continue
    summary: dict[str, Any] = {"samples": len(columns["utilization_pct"])}
    for key, values in columns.items():
        summary[key] = ({"mean": statistics.fmean(values), "max": max(values)}
                        if values else None)
    return summary


@contextmanager
def gpu_samples(path: Path, period_ms: int = 200) -> Iterator[dict[str, Any]]:
    """Sample ``nvidia-smi`` every ``period_ms`` into ``path`` while the block runs; the
    yielded dict holds :func:`summarise_samples` of them afterwards (or why there are none).
    """
    result: dict[str, Any] = {}
    if shutil.which("nvidia-smi") is None:
        result["skipped"] = "nvidia-smi not found"
        yield result
        return
    with path.open("w") as log:
        sampler = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used,power.draw",
             "--format=csv,noheader,nounits", "-lms", str(period_ms)],
            stdout=log, stderr=subprocess.DEVNULL)
        try:
            yield result
        finally:
            sampler.terminate()
            try:
                sampler.wait(10)
            except subprocess.TimeoutExpired:
                sampler.kill()
                sampler.wait()
    result.update(summarise_samples(path.read_text().splitlines()))


def nvidia_smi_cards() -> list[dict[str, str]] | dict[str, str]:
    """Name, driver, memory and power limit of each GPU as ``nvidia-smi`` reports them."""
    if shutil.which("nvidia-smi") is None:
        return {"skipped": "nvidia-smi not found"}
    fields = ("name", "driver_version", "memory.total", "power.limit")
    listing = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=30)
    if listing.returncode != 0:
        return {"skipped": f"nvidia-smi failed: {listing.stderr.strip() or listing.stdout}"}
    return [dict(zip(fields, (v.strip() for v in line.split(",")), strict=False))
            for line in listing.stdout.splitlines() if line.strip()]


def environment(device: torch.device) -> dict[str, Any]:
    """The card (or CPU), its precision, the machine and the versions behind every figure."""
    import torch

    from benchmarks.engine_study.machine import describe_machine
    from resflow.devices import autocast_dtype
    from resflow.report import collect_versions

    machine = describe_machine()
    versions = {**collect_versions(), "torch_cuda": torch.version.cuda}
    if importlib.util.find_spec("cupy") is not None:
        import cupy

        versions["cupy"] = cupy.__version__
    found: dict[str, Any] = {"device": str(device), "rehearsal": device.type != "cuda",
                             "machine": machine, "versions": versions,
                             "nvidia_smi": nvidia_smi_cards()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        found |= {"card": props.name, "capability": f"{props.major}.{props.minor}",
                  "card_memory_gib": round(props.total_memory / 2**30, 1),
                  "precision": str(autocast_dtype((props.major, props.minor))).split(".")[-1]
                  + " autocast", "cudnn": torch.backends.cudnn.version()}
    else:
        found |= {"card": f"CPU: {machine['cpu_model']}", "precision": "float32"}
    return found
