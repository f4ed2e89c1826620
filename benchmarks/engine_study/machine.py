"""The machine a benchmark ran on, and how busy it was, so every number names its hardware.

Rates on two cores mean nothing without the CPU model, the instruction set oneDNN
dispatched on, the memory and any GPU; and a shared machine's load average says how much
of the spread between repetitions is other people's work.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import psutil

CPUINFO = Path("/proc/cpuinfo")
#: Instruction-set flags that change which oneDNN kernels run (and so speed and bits).
ISA_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """The CPU model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags(cpuinfo: Path = CPUINFO) -> list[str]:
    """The :data:`ISA_FLAGS` this CPU has, from ``/proc/cpuinfo``."""
    if not cpuinfo.is_file():
        return []
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            present = set(line.split(":", 1)[1].split())
            return [flag for flag in ISA_FLAGS if flag in present]
    return []


def gpu_models() -> list[str]:
    """Names of the CUDA devices torch sees (empty on a CPU-only machine or torch build)."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def usable_cores() -> int:
    """Cores this process may run on: the width of the compute limit and of the clusters."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def describe_machine() -> dict[str, Any]:
    """Hardware facts for a benchmark record.

    Returns
    -------
    dict
        ``cpu_model``, ``isa`` (flags of :data:`ISA_FLAGS` present), ``torch_cpu_capability``
        (what oneDNN/ATen dispatched on), ``cores`` (usable by this process), ``cores_logical``,
        ``memory_gib``, ``gpus`` (model names, empty without CUDA), ``os``.
    """
    import torch

    return {
        "cpu_model": cpu_model(),
        "isa": cpu_flags(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": usable_cores(),
        "cores_logical": psutil.cpu_count(logical=True),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": gpu_models(),
        "os": f"{platform.system()} {platform.release()}",
    }


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages: how busy the machine was around a measurement."""
    return [round(v, 2) for v in os.getloadavg()]
