"""Device tickets across real processes: no device over-subscribed, none leaked by a kill -9."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import stat
import tempfile
import time
from pathlib import Path

import pytest

from resflow.errors import ResflowError
from resflow.tickets import TicketTimeout, checkout, default_ticket_dir, ticket_path
from tests.overlap import meet, meetings, on_side, peak_together

DEVICES = ["0", "1"]
PER_DEVICE = 2
TASKS = 18


def hold_ticket(ticket_dir: str, room: str, task: int) -> None:
    """Check out a device and hold it until three other holders (every slot taken) are met,
    or every task has come, or a second has passed."""
    with checkout(DEVICES, PER_DEVICE, ticket_dir, timeout=60) as device:
        meet(room, f"task{task}", want=len(DEVICES) * PER_DEVICE - 1, patience=1.0,
             side=device, any_side=True, total=TASKS)


def hold_forever(ticket_dir: str, ready: str) -> None:
    with checkout(["0"], 1, ticket_dir, timeout=5):
        Path(ready).touch()
        time.sleep(600)  # until the test kills it


def test_no_device_oversubscribed_and_every_task_gets_one(tmp_path: Path) -> None:
    tickets, room = tmp_path / "tickets", tmp_path / "room"
    ctx = mp.get_context("spawn")
    # 6 worker processes sharing 2 devices x 2 slots, 18 tasks
    with ctx.Pool(6) as pool:
        pool.starmap(hold_ticket, [(str(tickets), str(room), i) for i in range(TASKS)])
    met = meetings(room)
    assert len(met) == TASKS
    assert {task.split("@")[0] for task in met} == set(DEVICES)
    for device in DEVICES:
        assert peak_together(met, on_side(met, device)) <= PER_DEVICE
    assert peak_together(met) > PER_DEVICE


def test_killed_holder_ticket_is_reclaimed(tmp_path: Path) -> None:
    from tests.processes import wait_until  # here: the spawned holders need not import it

    ready = tmp_path / "ready"
    holder = mp.get_context("spawn").Process(target=hold_forever, args=(str(tmp_path), str(ready)))
    holder.start()
    try:
        wait_until(ready.exists, "the holder's ticket", timeout=60)
        with pytest.raises(TicketTimeout, match="no GPU ticket came free"), checkout(
            ["0"], 1, tmp_path, timeout=0.3
        ):
            pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(10)
        with checkout(["0"], 1, tmp_path, timeout=5) as device:
            assert device == "0"
    finally:
        if holder.is_alive():
            holder.kill()
    assert ticket_path(tmp_path, "0", 0).exists()


def test_devices_fill_evenly_before_sharing(tmp_path: Path) -> None:
    with (
        checkout(DEVICES, PER_DEVICE, tmp_path) as first,
        checkout(DEVICES, PER_DEVICE, tmp_path) as second,
    ):
        assert {first, second} == set(DEVICES)


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh system temporary directory for the default ticket directory to go in."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_default_ticket_dir_is_private_to_the_user(private_tmp: Path) -> None:
    path = default_ticket_dir()
    assert path == private_tmp / f"resflow-tickets-{os.getuid()}"
    assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0
    assert default_ticket_dir() == path  # reused, not refused, on the next call
    with checkout(["0"], 1, None) as device:
        assert device == "0"
        assert ticket_path(path, "0", 0).exists()


def test_default_ticket_dir_of_another_user_is_refused(
    private_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = os.getuid() + 1
    (private_tmp / f"resflow-tickets-{other}").mkdir(mode=0o700)  # made by "us", not them
    monkeypatch.setattr(os, "getuid", lambda: other)
    with pytest.raises(ResflowError, match=f"owned by user id {other - 1}"):
        default_ticket_dir()


def test_shared_writable_or_linked_ticket_dir_is_refused(private_tmp: Path) -> None:
    path = private_tmp / f"resflow-tickets-{os.getuid()}"
    path.mkdir()
    path.chmod(0o777)
    with pytest.raises(ResflowError, match="writable by other users"), checkout(["0"], 1):
        pass
    path.rmdir()
    (private_tmp / "elsewhere").mkdir(mode=0o700)
    path.symlink_to(private_tmp / "elsewhere")
    with pytest.raises(ResflowError, match="not a directory"):
        default_ticket_dir()
