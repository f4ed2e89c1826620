"""Data fixtures: a small real-imagery archive shared by the whole test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from resflow.config import IngestConfig
from resflow.ingest import ingest
from resflow.samples import DATA_DIR, sample_path

ARCHIVE_SAMPLES = ("atlanta-pan", "rotterdam-ms1", "rmnp-rgb")
"""Panchromatic uint16 with nodata, 4-band float64, geographic uint8 RGB: the three shapes
of input the models must handle, small enough for a fast session."""


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """The folder of bundled sample data (read-only: never write into it)."""
    return DATA_DIR


@pytest.fixture(scope="session")
def sample_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An archive of three real samples at chip 256 and the default working resolution
    (0.3 m): scenes ``sample_geotiff`` (0.5 m, upsampled to 1500 x 1500), ``ms1`` (1 m,
    upsampled to 1000 x 1000) and ``rmnp-rgb`` (146 m: recorded as skipped, never mapped).
    Read-only for tests; copy it before modifying."""
    out = tmp_path_factory.mktemp("archive") / "samples.zarr"
    result = ingest([sample_path(n) for n in ARCHIVE_SAMPLES], out, IngestConfig(chip=256))
    assert result.ok and len(result.ingested) == len(ARCHIVE_SAMPLES), result
    return out


NATIVE = IngestConfig(chip=256, gsd=None, max_gsd=1e6)
"""Ingest settings that keep every source's own grid and every scene, however coarse: for
tests of the archive as a pixel-exact store (mapping needs the working resolution)."""


@pytest.fixture(scope="session")
def native_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three samples of ``sample_archive`` on their own grids (``ms1`` at 1 m,
    ``rmnp-rgb`` geographic at about 146 m), none skipped. Read-only."""
    out = tmp_path_factory.mktemp("native") / "samples.zarr"
    result = ingest([sample_path(n) for n in ARCHIVE_SAMPLES], out, NATIVE)
    assert result.ok and len(result.ingested) == len(ARCHIVE_SAMPLES), result
    return out
