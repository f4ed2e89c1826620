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
    """An archive of three real samples at chip 256: scenes ``sample_geotiff``, ``ms1``,
    ``rmnp-rgb``. Read-only for tests; copy it before modifying."""
    out = tmp_path_factory.mktemp("archive") / "samples.zarr"
    result = ingest([sample_path(n) for n in ARCHIVE_SAMPLES], out, IngestConfig(chip=256))
    assert result.ok and len(result.ingested) == len(ARCHIVE_SAMPLES), result
    return out
