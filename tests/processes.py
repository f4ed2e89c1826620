"""Processes for tests: running ``resflow`` as a user would, waiting on a condition (never
a fixed sleep), and killing what a test started.

Every process here runs in its own session, bound to 127.0.0.1; every process a test starts
is killed by pid (its own tree, found with psutil) before the test ends. The one module for
this: tests import it, never each other.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import psutil

from resflow.errors import ResflowError
from resflow.store.writer import OutputStore

BIN = Path(sys.executable).parent
# no SPARK_LOCAL_IP: resflow must bind Spark to loopback by itself
LOCAL_ENV = {k: v for k, v in os.environ.items() if k != "SPARK_LOCAL_IP"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    """Whether something listens on ``127.0.0.1:port``."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def run_args(archive: Path, out: Path, config: Path, *flags: str) -> list[str]:
    """The ``resflow run`` command line."""
    return [str(BIN / "resflow"), "run", str(archive), "--out", str(out), "--config",
            str(config), *flags]


def resflow(*args: str, timeout: float = 300, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
    """Run one ``resflow`` command to its end."""
    return subprocess.run([str(BIN / "resflow"), *args], capture_output=True, text=True,
                          env=env or LOCAL_ENV, timeout=timeout)


def chips_done(out: Path) -> int:
    """Chips in the output's ledger, as ``--resume`` reads it (0 before the store exists)."""
    try:
        return len(OutputStore.open(out).done_chips())
    except (ResflowError, OSError):
        return 0


def wait_until(ready: Callable[[], bool], what: str, proc: subprocess.Popen | None = None,
               timeout: float = 240.0, interval: float = 0.1) -> None:
    """Poll ``ready`` until true; fail early if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen in {timeout:.0f} s")
        time.sleep(interval)


def tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (those still alive)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_tree(processes: list[psutil.Process]) -> None:
    """SIGKILL each process by pid, then wait for them."""
    for p in processes:
        with suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(processes, timeout=30)


@contextmanager
def started(args: list[str], log: Path, env: dict[str, str] | None = None
            ) -> Iterator[subprocess.Popen]:
    """Start ``args`` in a new session, logging to ``log``; kill its whole tree on exit.

    The run gets the default SIGINT disposition, as a terminal's foreground job does: a
    shell without job control starts background jobs with SIGINT ignored, every child
    inherits that, and Python then never turns Ctrl-C into ``KeyboardInterrupt``.
    """
    with log.open("w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                env=env or LOCAL_ENV, start_new_session=True,
                                preexec_fn=_default_sigint)
    try:
        yield proc
    finally:
        kill_tree(tree(proc.pid))
        proc.wait(30)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt(proc: subprocess.Popen) -> None:
    """Ctrl-C as a terminal sends it: SIGINT to the run's whole process group."""
    os.killpg(proc.pid, signal.SIGINT)


def maps(out: Path) -> dict[tuple[str, str], np.ndarray]:
    """Every ``probability``, ``mask`` and ``chip_bucket`` array of an output store, by
    (scene, array)."""
    store = OutputStore.open(out)
    return {(scene, name): store.read_array(scene, name)[...]
            for scene in store.groups for name in ("probability", "mask", "chip_bucket")}


def assert_identical(out: Path, reference: dict[tuple[str, str], np.ndarray]) -> None:
    """The output's maps equal the reference's bit for bit."""
    arrays = maps(out)
    assert arrays.keys() == reference.keys()
    for key, array in arrays.items():
        assert np.array_equal(array, reference[key]), f"{out}: {key} differs from a clean run"
