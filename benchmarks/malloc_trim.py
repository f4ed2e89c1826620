"""Stage 1 per chip in this process and in Dask workers started with and without the
``MALLOC_TRIM_THRESHOLD_`` that Dask's nanny exports to its workers.

The profile behind the ``dask-no-malloc-trim (proposed)`` row of ``resflow bench``: the same
stage function on the same chips, 1 torch thread, only the worker's malloc settings differ.

Usage::

    python benchmarks/malloc_trim.py [--chips 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def stage1_ms_per_chip(chips: int) -> float:
    """Milliseconds per 256 px chip of stage 1 (Lite0 features) in the calling process."""
    import torch

    from resflow.graph import load_gallery
    from resflow.stages import extract_features

    extractor = load_gallery(None).feature_extractor()
    images = np.random.default_rng(0).random((chips, 3, 256, 256), dtype=np.float32)
    cpu = torch.device("cpu")
    extract_features(images[:1], extractor, batch_size=8, device=cpu)  # build kernels
    start = time.perf_counter()
    extract_features(images, extractor, batch_size=8, device=cpu)
    return 1000 * (time.perf_counter() - start) / chips


def main() -> None:
    import dask
    from distributed import Client, LocalCluster
    from resflow_dask import MALLOC_TRIM_KEY

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chips", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"this process: {stage1_ms_per_chip(args.chips):.1f} ms per chip")
    for label, settings in (("dask worker, as installed", {}),
                            ("dask worker, MALLOC_TRIM_THRESHOLD_ unset", {MALLOC_TRIM_KEY: None})):
        with dask.config.set(settings):
            cluster = LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0")
        with cluster, Client(cluster) as client:
            times = [client.submit(stage1_ms_per_chip, args.chips, pure=False).result()
                     for _ in range(args.rounds)]
        print(f"{label}: {np.median(times):.1f} ms per chip (rounds: "
              f"{', '.join(f'{t:.1f}' for t in times)})")


if __name__ == "__main__":
    main()
