"""The archives the host-cost benchmark maps: a dense place, and one scene against its tiles.

The dense archive is the Dhaka and Banepa places of ``places.json`` at the working
resolution, ingested as :mod:`benchmarks.mask_cost` ingests them. The per-scene pair holds
the same pixels twice: a square cut from one of those scenes as one scene, and the same
square cut into ``tiles x tiles`` scenes, each one chip, written as GeoTIFFs from the stored
pixels (already on the working grid, so ingest keeps them as they are). Mapped one chip per
prediction window without a halo, both archives read the same chunks into the same windows,
so what the tiles cost beyond the single scene is what a scene costs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.places import load_places
from resflow.archive import Archive
from resflow.config import IngestConfig
from resflow.ingestion import ingest

PLACES = ("dhaka", "banepa")


def place_archive(work: Path) -> Path:
    """The Dhaka and Banepa scenes ingested at the working resolution into one archive."""
    scenes = [path for place in load_places() if place.name in PLACES for path in place.scenes]
    out = work / "places.zarr"
    result = ingest(scenes, out, IngestConfig())
    if not result.ok:
        raise SystemExit(f"ingesting {PLACES} failed: {result}")
    return out


def _write_tiff(path: Path, pixels: np.ndarray, transform: tuple[float, ...], crs_wkt: str,
                nodata: float | None) -> None:
    import rasterio
    from rasterio.transform import Affine

    bands, height, width = pixels.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=bands,
                       dtype=pixels.dtype.name, crs=crs_wkt, nodata=nodata,
                       transform=Affine(*transform[:6])) as dst:
        dst.write(pixels)


def scene_and_tiles(work: Path, archive: Path, *, scene: str, edge: int, tiles: int
                    ) -> tuple[Path, Path]:
    """Archives of the top-left ``edge`` x ``edge`` pixels of ``scene``: one scene, and
    ``tiles x tiles`` scenes of one chip each (chip ``edge // tiles``).

    Raises
    ------
    SystemExit
        The scene is smaller than ``edge``, or the two archives differ in chips.
    """
    source = Archive.open(archive)
    info = source.scenes[scene]
    if min(info.height, info.width) < edge:
        raise SystemExit(f"{scene} is {info.height} x {info.width}, under {edge} a side")
    pixels = np.asarray(source.image(scene)[:, :edge, :edge])
    a, b, c, d, e, f = info.transform[:6]
    step = edge // tiles
    folders = {"one": work / "one-scene", "tiles": work / "tiles"}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    _write_tiff(folders["one"] / f"{scene}.tif", pixels, info.transform, info.crs_wkt,
                info.nodata)
    for row in range(tiles):
        for col in range(tiles):
            y, x = row * step, col * step
            moved = (a, b, c + a * x + b * y, d, e, f + d * x + e * y)
            _write_tiff(folders["tiles"] / f"{scene}-{row:02d}-{col:02d}.tif",
                        pixels[:, y:y + step, x:x + step], moved, info.crs_wkt, info.nodata)
    archives = {}
    for name, folder in folders.items():
        archives[name] = work / f"{name}.zarr"
        result = ingest(sorted(folder.glob("*.tif")), archives[name], IngestConfig(chip=step))
        if not result.ok:
            raise SystemExit(f"ingesting the {name} archive failed: {result}")
    chips = {name: len(Archive.open(path).chips()) for name, path in archives.items()}
    if chips["one"] != chips["tiles"]:
        raise SystemExit(f"the single scene has {chips['one']} chips, its tiles {chips['tiles']}")
    return archives["one"], archives["tiles"]
