"""A large raster of tiny blocks streams through ingest in bounded memory.

5000 x 5000 x 3 uint16 (150 MB of pixels) tiled in 16 x 16 blocks: GDAL's default block
cache (5% of RAM) would keep every block read and grow with the scene; ingest caps it, so the
peak resident memory of an ingest process stays far below the scene plus its windows.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from resflow.archive import Archive

pytestmark = pytest.mark.slow  # a 5000 x 5000 scene written, then streamed through ingest

SIZE = 5000
PEAK_LIMIT_MB = 350
"""Measured about 230 MiB with the cache capped and about 440 MiB without, on a 24 GiB host."""

# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child started from
# a big pytest process would report the parent's peak.
INGEST = """
import re, sys
from resflow.config import IngestConfig
from resflow.ingestion import ingest

result = ingest([sys.argv[1]], sys.argv[2], IngestConfig(chip=256, gsd=None))
assert result.ok, result.refused
status = open("/proc/self/status").read()
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) // 1024)
"""


def _tiny_blocks(path: Path) -> Path:
    profile = {"driver": "GTiff", "width": SIZE, "height": SIZE, "count": 3, "dtype": "uint16",
               "crs": "EPSG:32616", "transform": from_origin(500000, 3700000, 0.5, 0.5),
               "tiled": True, "blockxsize": 16, "blockysize": 16}
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", **profile) as ds:
        for y in range(0, SIZE, 500):
            ds.write(rng.integers(0, 4000, (3, 500, SIZE), dtype=np.uint16),
                     window=((y, y + 500), (0, SIZE)))
    return path


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's VmHWM")
def test_large_scene_of_tiny_blocks_streams_in_bounded_memory(tmp_path: Path) -> None:
    source = _tiny_blocks(tmp_path / "big.tif")
    archive = tmp_path / "big.zarr"
    done = subprocess.run([sys.executable, "-c", INGEST, str(source), str(archive)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    peak_mb = int(done.stdout.split()[-1])
    assert peak_mb < PEAK_LIMIT_MB, f"ingest peaked at {peak_mb} MiB"
    scene = Archive.open(archive).scenes["big"]
    assert (scene.height, scene.width) == (SIZE, SIZE)
    with rasterio.open(source) as ds:
        corner = ds.read(window=((SIZE - 16, SIZE), (SIZE - 16, SIZE)))
    image = Archive.open(archive).image("big")
    assert np.array_equal(image[:, SIZE - 16:, SIZE - 16:], corner)
