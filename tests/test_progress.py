"""A run's progress counts chips of the chips planned and the km^2 they cover: a bar on a
terminal, plain log lines every tenth of the chips anywhere else, never carriage returns in
a log."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from resflow.bars import ChipProgress
from resflow.config import RunConfig
from resflow.executor import Executor, TaskEnv
from resflow.graph import run_graph
from resflow.local import LocalExecutor
from tests.fixtures_data import SHORT_HALO
from tests.fixtures_engines import ON_SHARED_SESSION, build_engine


class Terminal(io.StringIO):
    """A stream that says it is a terminal, as an interactive stderr does."""

    def isatty(self) -> bool:
        return True


def doubled(records: list[int], env: TaskEnv) -> list[int]:
    return [2 * r for r in records]


@pytest.fixture(params=sorted(ON_SHARED_SESSION))
def executor(request: pytest.FixtureRequest) -> Iterator[Executor]:
    with build_engine(request.param, request) as ex:
        yield ex


def progress_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "resflow.bars"]


def test_log_stream_gets_a_line_each_tenth_and_no_bar(caplog: pytest.LogCaptureFixture):
    log = io.StringIO()
    with caplog.at_level(logging.INFO, logger="resflow"), ChipProgress(36, stream=log) as bar:
        for _ in range(36):
            bar.advance(1, 0.25)
    assert log.getvalue() == ""  # no bar drawn into a log
    records = progress_records(caplog)
    assert [r.chips_done for r in records] == [4, 8, 11, 15, 18, 22, 26, 29, 33, 36]
    assert records[-1].chips_total == 36 and records[-1].km2 == pytest.approx(9.0)
    assert records[-1].getMessage() == "mapped 36/36 chips (100%), 9.00 km^2"


def test_a_run_that_stops_short_says_its_last_count(caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.INFO, logger="resflow"), \
            ChipProgress(36, stream=io.StringIO()) as bar:
        bar.advance(5, 1.0)
    assert [r.chips_done for r in progress_records(caplog)] == [5]


def test_terminal_gets_a_bar_in_chips_and_km2(caplog: pytest.LogCaptureFixture):
    terminal = Terminal()
    with caplog.at_level(logging.INFO, logger="resflow"), \
            ChipProgress(36, stream=terminal) as bar:
        for _ in range(3):
            bar.advance(12, 1.5)
        assert bar.done == 36
    drawn = terminal.getvalue()
    assert "\r" in drawn and "36/36" in drawn and "chip" in drawn and "4.50 km^2" in drawn
    assert not progress_records(caplog)  # the bar, not log lines


def test_disabled_progress_shows_nothing(caplog: pytest.LogCaptureFixture):
    terminal = Terminal()
    with caplog.at_level(logging.INFO, logger="resflow"), \
            ChipProgress(10, enabled=False, stream=terminal) as bar:
        bar.advance(10, 1.0)
    assert terminal.getvalue() == "" and not progress_records(caplog)


@pytest.mark.slow
def test_a_run_counts_up_to_its_planned_chips_and_area(
        cropped_archive: Path, engine_gallery: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    config = RunConfig(archive=cropped_archive, out=tmp_path / "maps.zarr", backend="local",
                       gallery=engine_gallery, device="cpu", partition_chips=4, window=2,
                       halo=SHORT_HALO)
    with caplog.at_level(logging.INFO, logger="resflow"):
        result = run_graph(config, LocalExecutor(gpus=[], progress=True))
    records = progress_records(caplog)
    done = [r.chips_done for r in records]
    assert done == sorted(set(done)) and len(done) > 1  # a line per tenth, a task may pass several
    assert done[-1] == records[-1].chips_total == result.report.chips > 0
    assert records[-1].km2 == pytest.approx(result.report.km2, rel=1e-6)


def test_engines_report_each_task_of_a_watched_stage_once(executor: Executor) -> None:
    seen: list[int] = []
    executor.on_task_done("watched", seen.append)
    parts = executor.from_partitions([[1, 2], [3], [4, 5, 6], [7]])
    watched = executor.map_partitions(parts, doubled, name="watched")
    got = executor.collect(executor.map_partitions(watched, doubled, name="after"))
    assert sorted(got) == [4, 8, 12, 16, 20, 24, 28]
    assert sorted(seen) == [0, 1, 2, 3]


def test_a_quiet_resflow_logger_silences_the_bar_an_unset_one_does_not():
    logger = logging.getLogger("resflow")
    level = logger.level
    try:
        logger.setLevel(logging.NOTSET)
        shown = Terminal()
        with ChipProgress(4, stream=shown) as bar:
            bar.advance(4, 1.0)
        logger.setLevel(logging.WARNING)
        quiet = Terminal()
        with ChipProgress(4, stream=quiet) as bar:
            bar.advance(4, 1.0)
    finally:
        logger.setLevel(level)
    assert "4/4" in shown.getvalue() and quiet.getvalue() == ""
