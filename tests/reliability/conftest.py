"""Fixtures of the reliability tests: one small archive and its clean reference maps.

The archive is the SpaceNet Atlanta sample at the working resolution (0.3 m, 1500 x 1500
pixels) and chip 192 (64 chips), small enough that a run
takes seconds, big enough that a run can be stopped part-way. Runs use partitions of 4 chips
so stage 3 has many tasks and a kill always lands in the middle of some.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from resflow.config import IngestConfig, RunConfig
from resflow.ingest import ingest
from resflow.samples import sample_path

PARTITION_CHIPS = 4
WINDOW = 2
"""2 x 2-chip prediction windows, so the 64-chip scene runs as 16 tasks and a run can be
stopped part-way."""


@pytest.fixture(scope="session")
def small_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Atlanta sample at chip 192: one scene of 8 x 8 chips. Read-only for tests."""
    out = tmp_path_factory.mktemp("reliability") / "atlanta192.zarr"
    result = ingest([sample_path("atlanta-pan")], out, IngestConfig(chip=192))
    assert result.ok, result.refused
    return out


@pytest.fixture(scope="session")
def run_config_file(engine_gallery: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A YAML run config: the engine gallery, CPU, 4-chip partitions of 2 x 2-chip prediction
    windows (16 tasks, so a run can be stopped part-way), 2 embedded workers."""
    path = tmp_path_factory.mktemp("reliability-config") / "run.yaml"
    path.write_text(yaml.safe_dump({
        "gallery": str(engine_gallery), "device": "cpu", "partition_chips": PARTITION_CHIPS,
        "window": WINDOW,
        "dask": {"workers": 2, "dashboard_address": "127.0.0.1:0"},
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
                       device="cpu", partition_chips=PARTITION_CHIPS, window=WINDOW)
    run_graph(config, LocalExecutor(gpus=[], progress=False))
    return maps(out)
