"""Worker loss: SIGKILL the Dask workers or Spark Python workers part-way; the run still ends.

``resflow run`` runs as a subprocess with its own embedded cluster (two Dask worker processes,
or Spark ``local[2]``). Once the ledger shows chips written, both workers are killed with
SIGKILL (one of them may be between tasks, and Spark replaces a Python worker killed while
idle without a word): Dask's nanny restarts them and the scheduler recomputes what they held;
Spark retries the lost task (``local[2]`` runs as ``local[2,4]``: local mode retries only when
told in the master URL) in a fresh Python worker. The output must be complete, hold every
chip once, and equal a clean run's maps bit for bit. The same runs check that everything they
listen on is bound to the loopback interface. Killing whole executor JVMs
(``local-cluster``), again and again, is the soak's job (``benchmarks/soak.py``), too slow
for CI.
"""

from __future__ import annotations

import ipaddress
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from resflow.archive import Archive
from resflow.store.writer import OutputStore
from tests.processes import (
    assert_identical,
    chips_done,
    run_args,
    started,
    tree,
    wait_until,
)

pytestmark = pytest.mark.slow  # whole runs in subprocesses, killed and recovered

VICTIMS = {
    # Dask's nanny runs each worker as a multiprocessing child of the driver
    "dask": ("spawn_main", ["--backend", "dask", "--set", "dask.workers=2"]),
    # Spark's Python workers are forked by resflow's daemon process, one per task slot
    "spark": ("resflow_spark.daemon", ["--backend", "spark", "--spark-master", "local[2]"]),
}
RECOVERED = {"dask": "Restarting worker", "spark": "Lost task"}
"""What each engine logs when it recovers from the kill: proof the kill hit the run. Spark logs
``Lost task`` for every failed attempt it retries, whichever way the dead worker's socket broke
(``Python worker exited unexpectedly`` on a read, a reset or broken pipe on a write)."""


def _victims(pid: int, marker: str) -> list[psutil.Process]:
    """Worker processes of the run: Dask workers, or the children of Spark's Python daemon."""
    found = []
    for p in tree(pid)[1:]:
        try:
            if marker in " ".join(p.cmdline()) and marker in " ".join(p.parent().cmdline()):
                found.append(p)  # a forked Python worker shares its daemon's command line
            elif marker == "spawn_main" and marker in " ".join(p.cmdline()):
                found.append(p)
        except (psutil.NoSuchProcess, AttributeError):
            continue
    return found


def _kill_until_recovered(proc: subprocess.Popen, marker: str, log: Path, recovered: str,
                          out: Path, tries: int = 5) -> int:
    """Kill every worker of the run, again if the engine did not log a recovery (both may
    have been between tasks, where a kill costs the engine nothing to notice); returns the
    chips written at the first kill."""
    killed_at = chips_done(out)
    for _ in range(tries):
        for victim in _victims(proc.pid, marker):  # both: one of them is mid-task
            victim.kill()
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and proc.poll() is None:
            if recovered in log.read_text():
                return killed_at
            time.sleep(0.1)
        if proc.poll() is not None:
            break
        wait_until(lambda: len(_victims(proc.pid, marker)) == 2, "two workers again", proc)
    return killed_at


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _listening(pid: int) -> set[str]:
    """Addresses the run's processes listen on (TCP)."""
    addresses = set()
    for p in tree(pid):
        try:
            for conn in p.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    addresses.add(conn.laddr.ip)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return addresses


@pytest.mark.parametrize("backend", sorted(VICTIMS))
def test_a_killed_worker_costs_nothing(backend: str, small_archive: Path, run_config_file: Path,
                                       reference_maps, tmp_path: Path) -> None:
    marker, flags = VICTIMS[backend]
    total = len(Archive.open(small_archive).chips())
    out = tmp_path / "maps.zarr"
    log = tmp_path / "run.log"
    with started(run_args(small_archive, out, run_config_file, *flags), log) as proc:
        wait_until(lambda: len(_victims(proc.pid, marker)) == 2, "two workers", proc)
        wait_until(lambda: chips_done(out) >= 1, "a first chip", proc, interval=0.05)
        bound = _listening(proc.pid)
        killed_at = _kill_until_recovered(proc, marker, log, RECOVERED[backend], out)
        assert proc.wait(300) == 0, log.read_text()[-3000:]
    assert killed_at < total, "the run ended before a worker could be killed"
    assert bound and all(map(_loopback, bound)), f"listening beyond localhost: {bound}"
    store = OutputStore.open(out)
    assert store.complete and len(store.done_chips()) == total
    text = log.read_text()
    assert RECOVERED[backend] in text, f"no recovery after {killed_at} chips:\n{text[-3000:]}"
    assert f"resflow: {total} chips" in text.strip().splitlines()[-1]
    assert_identical(out, reference_maps)
