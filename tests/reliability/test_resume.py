"""Crash and resume: Ctrl-C, then SIGKILL of the whole run, then ``--resume`` to the end.

On each engine one output goes through: a run stopped by SIGINT (clean stop, exit 130, one
line saying how to resume, no worker dying of the Ctrl-C), a refused plain re-run, a resumed
run killed with SIGKILL (driver and every worker), and a final resumed run (on Dask, or the
local engine after Spark) that computes only the chips missing from the ledger and leaves
maps identical, bit for bit, to a clean run's.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from resflow.archive import Archive
from resflow.cli import app
from resflow.store.reader import describe
from resflow.store.writer import OutputStore
from tests.processes import (
    assert_identical,
    chips_done,
    interrupt,
    kill_tree,
    resflow,
    run_args,
    started,
    tree,
    wait_until,
)

pytestmark = pytest.mark.slow  # whole runs in subprocesses, interrupted and resumed

ENGINES = (("dask", "dask"), ("spark", "local"))
"""(the engine stopped twice, the engine that finishes): a resume reads only the output's
ledger, so any engine may finish what another started. Spark's output is finished by the
local engine (a fourth Spark JVM would add about 20 CPU-s and test no more of Spark: its
resumed run of step 3 already maps chips into the partial output)."""


def _stopped_part_way(out: Path, total: int) -> int:
    # The ledger as a resume reads it: a ledger chunk a SIGKILL cut off mid-write is a file
    # (so chips_done counts it) but not an entry, and its chip is rightly mapped again.
    store = OutputStore.open(out)
    done = len(store.done_chips())
    assert 0 < done < total, f"the run was not stopped part-way ({done}/{total} chips)"
    assert not store.complete
    return done


@pytest.mark.parametrize(("backend", "finisher"), ENGINES)
def test_interrupt_kill_and_resume(backend: str, finisher: str, small_archive: Path,
                                   run_config_file: Path, reference_maps,
                                   tmp_path: Path) -> None:
    out = tmp_path / "maps.zarr"
    args = run_args(small_archive, out, run_config_file, "--backend", backend)
    total = len(Archive.open(small_archive).chips())

    # 1. Ctrl-C part-way: a clean stop that says how to resume
    with started(args, tmp_path / "sigint.log") as proc:
        wait_until(lambda: chips_done(out) >= 1, "a first chip", proc)
        interrupt(proc)
        assert proc.wait(120) == 130
    log = (tmp_path / "sigint.log").read_text()
    assert "interrupted:" in log and "--resume" in log, log[-2000:]
    # one line says so; neither the workers nor Py4J die of the Ctrl-C with a traceback
    assert log.count("interrupted:") == 1, log[-3000:]
    assert "KeyboardInterrupt" not in log and "py4j" not in log, log[-3000:]
    first = _stopped_part_way(out, total)
    info = CliRunner().invoke(app, ["info", str(out)])
    assert info.exit_code == 0 and "INCOMPLETE" in info.output
    assert f"{first}/{total} chips" in info.output

    # 2. the same command without --resume is refused before any work (so in-process here)
    again = CliRunner().invoke(app, args[1:])
    assert again.exit_code == 2
    assert "unfinished resflow output already exists" in again.output
    assert "--resume" in again.output and chips_done(out) == first

    # 3. --resume, then SIGKILL of the driver and every worker part-way
    with started([*args, "--resume"], tmp_path / "sigkill.log") as proc:
        wait_until(lambda: chips_done(out) > first, "a resumed chip", proc)
        kill_tree(tree(proc.pid))
    second = _stopped_part_way(out, total)
    assert describe(out)["complete"] is False

    # 4. --resume to the end: only the chips missing from the ledger run again
    done = resflow(*run_args(small_archive, out, run_config_file, "--backend", finisher)[1:],
                   "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming {out} at {second}/{total} chips" in done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    assert re.match(rf"resflow: {total - second} chips, ", summary), summary
    store = OutputStore.open(out)
    assert store.complete and len(store.done_chips()) == total
    assert_identical(out, reference_maps)
    # 5. once more: refused as complete before any engine starts (so in-process here)
    finished = CliRunner().invoke(app, [*args[1:], "--resume"])
    assert finished.exit_code == 0 and finished.stdout.startswith("nothing to do")
