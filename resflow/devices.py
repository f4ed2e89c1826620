"""Where models run: device choice, inference settings, GPU-side arrays and thread counts.

Engines hand a stage the GPU a scheduler assigned (Spark resource addresses, Dask worker
resources); everything device-specific that the stages need is decided here, once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Literal

import numpy as np
import torch

from resflow.errors import ConfigError

DevicePreference = Literal["auto", "cpu", "cuda"]


def resolve_device(
    preference: DevicePreference = "auto", assigned: str | None = None
) -> torch.device:
    """The torch device a stage runs on.

    Parameters
    ----------
    preference
        ``"cpu"``, ``"cuda"`` (refused when no GPU is visible) or ``"auto"`` (CUDA when
        visible, else CPU).
    assigned
        The GPU address a scheduler gave this task or executor (``"1"``, ``"cuda:1"``);
        ``None`` uses the current CUDA device. Ignored on CPU.

    Raises
    ------
    ConfigError
        If CUDA is asked for but not visible, or the address is not a visible GPU.

    Examples
    --------
    >>> resolve_device("cpu", assigned="1")
    device(type='cpu')
    """
    if preference not in ("auto", "cpu", "cuda"):
        raise ConfigError(
            "device", f"unknown device preference {preference!r}", "use 'auto', 'cpu' or 'cuda'"
        )
    available = torch.cuda.is_available()
    if preference == "cpu" or (preference == "auto" and not available):
        return torch.device("cpu")
    if not available:
        raise ConfigError(
            "device",
            "device 'cuda' was asked for but torch sees no GPU",
            "use device 'auto' or 'cpu', or install a CUDA build of torch",
        )
    if assigned is None:
        return torch.device("cuda", torch.cuda.current_device())
    address = str(assigned).strip().removeprefix("cuda:")
    count = torch.cuda.device_count()
    if not address.isdigit() or int(address) >= count:
        raise ConfigError(
            "device",
            f"the scheduler assigned GPU {assigned!r} but this process sees {count} GPU(s)",
            "check the executors' GPU discovery script and CUDA_VISIBLE_DEVICES",
        )
    return torch.device("cuda", int(address))


def memory_format(device: torch.device) -> torch.memory_format:
    """``channels_last`` on CUDA (tensor-core convolutions), the default layout on CPU."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


@contextmanager
def inference_context(device: torch.device) -> Iterator[None]:
    """Inference mode, plus bf16 (or fp16) autocast and deterministic cuDNN on CUDA only.

    CPU inference stays in float32: autocast there would change results between machines
    and buys little on the CPUs resflow targets.
    """
    with torch.inference_mode():
        if device.type != "cuda":
            yield
            return
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        with (
            torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True),
            torch.autocast("cuda", dtype=dtype),
        ):
            yield


def array_module(device: torch.device) -> ModuleType:
    """``cupy`` on CUDA when importable (GPU-side preprocessing), else ``numpy``."""
    if device.type == "cuda":
        try:
            import cupy
        except ImportError:
            return np
        return cupy
    return np


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads, restoring the caller's count after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def set_torch_threads(n: int) -> None:
    """Set torch's intra-op thread count to ``n`` if it is not already (cheap to repeat).

    Engines call it once per worker so that ``tasks x threads`` does not exceed the cores;
    stage functions call it with their fixed count because results depend on it.
    """
    if n < 1:
        raise ConfigError("threads", f"thread count {n} is below 1", "use 1 or more threads")
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
