"""GPU numbers: the physical ids schedulers hand out against the ordinals torch uses.

Schedulers (Spark's discovery script, ``nvidia-smi``, dask-cuda) number GPUs physically;
torch numbers the GPUs a process sees, in ``CUDA_VISIBLE_DEVICES`` order. Drivers translate
between the two when they start workers, so this module needs no torch (importing it costs
a run's driver about 2 s).
"""

from __future__ import annotations

import os

from resflow.errors import ConfigError


def _visible_entries(visible: str | None) -> list[str] | None:
    """The entries of a ``CUDA_VISIBLE_DEVICES`` value, ``None`` when it is unset."""
    if visible is None:
        return None
    return [entry.strip() for entry in visible.split(",") if entry.strip()]


def torch_ordinal(physical: str | int, visible: str | None) -> int:
    """The torch ordinal (``cuda:<n>``) of physical GPU ``physical`` in a process whose
    ``CUDA_VISIBLE_DEVICES`` is ``visible``.

    Schedulers (Spark's discovery script, ``nvidia-smi``) number GPUs physically, while torch
    numbers only the GPUs a process sees, in ``CUDA_VISIBLE_DEVICES`` order: with ``"4,5"``,
    physical GPU 5 is ``cuda:1``. Handing the physical number to torch would pick the wrong
    GPU, or none.

    Parameters
    ----------
    physical
        The physical GPU index (``"5"``, ``5``, ``"cuda:5"``) or a ``GPU-<uuid>`` entry.
    visible
        The process's ``CUDA_VISIBLE_DEVICES``; ``None`` (unset) means every GPU is visible
        in physical order, so the ordinal is the physical index.

    Raises
    ------
    ConfigError
        If the GPU is not among the visible ones.

    Examples
    --------
    >>> torch_ordinal("5", "4,5"), torch_ordinal("3", None)
    (1, 3)
    """
    address = str(physical).strip().removeprefix("cuda:")
    entries = _visible_entries(visible)
    if entries is None:
        if not address.isdigit():
            raise ConfigError(
                "device", f"GPU {physical!r} is not a GPU number",
                "give the GPU's index as nvidia-smi numbers it")
        return int(address)
    if address in entries:
        return entries.index(address)
    raise ConfigError(
        "CUDA_VISIBLE_DEVICES",
        f"GPU {physical!r} is not visible to this process (CUDA_VISIBLE_DEVICES={visible!r})",
        "hand out only GPUs listed in CUDA_VISIBLE_DEVICES, or unset/widen it",
    )


def physical_gpu(ordinal: str | int, visible: str | None) -> str:
    """The physical GPU id (as ``CUDA_VISIBLE_DEVICES`` lists it) behind torch ordinal
    ``ordinal`` of a process whose ``CUDA_VISIBLE_DEVICES`` is ``visible``.

    The reverse of :func:`torch_ordinal`: what a parent must put in a child's
    ``CUDA_VISIBLE_DEVICES`` so that the child gets the GPU the parent calls ``cuda:<n>``.

    Examples
    --------
    >>> physical_gpu("1", "4,5"), physical_gpu(3, None)
    ('5', '3')
    """
    address = str(ordinal).strip().removeprefix("cuda:")
    if not address.isdigit():
        raise ConfigError("device", f"GPU {ordinal!r} is not a torch device number",
                          "use the numbers torch gives the visible GPUs (0, 1, ...)")
    entries = _visible_entries(visible)
    if entries is None:
        return address
    if int(address) >= len(entries):
        raise ConfigError(
            "CUDA_VISIBLE_DEVICES",
            f"torch GPU {ordinal!r} does not exist: CUDA_VISIBLE_DEVICES={visible!r} "
            f"shows {len(entries)} GPU(s)",
            "use a GPU number below the count of GPUs in CUDA_VISIBLE_DEVICES",
        )
    return entries[int(address)]


def visible_devices_env() -> str | None:
    """This process's ``CUDA_VISIBLE_DEVICES`` (``None`` when unset)."""
    return os.environ.get("CUDA_VISIBLE_DEVICES")
