"""Data fixtures: a small real-imagery archive, and its maps, shared by the whole session."""

from __future__ import annotations

from pathlib import Path

import pytest

from resflow.config import IngestConfig
from resflow.ingestion import ingest
from resflow.samples import DATA_DIR, sample_path

ATLANTA_LABELS = sample_path("atlanta-labels")
"""The SpaceNet footprints of the Atlanta sample (scene ``sample_geotiff``)."""

TINY_TRAINING = {"buckets": 2, "hash_steps": 20, "mono_steps": 3, "bucket_steps": 2,
                 "eval_every": 2, "min_bucket_chips": 1, "augment": False, "lr": 0.01,
                 "batch": 4, "context": 32, "window": 2, "window_halo": 64}
"""Training settings that exercise every phase (buckets, mono, bucket decoders, scores) in
as few steps as each allows: each train chip encoded once (the augmented encoding has a
test of its own) with half the default context, steps of 4 chips at a learning rate at
which three steps already lower mono's validation loss, test chips scored in 2 x 2-chip
windows with half the default halo (a quarter of the pixels to predict). About 16 s on 2
cores against 26 s with the default batch and context."""

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


SHORT_HALO = 64
"""Half the default halo, for runs whose tests check engines, storage or recovery: what they
assert does not depend on context, and a smaller halo is less to compute."""

CROPS = {"atlanta-pan": 460, "rotterdam-ms1": 230}
"""Top-left crops (pixels a side) of two samples: each about 767 x 767 pixels at the working
resolution, 3 x 3 chips of 256."""


def crop_raster(source: Path, size: int, out: Path) -> Path:
    """The top-left ``size`` x ``size`` pixels of ``source`` as a GeoTIFF at ``out``, with the
    window's own georeferencing, nodata and band data types."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(source) as src:
        window = Window(0, 0, size, size)
        profile = {key: value for key, value in src.profile.items()
                   if key not in ("blockxsize", "blockysize")}
        profile.update(width=size, height=size, transform=src.window_transform(window),
                       tiled=False)
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(src.read(window=window))
    return out


@pytest.fixture(scope="session")
def cropped_sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of the :data:`CROPS` GeoTIFFs (real imagery, a third of the samples' pixels):
    what tests of engines, storage and recovery map when the pixels' content does not
    matter. Read-only."""
    folder = tmp_path_factory.mktemp("cropped")
    for name, size in CROPS.items():
        source = sample_path(name)
        crop_raster(source, size, folder / source.name)
    return folder


@pytest.fixture(scope="session")
def cropped_archive(cropped_sources: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The :data:`CROPS` and ``rmnp-rgb`` (too coarse: recorded as skipped) at chip 256 and
    0.3 m: scenes ``sample_geotiff`` and ``ms1`` of 3 x 3 chips each. Read-only."""
    out = tmp_path_factory.mktemp("cropped-archive") / "cropped.zarr"
    sources = [*sorted(cropped_sources.iterdir()), sample_path("rmnp-rgb")]
    result = ingest(sources, out, IngestConfig(chip=256))
    assert result.ok and len(result.ingested) == len(sources), result
    return out


@pytest.fixture(scope="session")
def tiny_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Atlanta sample alone on its own 0.5 m grid (900 x 900, 16 chips of 256: 4 chip
    rows, so train, validation and test bands): the smallest labelled archive a training
    runs on. Read-only."""
    out = tmp_path_factory.mktemp("tiny") / "atlanta.zarr"
    result = ingest([sample_path("atlanta-pan")], out, IngestConfig(chip=256, gsd=0.5))
    assert result.ok and len(result.ingested) == 1, result
    return out


@pytest.fixture(scope="session")
def trained_gallery(sample_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A gallery trained on ``sample_archive`` with the Atlanta labels and
    ``TINY_TRAINING`` (seed 0), with its ``metrics.json``. Read-only."""
    from resflow.training.train import train

    out = tmp_path_factory.mktemp("trained") / "gallery"
    train(sample_archive, [ATLANTA_LABELS], out, seed=0, **TINY_TRAINING)
    return out


@pytest.fixture(scope="session")
def native_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three samples of ``sample_archive`` on their own grids (``ms1`` at 1 m,
    ``rmnp-rgb`` geographic at about 146 m), none skipped. Read-only."""
    out = tmp_path_factory.mktemp("native") / "samples.zarr"
    result = ingest([sample_path(n) for n in ARCHIVE_SAMPLES], out, NATIVE)
    assert result.ok and len(result.ingested) == len(ARCHIVE_SAMPLES), result
    return out


@pytest.fixture(scope="session")
def mapped_samples(sample_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``sample_archive`` mapped by the bundled gallery on the in-process engine, once per
    session however many modules ask. Read-only: copy it before modifying."""
    from resflow.config import RunConfig
    from resflow.graph import run_graph
    from resflow.local import LocalExecutor

    out = tmp_path_factory.mktemp("mapped") / "maps.zarr"
    config = RunConfig(archive=sample_archive, out=out, backend="local", device="cpu")
    run_graph(config, LocalExecutor(gpus=[], progress=False))
    return out
