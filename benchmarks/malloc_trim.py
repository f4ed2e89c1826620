"""Model pass time against glibc's malloc thresholds: the profile behind
:mod:`resflow.allocator`.

Each condition runs in a fresh Python process: stage 1 (Lite0 features) and stage 3 (the
segmenter) over the same chips, one chip per call, one torch thread, calling the models
directly (the stage functions would fix the thresholds themselves). Conditions: ``plain``
(glibc's moving threshold, nothing big freed yet: near 128 KiB); ``after a 30 MB free`` (as
a read of a wide float64 slab frees; the threshold rises to 30 MB);
``MALLOC_TRIM_THRESHOLD_=65536`` (what Dask's nanny exports to its workers; any malloc tunable
freezes the threshold at 128 KiB); each also with :func:`resflow.allocator.steady_malloc`
applied first. Usage::

    python benchmarks/malloc_trim.py [--chips 12]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

CONDITIONS = {
    "plain": ({}, False),
    "after a 30 MB free": ({}, True),
    "MALLOC_TRIM_THRESHOLD_=65536": ({"MALLOC_TRIM_THRESHOLD_": "65536"}, False),
}


def probe(chips: int, free_first: bool, steady: bool) -> tuple[float, float]:
    """Milliseconds per 256 px chip of stage 1 and stage 3 in this process."""
    import numpy as np
    import torch

    from resflow.allocator import steady_malloc
    from resflow.devices import torch_threads
    from resflow.gallery import Gallery

    if steady:
        steady_malloc()
    if free_first:
        del_me = np.ones(30 << 20, dtype=np.uint8)
        del del_me
    gallery = Gallery.load(None)
    models = (gallery.feature_extractor().eval(), gallery.segmenter(0).eval())
    images = torch.from_numpy(np.random.default_rng(0).random((chips, 1, 3, 256, 256),
                                                              dtype=np.float32))
    times = []
    with torch.inference_mode(), torch_threads(1):
        for model in models:
            model(images[0])  # build kernels
            start = time.perf_counter()
            for chip in images:
                model(chip)
            times.append(1000 * (time.perf_counter() - start) / chips)
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chips", type=int, default=12)
    parser.add_argument("--probe", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        print(*probe(args.chips, args.probe[0] == "1", args.probe[1] == "1"))
        return
    print("| condition | steady_malloc | stage 1 ms/chip | stage 3 ms/chip |")
    print("|---|---|---|---|")
    for label, (env, free_first) in CONDITIONS.items():
        for steady in (False, True):
            out = subprocess.run(
                [sys.executable, __file__, "--chips", str(args.chips),
                 "--probe", str(int(free_first)), str(int(steady))],
                env={**os.environ, **env}, capture_output=True, text=True, check=True)
            stage1, stage3 = map(float, out.stdout.split())
            print(f"| {label} | {'yes' if steady else 'no'} | {stage1:.0f} | {stage3:.0f} |")


if __name__ == "__main__":
    main()
