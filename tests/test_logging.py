"""``resflow -q/-v/--log-json``: status lines go through logging to stderr, summaries to
stdout; ``-q`` keeps warnings and errors, ``-v`` adds debug lines, ``--log-json`` makes each
line one JSON object with time, level, logger, message and the record's fields."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from resflow.archive import Archive
from resflow.cli import app
from resflow.config import RunConfig
from resflow.inference.caches import gallery_key
from resflow.store.writer import OutputStore

runner = CliRunner()


@pytest.fixture
def unfinished_output(sample_archive: Path, engine_gallery: Path, tmp_path: Path) -> Path:
    """An output store that a run of ``sample_archive`` with ``engine_gallery`` started and
    wrote nothing into yet: a run may resume it."""
    out = tmp_path / "maps.zarr"
    config = RunConfig(archive=sample_archive, out=out, gallery=engine_gallery, device="cpu")
    OutputStore.create(out, Archive.open(sample_archive), run_config=config.model_dump(
        mode="json"), gallery_version=gallery_key(engine_gallery)[1])
    return out


def resume_on_no_cluster(archive: Path, out: Path, engine_gallery: Path, *flags: str) -> Result:
    """``resflow [flags] run --resume`` that says it resumes (INFO), then fails to reach its
    Dask scheduler (ERROR): a run that logs both levels without computing anything."""
    return runner.invoke(app, [*flags, "run", str(archive), "--out", str(out), "--resume",
                               "--gallery", str(engine_gallery), "--device", "cpu",
                               "--backend", "dask", "--scheduler-address", "tcp://127.0.0.1:9"])


def test_default_logs_info_and_errors(sample_archive: Path, unfinished_output: Path,
                                      engine_gallery: Path) -> None:
    result = resume_on_no_cluster(sample_archive, unfinished_output, engine_gallery)
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"resuming {unfinished_output} at 0/52 chips")
    assert lines[1].startswith("error: dask.scheduler_address")
    assert len(lines) == 2 and result.stdout == ""


def test_quiet_keeps_only_warnings_and_errors(sample_archive: Path, unfinished_output: Path,
                                              engine_gallery: Path) -> None:
    result = resume_on_no_cluster(sample_archive, unfinished_output, engine_gallery, "-q")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [line for line in result.stderr.splitlines()
                                          if line.startswith("error: dask.scheduler_address")]
    assert result.stderr.count("\n") == 1


def test_verbose_adds_debug_lines(sample_archive: Path, unfinished_output: Path,
                                  engine_gallery: Path) -> None:
    result = resume_on_no_cluster(sample_archive, unfinished_output, engine_gallery, "-v")
    settings = next(line for line in result.stderr.splitlines()
                    if line.startswith("run settings: "))
    assert json.loads(settings.removeprefix("run settings: "))["resume"] is True
    assert "resuming" in result.stderr and "error: dask.scheduler_address" in result.stderr


def test_log_json_lines_parse(sample_archive: Path, unfinished_output: Path,
                              engine_gallery: Path) -> None:
    result = resume_on_no_cluster(sample_archive, unfinished_output, engine_gallery,
                                  "--log-json")
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert [r["level"] for r in records] == ["INFO", "ERROR"]
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert records[0]["logger"] == "resflow.service"
    assert records[0]["message"].startswith("resuming")
    assert records[1]["message"].startswith("dask.scheduler_address")  # no "error: " prefix


def test_a_command_leaves_the_logger_as_it_found_it() -> None:
    logger = logging.getLogger("resflow")
    before = (logger.level, list(logger.handlers))
    assert runner.invoke(app, ["-v", "--log-json", "doctor"]).exit_code in (0, 1)
    assert (logger.level, logger.handlers) == before


def test_both_verbose_and_quiet_are_refused() -> None:
    result = runner.invoke(app, ["-v", "-q", "doctor"])
    assert result.exit_code == 2 and "-v" in result.stderr


@pytest.mark.slow
def test_a_run_logs_progress_and_exports_as_json_and_prints_its_summary(
        cropped_archive: Path, engine_gallery: Path, tmp_path: Path) -> None:
    out = tmp_path / "maps.zarr"
    result = runner.invoke(app, ["--log-json", "run", str(cropped_archive), "--out", str(out),
                                 "--backend", "local", "--gallery", str(engine_gallery),
                                 "--device", "cpu", "--no-stac", "--set", "window=2"])
    assert result.exit_code == 0, result.output
    assert "\r" not in result.stderr  # stderr is no terminal here: no bar
    records = [json.loads(line) for line in result.stderr.splitlines()]
    progress = [r for r in records if r["logger"] == "resflow.bars"]
    assert progress[-1]["chips_done"] == progress[-1]["chips_total"] == 18
    assert progress[-1]["km2"] > 0
    assert result.stdout.startswith("resflow: 18 chips") and result.stdout.count("\n") == 1
