"""Refusals name what the caller can change: keywords from Python, flags from the CLI.

The same check refuses an existing output for ``resflow.run`` and ``resflow run``; the
Python caller reads ``resume=True``/``overwrite=True``, the shell user ``--resume``/
``--overwrite``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import resflow
from resflow.archive import Archive
from resflow.cli import app
from resflow.errors import ResflowError, python_wording
from resflow.store.writer import OutputStore


@pytest.fixture
def unfinished_output(sample_archive: Path, tmp_path: Path) -> Path:
    """An output store made for ``sample_archive`` that no run has written into yet."""
    out = tmp_path / "maps.zarr"
    OutputStore.create(out, Archive.open(sample_archive), run_config={})
    return out


def test_python_call_over_an_existing_output_names_keywords(
        sample_archive: Path, unfinished_output: Path) -> None:
    with pytest.raises(ResflowError) as refused:
        resflow.run(sample_archive, unfinished_output, backend="local", device="cpu")
    message = str(refused.value)
    assert "resume=True" in message and "overwrite=True" in message
    assert "--" not in refused.value.fix
    assert refused.value.where.endswith("maps.zarr")


def test_cli_over_an_existing_output_names_flags(sample_archive: Path,
                                                 unfinished_output: Path) -> None:
    result = CliRunner().invoke(app, ["run", str(sample_archive), "--out",
                                      str(unfinished_output), "--backend", "local",
                                      "--device", "cpu"])
    assert result.exit_code == 2
    assert "pass --resume to finish it or --overwrite to replace it" in result.stderr
    assert "resume=True" not in result.stderr


@pytest.mark.parametrize(("cli", "python"), [
    ("pass --overwrite to recompute it", "pass overwrite=True to recompute it"),
    ("recompute it with `resflow run --overwrite`",
     "recompute it with `resflow.run(..., overwrite=True)`"),
    ("finish it with `resflow run ARCHIVE --out o.zarr --resume` first",
     "finish it with `resflow.run(..., resume=True)` first"),
    ("finish it with the same command plus --resume",
     "finish it with the same call with resume=True"),
    ("pass --overwrite-all", "pass --overwrite-all"),
])
def test_python_wording_of_cli_fixes(cli: str, python: str) -> None:
    assert python_wording(cli) == python
