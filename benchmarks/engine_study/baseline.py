"""What a user writes by hand: a plain rasterio-window loop around the mono model.

No archive, no engine, no routing: open each GeoTIFF, and for every chip window read the
chip plus its halo with rasterio, reflect-pad it at the scene edge, scale it to [0, 1], run
the mono segmenter (torch with its default threads, all cores), trim the halo and write
the uint8 probability into an output GeoTIFF. It uses the same chip edge, halo and model
as resflow, so resflow's area rate divided by this one says what the engine, the three
stages and the bucket models cost or buy against the obvious script. On a GPU the script
moves the model and each chip to the device and runs under the same inference settings as
resflow's stages (bf16 or fp16 autocast, :func:`resflow.devices.inference_context`).

Scaling follows the archive's rule (2nd-98th percentile per band of the valid pixels), as a
careful user would copy it, computed on a decimated read so memory stays bounded.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from benchmarks.engine_study.contention import contention
from benchmarks.engine_study.limit import CPU
from benchmarks.engine_study.series import summarise
from resflow.chips import chip_grid, window_km2
from resflow.devices import inference_context, torch_threads
from resflow.gallery import Gallery

#: Longest edge of the decimated read used for the scaling percentiles, pixels.
STATS_EDGE = 1024


def _scaling(src: rasterio.DatasetReader, bands: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-band 2nd/98th percentiles of the valid pixels of a decimated read."""
    scale = max(1, max(src.height, src.width) // STATS_EDGE)
    shape = (len(bands), src.height // scale or 1, src.width // scale or 1)
    sample = src.read(bands, out_shape=shape).astype(np.float64)
    valid = np.isfinite(sample).all(axis=0)
    if src.nodata is not None:
        valid &= ~(sample == src.nodata).all(axis=0)
    pixels = sample[:, valid]
    low, high = np.percentile(pixels, [2, 98], axis=1)
    return low[:, None, None], np.maximum(high, low + 1e-12)[:, None, None]


def _read_context(src: rasterio.DatasetReader, bands: list[int], y0: int, x0: int, chip: int,
                  halo: int) -> np.ndarray:
    """The chip window plus ``halo``, clipped to the scene and reflect-padded back."""
    r0, c0 = max(0, y0 - halo), max(0, x0 - halo)
    r1, c1 = min(src.height, y0 + chip + halo), min(src.width, x0 + chip + halo)
    block = src.read(bands, window=Window(c0, r0, c1 - c0, r1 - r0))
    pad = ((0, 0), (r0 - (y0 - halo), y0 + chip + halo - r1),
           (c0 - (x0 - halo), x0 + chip + halo - c1))
    return np.pad(block, pad, mode="symmetric")


def segment_geotiff(path: Path, out: Path, model: torch.nn.Module, *, chip: int,
                    halo: int, device: torch.device) -> dict[str, Any]:
    """Map one GeoTIFF chip by chip with ``model`` (on ``device``); returns its chips and
    km^2."""
    chips, km2 = 0, 0.0
    with rasterio.open(path) as src:
        bands = [1, 1, 1] if src.count < 3 else [1, 2, 3]
        low, high = _scaling(src, sorted(set(bands)))
        low, high = low[[b - 1 for b in bands]], high[[b - 1 for b in bands]]
        profile = src.profile | {"driver": "GTiff", "count": 1, "dtype": "uint8", "nodata": None,
                                 "tiled": True, "blockxsize": chip, "blockysize": chip,
                                 "compress": "deflate"}
        with rasterio.open(out, "w", **profile) as dst, inference_context(device):
            for _, _, y0, x0, h, w in chip_grid(src.height, src.width, chip):
                block = _read_context(src, bands, y0, x0, chip, halo).astype(np.float32)
                image = np.clip((block - low) / (high - low), 0, 1).astype(np.float32)
                logits = model(torch.from_numpy(image)[None].to(device))
                probability = torch.sigmoid(logits.float())[0, 0].cpu().numpy()
                trimmed = probability[halo: halo + h, halo: halo + w]
                dst.write(np.round(trimmed * 255).astype(np.uint8), 1,
                          window=Window(x0, y0, w, h))
                chips += 1
                km2 += window_km2(tuple(src.transform)[:6], src.crs.to_wkt(), y0, x0, h, w)
    return {"chips": chips, "km2": km2}


def hand_written(sources: Sequence[Path], gallery: Gallery, out_dir: Path, *, chip: int,
                 halo: int, threads: int,
                 device: torch.device = CPU) -> dict[str, Any]:
    """Time the hand-written loop over ``sources``, writing GeoTIFFs into ``out_dir``.

    Parameters
    ----------
    sources
        The GeoTIFFs the benchmark archive was ingested from.
    gallery
        Where the mono segmenter comes from (``Gallery.mono()``).
    out_dir
        Folder for the probability GeoTIFFs (one per source).
    chip, halo
        The run's chip edge and halo, pixels.
    threads
        Torch intra-op threads, what a plain script gets by default: all cores.
    device
        Where the model runs; on CUDA a copy of the gallery's cached model is moved there,
        so the gallery's own stays on the CPU for everything else in the process.

    Returns
    -------
    dict
        ``chips``, ``km2``, ``wall_s``, ``km2_per_s``, ``chips_per_s``, ``threads``,
        ``others_cores`` (:mod:`benchmarks.engine_study.contention`).
    """
    model = gallery.mono().eval()
    if device.type != "cpu":
        model = copy.deepcopy(model).to(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    chips, km2 = 0, 0.0
    with torch_threads(threads):
        with inference_context(device):  # first call builds the kernels: keep it untimed
            model(torch.zeros(1, 3, chip + 2 * halo, chip + 2 * halo, device=device))
        with contention() as record:
            for source in sources:
                done = segment_geotiff(Path(source), out_dir / f"{Path(source).stem}.tif",
                                       model, chip=chip, halo=halo, device=device)
                chips, km2 = chips + done["chips"], km2 + done["km2"]
    wall = record["wall_s"]
    return {"chips": chips, "km2": km2, "wall_s": wall, "km2_per_s": km2 / wall,
            "chips_per_s": chips / wall, "threads": threads,
            "others_cores": record["others_cores"]}


def summarise_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Repeated :func:`hand_written` runs as summaries of ``wall_s``, ``km2_per_s``,
    ``chips_per_s`` and ``others_cores``, with the ``chips``, ``km2`` and ``threads``."""
    first = runs[0]
    return {"chips": first["chips"], "km2": first["km2"], "threads": first["threads"],
            **{key: summarise([r[key] for r in runs])
               for key in ("wall_s", "km2_per_s", "chips_per_s", "others_cores")}}
