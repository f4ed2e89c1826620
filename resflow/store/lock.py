"""The writer lock: one run at a time writes an output store.

Two runs to one output (a second started with ``--overwrite`` while the first still writes)
would delete or mix each other's maps. A run therefore holds an exclusive ``flock`` on
``<out>.lock`` beside the store from before it checks or deletes anything until it is done;
the file names the holder (pid, host, start time) for the refusal message. The operating
system drops the lock when its holder exits, so the lock of a run killed with ``kill -9`` on
this host is simply taken over. A lock file naming a live run on another host of a shared
filesystem (where ``flock`` may not reach across hosts) is refused too.

A store in object storage gets a lease instead (:mod:`resflow.store.object_lock`): an
object created only if absent and renewed while its run lives, so a crash frees it once
its lease ends.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path

from resflow.errors import ResflowError

#: Locks this process holds: lock file -> descriptor (released by :func:`release`).
_HELD: dict[Path, int] = {}


class StoreLocked(ResflowError):
    """Another run is writing the output store."""


def lock_path(out: Path) -> Path:
    """The lock file of the store at ``out``: ``<out>.lock`` beside it, so deleting the
    store for ``--overwrite`` never deletes the lock that guards the deletion."""
    return out.with_name(f"{out.name}.lock")


def acquire(out: Path | str) -> None:
    """Hold the writer lock of the store at ``out`` until :func:`release` or exit.

    A lock this process holds already (a run stopped by an exception, then run again in
    the same interpreter) is kept. A URL takes a lease (:mod:`resflow.store.object_lock`).

    Raises
    ------
    StoreLocked
        Another live process holds the lock.
    """
    if not isinstance(out, Path):
        from resflow.store import object_lock

        object_lock.acquire(out)
        return
    path = lock_path(out)
    if path in _HELD:
        return
    while True:
        fd = _open_lock(out, path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            _refuse(out, path)
        # the holder before us may have removed the file between our open and our lock
        if path.exists() and os.stat(path).st_ino == os.fstat(fd).st_ino:
            break
        os.close(fd)
    try:
        _refuse_remote_holder(out, path, fd)
    except StoreLocked:
        os.close(fd)
        raise
    holder = {"pid": os.getpid(), "host": socket.gethostname(),
              "started_utc": datetime.now(UTC).isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    _HELD[path] = fd


def _open_lock(out: Path, path: Path) -> int:
    """A descriptor of the lock file, created with its folder where missing."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ResflowError(str(out), f"the output cannot be written here ({exc.strerror})",
                           "give --out a folder you can write, on a disk with free "
                           "space") from exc


def check_free(out: Path | str) -> None:
    """Refuse, without taking it, a lock another process holds (what ``resflow run`` checks
    before it starts an engine)."""
    if not isinstance(out, Path):
        from resflow.store import object_lock

        object_lock.check_free(out)
        return
    if lock_path(out) in _HELD:
        return
    path = lock_path(out)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            _refuse(out, path)
        _refuse_remote_holder(out, path, fd)
    finally:
        os.close(fd)


def release(out: Path | str) -> None:
    """Give the lock of the store at ``out`` back (removing its file), if this process
    holds it."""
    if not isinstance(out, Path):
        from resflow.store import object_lock

        object_lock.release(out)
        return
    path = lock_path(out)
    fd = _HELD.pop(path, None)
    if fd is None:
        return
    path.unlink(missing_ok=True)
    os.close(fd)


def _holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:  # written half-way by a holder killed while writing it
        return {}


def _refuse_remote_holder(out: Path, path: Path, fd: int) -> None:
    """Refuse a lock file left by a run on another host: its lock may not reach here."""
    holder = _holder(fd)
    if holder.get("host", socket.gethostname()) != socket.gethostname():
        _refuse(out, path, holder)


def _refuse(out: Path, path: Path, holder: dict | None = None) -> None:
    if holder is None:
        with path.open("rb") as fh:
            holder = _holder(fh.fileno())
    refuse(str(out), str(path), holder)


def refuse(out: str, lock: str, holder: dict) -> None:
    """Raise :class:`StoreLocked` naming the run in ``holder`` (the lock's record)."""
    who = f"process {holder.get('pid', '?')} on {holder.get('host', '?')}, started " \
          f"{holder.get('started_utc', '?')}"
    if "expires_utc" in holder:
        who += f", its lease renewed until {holder['expires_utc']}"
        gone = ("a run that died gives the lock up when its lease ends; if you know it is "
                f"dead, delete {lock}")
    else:
        gone = f"if no such run is alive (another host's run that was killed), delete {lock}"
    raise StoreLocked(out, f"another resflow run ({who}) is writing this output, and "
                      "two runs would delete or mix each other's maps",
                      f"wait for it to finish or stop it; {gone}")
