"""Fixtures of the reliability tests: one small archive and its clean reference maps.

The archive is the crop of the SpaceNet Atlanta sample (``cropped_sources``) at the working
resolution (0.3 m, 766 x 766 pixels) and chip 128 (36 chips), small enough that a run takes
seconds, big enough that a run can be stopped part-way. Runs use partitions of 4 chips
so stage 3 has many tasks and a kill always lands in the middle of some.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from resflow.config import IngestConfig, RunConfig
from resflow.ingestion import ingest
from resflow.samples import sample_path
from tests.fixtures_data import SHORT_HALO

PARTITION_CHIPS = 4
WINDOW = 2
"""2 x 2-chip prediction windows, so the 36-chip scene runs as 9 tasks and a run can be
stopped part-way."""


@pytest.fixture(scope="session")
def small_archive(cropped_sources: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Atlanta crop at chip 128: one scene of 6 x 6 chips. Read-only for tests."""
    out = tmp_path_factory.mktemp("reliability") / "atlanta128.zarr"
    result = ingest([cropped_sources / sample_path("atlanta-pan").name], out,
                    IngestConfig(chip=128))
    assert result.ok, result.refused
    return out


@pytest.fixture(scope="session")
def run_config_file(engine_gallery: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A YAML run config: the engine gallery, CPU, 4-chip partitions of 2 x 2-chip prediction
    windows (9 tasks, so a run can be stopped part-way) with a halo of
    :data:`~tests.fixtures_data.SHORT_HALO`, one embedded Dask worker (each one imports
    torch and the stages, about 4 CPU-s; the worker-loss test asks for two)."""
    path = tmp_path_factory.mktemp("reliability-config") / "run.yaml"
    path.write_text(yaml.safe_dump({
        "gallery": str(engine_gallery), "device": "cpu", "partition_chips": PARTITION_CHIPS,
        "window": WINDOW, "halo": SHORT_HALO,
        "dask": {"workers": 1, "dashboard_address": "127.0.0.1:0"},
        "spark": {"master": "local[2]"},
    }))
    return path


@pytest.fixture(scope="session")
def reference_maps(small_archive: Path, engine_gallery: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], np.ndarray]:
    """The clean run's maps (in-process reference engine): what every recovered run must equal."""
    from resflow.graph import run_graph
    from resflow.local import LocalExecutor
    from tests.processes import maps

    out = tmp_path_factory.mktemp("reliability-reference") / "clean.zarr"
    config = RunConfig(archive=small_archive, gallery=engine_gallery, out=out, backend="local",
                       device="cpu", partition_chips=PARTITION_CHIPS, window=WINDOW,
                       halo=SHORT_HALO)
    run_graph(config, LocalExecutor(gpus=[], progress=False))
    return maps(out)
