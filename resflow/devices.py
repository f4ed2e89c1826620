"""Where models run: device choice, inference settings, GPU-side arrays and thread counts.

Engines hand a stage the GPU a scheduler assigned (Spark resource addresses, Dask worker
resources); everything device-specific that the stages need is decided here, once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch

from resflow.errors import ConfigError

DevicePreference = Literal["auto", "cpu", "cuda"]

#: Compute capability from which a GPU has native bf16 (Ampere); older ones emulate it.
BF16_CAPABILITY = (8, 0)

_CUDA_SETUP_LOCK = threading.Lock()
_CUDA_SETUP_DONE = False


def autocast_dtype(capability: tuple[int, int]) -> torch.dtype:
    """bf16 on GPUs of compute capability 8.0 and up, fp16 below.

    ``torch.cuda.is_bf16_supported()`` also says yes where bf16 is only emulated (slow) and
    asks about the *current* device, not the task's; the capability of the task's own GPU
    answers both.

    >>> autocast_dtype((7, 0)), autocast_dtype((8, 0))
    (torch.float16, torch.bfloat16)
    """
    return torch.bfloat16 if tuple(capability) >= BF16_CAPABILITY else torch.float16


#: Layers whose weights autocast casts to its lower precision on every call.
AUTOCAST_LAYERS = (torch.nn.Conv2d, torch.nn.Linear)


def cast_for_autocast(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast, once and in place, the weights and biases autocast would cast to ``dtype`` on
    every forward: those of convolutions and linear layers. Norm layers keep float32, as
    autocast leaves them.

    Under ``torch.autocast(..., dtype=dtype)`` the model's outputs are then bit for bit
    those of the float32 model (the same tensors rounded to the same dtype, once instead of
    per call), which ``tests/test_devices.py`` checks with the CPU's autocast. Only for a
    model that always runs under that autocast: the device copies of the stage functions.
    """
    for module in model.modules():
        if isinstance(module, AUTOCAST_LAYERS):
            for parameter in module.parameters(recurse=False):
                if parameter.is_floating_point():
                    parameter.data = parameter.data.to(dtype)  # the same Parameter object
    return model


def configure_cuda_once() -> bool:
    """Set cuDNN to deterministic, non-benchmarking mode for this process, once.

    ``torch.backends.cudnn.flags(...)`` as a context manager sets process-global flags and
    puts the old ones back on exit, so two threads of one worker (two tasks) entering and
    leaving it at different times turn each other's determinism off mid-batch. The settings
    are the same for every task, so they are made once, under a lock, when a process first
    uses a CUDA device, and never restored. Returns whether this call made them.
    """
    global _CUDA_SETUP_DONE
    if _CUDA_SETUP_DONE:
        return False
    with _CUDA_SETUP_LOCK:
        if _CUDA_SETUP_DONE:
            return False
        torch.backends.cudnn.enabled = True
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        _CUDA_SETUP_DONE = True
        return True


def use_device(device: torch.device) -> None:
    """Make ``device`` the calling thread's current CUDA device; nothing on the CPU.

    Allocations without an explicit device (cuDNN workspaces, cupy arrays, libraries that
    use "the current device") otherwise land on ``cuda:0`` whatever GPU the task was given.
    The current device is per thread, so each task thread sets its own.
    """
    if device.type != "cuda":
        return
    configure_cuda_once()
    torch.cuda.set_device(device)


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


_STREAMS = threading.local()
#: Whether CUDA stage calls autocast; False only inside :func:`cuda_float32`.
_CUDA_AUTOCAST = True


@contextmanager
def cuda_float32() -> Iterator[None]:
    """CUDA stage calls in float32 instead of autocast, in every thread of this process,
    for the block: only to measure what autocast buys (the GPU check's sweep); runs always
    autocast. Model copies made inside are float32 copies, kept apart from the others."""
    global _CUDA_AUTOCAST
    previous, _CUDA_AUTOCAST = _CUDA_AUTOCAST, False
    try:
        yield
    finally:
        _CUDA_AUTOCAST = previous


def cuda_autocasts() -> bool:
    """Whether CUDA stage calls autocast now (:func:`cuda_float32`)."""
    return _CUDA_AUTOCAST


def thread_stream(device: torch.device) -> torch.cuda.Stream:
    """The calling thread's own CUDA stream on ``device``, made on first use.

    The task threads of a worker would otherwise queue every kernel and copy on the
    device's one default stream, one task's copies waiting behind another's kernels. A task
    uses what it makes on its own stream only (the staging buffers record their events on
    it, results come back through a wait for it); what threads share, the model copies and
    harmonisation tables, is complete before any thread reads it
    (:func:`resflow.stages._device_copy` waits for its casts; plain copies wait anyway).
    """
    streams = _STREAMS.__dict__.setdefault("by_device", {})
    if device not in streams:
        streams[device] = torch.cuda.Stream(device)
    return streams[device]


@contextmanager
def inference_context(device: torch.device) -> Iterator[None]:
    """Inference mode, plus, on CUDA only, the thread's own stream (:func:`thread_stream`),
    bf16 (or fp16) autocast (off inside :func:`cuda_float32`) and deterministic cuDNN.

    CPU inference stays in float32: autocast there would change results between machines
    and buys little on the CPUs resflow targets, and the CPU path touches no cuDNN state.
    cuDNN's flags are process-wide, so they are set once (:func:`configure_cuda_once`)
    rather than per block.
    """
    with torch.inference_mode():
        if device.type != "cuda":
            yield
            return
        configure_cuda_once()
        dtype = autocast_dtype(torch.cuda.get_device_capability(device))
        with torch.cuda.stream(thread_stream(device)), torch.autocast(
                "cuda", dtype=dtype, enabled=_CUDA_AUTOCAST):
            yield


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
