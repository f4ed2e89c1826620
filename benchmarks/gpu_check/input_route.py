"""The graph's way into the models on the device, against harmonising on the host.

Windows travel as stored and are harmonised on the device, which sends fewer bytes than
float32; this must give the host route's blocks and quantised masks bit for bit, and is
timed against it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from benchmarks.gpu_check.compare import MASK_THRESHOLD
from benchmarks.gpu_check.options import CheckOptions

if TYPE_CHECKING:  # the check imports torch and resflow only once it runs
    import torch

    from benchmarks.engine_study.limit import Preloaded


def input_route(data: Preloaded, device: torch.device,
                options: CheckOptions) -> dict[str, Any]:
    """The graph's way into the models on ``device`` against harmonising on the host.

    Prediction windows go as stored (source dtype, pinned double-buffered staging) and are
    harmonised on the device (:class:`resflow.model_input.SourceImages`; float64 and wide
    32-bit sources are harmonised first, :func:`~resflow.model_input.travels_stored`); the
    host route harmonises every window to float32 and sends that. Both must give the same
    blocks bit for bit, and quantising and thresholding on the device the host's bytes.
    Each route is timed producing the graph's blocks, one window each (warmed up untimed,
    waited for at the end).
    """
    import numpy as np
    import torch

    from resflow.masks import building_mask
    from resflow.model_input import HARMONISED_BYTES, SourceImages, sent_bytes
    from resflow.stages import quantise_tensor
    from resflow.store.format import NOT_MAPPED, quantise, quantised_threshold

    windows = data.stored
    routes = {"host": SourceImages(windows, on_device=False),
              "device": SourceImages(windows, on_device=True)}

    def blocks(images: SourceImages) -> Iterator[torch.Tensor]:
        for row in range(len(images)):
            for block, _ in images[np.array([row])].blocks(1, device):
                yield block

    equal = all(torch.equal(a, b) for a, b in zip(
        blocks(routes["host"]), blocks(routes["device"]), strict=True))

    def chips_per_s(images: SourceImages) -> float:
        checksum = torch.zeros((), device=device)
        for block in blocks(images):  # warm-up: tables, buffers
            checksum += block.sum()
        start = time.perf_counter()
        for _ in range(options.repeats):
            for block in blocks(images):
                checksum += block.sum()
        float(checksum)  # waits for the device
        return options.repeats * len(data.refs) / (time.perf_counter() - start)

    rng = np.random.default_rng(0)
    quantised_equal = True
    for window in windows:
        probability = rng.random(window.valid.shape, dtype=np.float32)
        stored, above = quantise_tensor(torch.from_numpy(probability[None]).to(device),
                                        torch.from_numpy(window.valid[None]).to(device),
                                        MASK_THRESHOLD)
        expected = quantise(np.where(window.valid, probability, 0.0))
        expected_above = building_mask(expected, quantised_threshold(MASK_THRESHOLD), 0)
        expected[~window.valid] = NOT_MAPPED
        quantised_equal &= bool(np.array_equal(stored[0].cpu().numpy(), expected)
                                and np.array_equal(above[0].cpu().numpy(), expected_above))
    return {
        "windows": len(windows), "chips": len(data.refs), "device": str(device),
        "blocks_bitwise_equal": equal, "quantise_bitwise_equal": quantised_equal,
        "bytes_per_window": {
            "sent": float(np.mean([sent_bytes(w) for w in windows])),
            "float32": float(np.mean([HARMONISED_BYTES * w.valid.size for w in windows]))},
        "chips_per_s": {name: chips_per_s(images) for name, images in routes.items()},
    }
