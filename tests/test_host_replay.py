"""The host-cost benchmark's replayed models give the real run's maps, bit for bit.

:mod:`benchmarks.host_cost` times everything but the models by replaying their recorded
outputs; its figures mean something only if a replayed run writes exactly what the real run
wrote, on every engine, and fails rather than map a window the tape does not hold.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.engine_study.engines import with_settings
from benchmarks.host_cost import different_arrays, gallery_version, record, run_config
from benchmarks.host_engines import MASK, ReplayingExecutor, cpu_clocks, put_gallery
from benchmarks.host_replay import REPLAY_DECODE, REPLAY_KEYS
from resflow.config import RunConfig
from resflow.executor import Executor


@pytest.fixture(scope="module")
def recorded(cropped_archive: Path, engine_gallery: Path,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[RunConfig, Path]:
    """The cropped archive mapped by the engine gallery's real models, their outputs on a
    tape: the real run's config (its ``out`` the real maps) and the tape folder."""
    work = tmp_path_factory.mktemp("host-replay")
    tape = work / "tape"
    tape.mkdir()
    config = run_config(cropped_archive, work / "real.zarr", "local", gallery=str(engine_gallery))
    record(config, tape / "cropped.npz")
    return config, tape


@pytest.fixture
def undo_replay(recorded: tuple[RunConfig, Path]) -> Iterator[list[Executor]]:
    """After the test, the real gallery and wall clocks again in this process and in the
    workers of the engines the test appends (shared with the rest of the session)."""
    config, _ = recorded
    engines: list[Executor] = []
    yield engines
    args = (None, config.gallery, gallery_version(config))
    put_gallery(*args)
    for engine in engines:
        engine.client.run(put_gallery, *args)  # type: ignore[attr-defined]


def replay(config: RunConfig, engine: Executor, tape: Path, out: Path) -> tuple[dict, bool]:
    """Map ``config.archive`` into ``out`` on ``engine`` with the models replayed from
    ``tape``: the report's stage seconds and whether every chip was written."""
    from resflow.graph import run_graph

    replaying = ReplayingExecutor(engine, tape, config.gallery, gallery_version(config))
    result = run_graph(with_settings(config, out=out), replaying)
    return result.report.stage_seconds, result.totals.complete


def assert_replayed_exactly(recorded: tuple[RunConfig, Path], engine: Executor,
                            out: Path) -> None:
    config, tape = recorded
    seconds, complete = replay(config, engine, tape, out)
    assert complete
    # the replayed models and the timed mask rule ran, not the real models
    for key in (*REPLAY_KEYS.values(), REPLAY_DECODE, MASK):
        assert seconds[key] > 0, key
    assert different_arrays(Path(str(config.out)), out) == []


@pytest.mark.slow
def test_replay_on_local_engine_writes_the_real_maps(
        recorded: tuple[RunConfig, Path], undo_replay: list[Executor], tmp_path: Path) -> None:
    from resflow.local import LocalExecutor

    assert_replayed_exactly(recorded, LocalExecutor(gpus=[], progress=False), tmp_path / "o")


@pytest.mark.slow
def test_replay_on_dask_writes_the_real_maps(
        recorded: tuple[RunConfig, Path], undo_replay: list[Executor], dask_client: object,
        tmp_path: Path) -> None:
    from resflow_dask import DaskExecutor

    engine = DaskExecutor(client=dask_client, gpus=[], progress=False)
    undo_replay.append(engine)
    assert_replayed_exactly(recorded, engine, tmp_path / "o")


@pytest.mark.slow
def test_a_window_missing_from_the_tape_fails_its_chips(
        recorded: tuple[RunConfig, Path], undo_replay: list[Executor], tmp_path: Path) -> None:
    from resflow.local import LocalExecutor

    config, _ = recorded
    empty = tmp_path / "empty-tape"
    empty.mkdir()
    _, complete = replay(config, LocalExecutor(gpus=[], progress=False), empty, tmp_path / "o")
    assert not complete


def test_cpu_clocks_count_cpu_time_not_waiting() -> None:
    from resflow.inference.clock import Clock

    cpu_clocks()
    try:
        clock = Clock()
        with clock("read"):
            time.sleep(0.2)
        assert clock.seconds["read"] < 0.1
    finally:
        cpu_clocks(on=False)
    clock = Clock()
    with clock("read"):
        time.sleep(0.2)
    assert clock.seconds["read"] >= 0.2
