"""The writer lock of an output store in object storage: a lease that a crash gives up.

An object store has no ``flock``, but it can create an object only if none is there (a
conditional PUT, ``If-None-Match: *`` on S3; fsspec's ``pipe_file(mode="create")``). A run
creates ``<out>.lock`` that way, naming itself and when its lease ends, and a thread renews
the lease every ``lease_s / 4`` while the run lives; the run deletes the object when done.
A run that crashed stops renewing, so its lease ends within :data:`LEASE_S` and the next
run takes the lock over: nothing has to be cleaned up by hand. A run on the same host takes
over at once the lock of a process that no longer exists. The hosts' clocks must agree to
well within :data:`LEASE_S`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from resflow import storage
from resflow.store.lock import refuse

#: Seconds a lease lasts unless renewed: how long the lock of a crashed run stays taken.
LEASE_S = 120.0

log = logging.getLogger(__name__)


def lock_location(out: str) -> str:
    """The lock object of the store at ``out``: ``<out>.lock`` beside it, so deleting the
    store for ``--overwrite`` never deletes the lock that guards the deletion."""
    return f"{out.rstrip('/')}.lock"


class _Lease:
    """This process's hold on one lock object, renewed by a daemon thread until released."""

    def __init__(self, location: str, lease_s: float) -> None:
        self.location, self.lease_s = location, lease_s
        self.fs, self.path = storage.filesystem(location)
        self.record = {"pid": os.getpid(), "host": socket.gethostname(),
                       "started_utc": _utc(time.time()), "run": uuid.uuid4().hex}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, daemon=True,
                                        name=f"resflow-lease {storage.display(location)}")

    def body(self) -> bytes:
        """The lock object's bytes: the holder and when its lease ends from now."""
        ends = time.time() + self.lease_s
        return json.dumps(self.record | {"expires": ends, "expires_utc": _utc(ends)}).encode()

    def start(self) -> None:
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            try:
                if _holder(self.fs, self.path).get("run") != self.record["run"]:
                    log.error("the writer lock %s was taken over by another run (this run "
                              "could not renew it in time); the two may mix their maps",
                              storage.display(self.location))
                    return
                self.fs.pipe_file(self.path, self.body())
            except Exception as exc:  # a transient store error: the next turn tries again
                log.warning("could not renew the writer lock %s (%s)",
                            storage.display(self.location), exc)

    def release(self) -> None:
        """Stop renewing and delete the lock object, if it is still this run's."""
        self._stop.set()
        self._thread.join()
        try:
            if _holder(self.fs, self.path).get("run") == self.record["run"]:
                self.fs.rm_file(self.path)
        except FileNotFoundError:
            pass


#: Leases this process holds: store location -> lease.
_HELD: dict[str, _Lease] = {}


def acquire(out: str, lease_s: float = LEASE_S) -> None:
    """Hold the writer lock of the store at URL ``out`` until :func:`release`.

    A lease this process holds already is kept. A lock whose lease has ended (its run
    died) is taken over.

    Raises
    ------
    resflow.store.lock.StoreLocked
        Another run's lease on the lock has not ended.
    """
    if out in _HELD:
        return
    lease = _Lease(lock_location(out), lease_s)
    for _ in range(3):
        try:
            lease.fs.pipe_file(lease.path, lease.body(), mode="create")
            break
        except FileExistsError:
            holder = _holder(lease.fs, lease.path)
            if _live(holder):
                refuse(out, lease.location, holder)
            lease.fs.rm_file(lease.path)  # its run is gone (or left half a record)
    else:
        refuse(out, lease.location, _holder(lease.fs, lease.path))
    lease.start()
    _HELD[out] = lease


def check_free(out: str) -> None:
    """Refuse, without taking it, a lock whose lease another run holds."""
    if out in _HELD:
        return
    fs, path = storage.filesystem(lock_location(out))
    holder = _holder(fs, path)
    if _live(holder):
        refuse(out, lock_location(out), holder)


def release(out: str) -> None:
    """Give the lock of the store at ``out`` back, if this process holds it."""
    lease = _HELD.pop(out, None)
    if lease is not None:
        lease.release()


def _holder(fs: Any, path: str) -> dict:
    """The lock object's record; ``{}`` when there is none or it cannot be parsed."""
    try:
        record = json.loads(fs.cat_file(path))
    except (FileNotFoundError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _live(holder: dict) -> bool:
    """Whether the run in a lock's record may still be writing: its lease has not ended,
    and, where it ran on this host, its process still exists."""
    expires = holder.get("expires")
    if not isinstance(expires, int | float) or expires < time.time():
        return False
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")

