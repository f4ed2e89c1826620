"""Device tickets: many worker processes on one host share a few GPUs, k users per device.

A ticket is an exclusive ``flock`` on one file ``gpu<i>.slot<j>.lock`` in a ticket directory
shared by the processes of one host (by default one per user: :func:`default_ticket_dir`).
Holding slot ``j`` of device ``i`` means "I am one of at most ``per_device`` users of GPU
``i``". The operating system drops a lock when its holder exits, so a worker killed with
``kill -9`` never leaks its ticket: nothing has to clean up.

Examples
--------
>>> import tempfile
>>> with checkout(["0", "1"], per_device=2, ticket_dir=tempfile.mkdtemp()) as device:
...     device
'0'
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from resflow.errors import ResflowError
from resflow.paths import private_folder


class TicketTimeout(ResflowError):
    """No device ticket became free in time."""


@dataclass(frozen=True)
class SharedDevices:
    """GPUs the worker processes of one host share through tickets, at most ``per_device``
    holders each (:func:`checkout`'s arguments, carried by a task to where it needs them).

    A task checks a ticket out around each stretch of device work only
    (:meth:`resflow.executor.TaskEnv.gpu_held`), so its reads, masks and writes never keep
    a device from the host's other tasks.
    """

    devices: tuple[str, ...]
    per_device: int
    ticket_dir: str | None = None

    def checkout(self) -> AbstractContextManager[str]:
        """Hold one ticket for the ``with`` block and yield its device address."""
        return checkout(self.devices, self.per_device, self.ticket_dir)


def default_ticket_dir() -> Path:
    """This user's ticket directory, ``<tmp>/resflow-tickets-<uid>``, created private (0700).

    A directory shared between users would let one user's workers take (or, by holding the
    lock files open, starve) another user's tickets, and let anyone plant files or links in
    it; each user therefore gets their own, and a directory of that name that another user
    owns or others can write to is refused rather than used.

    Raises
    ------
    ResflowError
        If the path exists but is not a directory of this user that only they can write.
    """
    path = Path(tempfile.gettempdir()) / f"resflow-tickets-{os.getuid()}"
    return private_folder(
        path, "the device-ticket directory",
        "remove it, or set the engine's ticket_dir setting to a private directory of your own")


def ticket_path(ticket_dir: Path, device: str, slot: int) -> Path:
    """The lock file standing for slot ``slot`` of GPU ``device``."""
    return Path(ticket_dir) / f"gpu{device}.slot{slot}.lock"


def try_lock(path: Path) -> int | None:
    """An open descriptor holding an exclusive lock on ``path``, or ``None`` if it is taken."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextmanager
def checkout(
    devices: Sequence[str],
    per_device: int,
    ticket_dir: Path | str | None = None,
    *,
    timeout: float = 600.0,
    poll: float = 0.05,
) -> Iterator[str]:
    """Hold one ticket for the duration of the ``with`` block and yield its device address.

    Slots are tried level by level (slot 0 of every device, then slot 1 of every device, ...),
    so devices fill evenly before any one of them gets a second user.

    Parameters
    ----------
    devices
        GPU addresses shared by the processes of this host (``["0", "1"]``).
    per_device
        At most this many concurrent holders per device (``1 / gpu share`` of a task).
    ticket_dir
        Directory of the lock files; every process sharing the devices must use the same one.
        ``None`` = this user's :func:`default_ticket_dir`, resolved in the calling process
        (a worker on another host or running as another user gets its own).
    timeout
        Seconds to wait for a free ticket before giving up.
    poll
        Seconds between attempts while every ticket is taken.

    Raises
    ------
    TicketTimeout
        when no ticket frees up within ``timeout`` seconds.
    """
    if not devices or per_device < 1:
        raise ValueError("checkout needs at least one device and per_device >= 1")
    if ticket_dir is None:
        ticket_dir = default_ticket_dir()
    else:
        ticket_dir = Path(ticket_dir)
        ticket_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    while True:
        for slot in range(per_device):
            for device in devices:
                fd = try_lock(ticket_path(ticket_dir, device, slot))
                if fd is None:
                    continue
                try:
                    yield device
                finally:
                    os.close(fd)  # closing the only descriptor releases the flock
                return
        if time.monotonic() >= deadline:
            raise TicketTimeout(
                str(ticket_dir),
                f"no GPU ticket came free in {timeout:g} s ({len(devices)} device(s) x "
                f"{per_device} slot(s) all held)",
                "use fewer workers per GPU, a smaller GPU share per task, or a longer timeout",
            )
        time.sleep(poll)
