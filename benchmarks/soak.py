"""Soak: repeated SIGKILLs of workers during one long run, per engine, against a clean run.

A x4 mosaic of the real Atlanta tile (``benchmarks.engine_study.scaled_archive``) is ingested
at chip 128 (225 chips); a clean run on the in-process reference engine gives the expected
maps. Per engine, ``resflow run`` then runs as a subprocess with its own cluster (Dask: two
worker processes; Spark: ``local-cluster[2,1,1024]``, two executor JVMs) while this script
SIGKILLs one worker or executor JVM once early in the run (a fixed delay after the workers
are up) and each time the chip ledger passes another share of the chips. It reports chips
written, kills, recoveries from the engine's log (Dask nanny restarts, Spark lost tasks),
wall time, and whether the output is complete and bit for bit the clean run's. Everything
binds to 127.0.0.1; every process started is killed by pid before exit. Usage::

    python -m benchmarks.soak --work-dir /tmp/soak --kills 3 --json benchmarks/results/soak.json
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import psutil
import yaml

BIN = Path(sys.executable).parent

ENGINES = {
    # (flags, how a worker process is recognised, what the engine logs when it recovers)
    "dask": (["--backend", "dask"], "spawn_main", "Restarting worker"),
    "spark": (["--backend", "spark", "--spark-master", "local-cluster[2,1,1024]"],
              "CoarseGrainedExecutorBackend", "Lost task"),
}


@dataclass
class SoakResult:
    """One engine's soak: what was killed, what the engine recovered, what came out."""

    backend: str
    chips_total: int
    chips_written: int
    kills: int
    recoveries_logged: int
    exit_code: int
    wall_s: float
    complete: bool
    identical: bool


def chips_done(out: Path) -> int:
    """Chips in the output's ledger, from its chunk files (cheap while a run writes)."""
    return sum(1 for p in out.glob("*/chip_done/c/*/*") if p.is_file())


def workers(pid: int, marker: str) -> list[psutil.Process]:
    """The run's worker processes: descendants whose command line holds ``marker``."""
    found = []
    with suppress(psutil.NoSuchProcess):
        for p in psutil.Process(pid).children(recursive=True):
            with suppress(psutil.NoSuchProcess):
                if marker in " ".join(p.cmdline()):
                    found.append(p)
    return found


@contextmanager
def started(args: list[str], log: Path) -> Iterator[subprocess.Popen]:
    """Start ``args`` in its own session; on exit SIGKILL it and every descendant by pid."""
    with log.open("w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield proc
    finally:
        with suppress(psutil.NoSuchProcess):
            family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(True)]
            for p in family:
                with suppress(psutil.NoSuchProcess):
                    p.kill()
            psutil.wait_procs(family, timeout=30)
        proc.wait(30)


def maps(out: Path) -> dict[tuple[str, str], np.ndarray]:
    """Every probability and mask array of an output store."""
    from resflow.store.writer import OutputStore

    store = OutputStore.open(out)
    return {(s, n): store.read_array(s, n)[...] for s in store.groups
            for n in ("probability", "mask")}


def prepare(workdir: Path, factor: int, chip: int) -> tuple[Path, Path, int]:
    """Ingest the mosaic and map it cleanly; returns archive, clean output, chip count."""
    from benchmarks.engine_study.scaled_archive import write_scaled_scene
    from resflow.archive import Archive
    from resflow.config import IngestConfig, RunConfig
    from resflow.graph import run_graph
    from resflow.ingestion import ingest
    from resflow.local import LocalExecutor

    archive, clean = workdir / "archive.zarr", workdir / "clean.zarr"
    if not archive.exists():
        scene = write_scaled_scene(factor, workdir / f"atlanta-x{factor}.tif")
        assert ingest([scene], archive, IngestConfig(chip=chip)).ok
    if not clean.exists():
        run_graph(RunConfig(archive=archive, out=clean, backend="local", device="cpu",
                            partition_chips=8), LocalExecutor(gpus=[], progress=False))
    return archive, clean, len(Archive.open(archive).chips())


def soak(backend: str, archive: Path, clean: Path, total: int, kills: int, workdir: Path,
         rng: random.Random) -> SoakResult:
    """One run of ``backend`` with ``kills`` worker SIGKILLs; compared with ``clean``."""
    from resflow.store.writer import OutputStore

    flags, marker, recovered = ENGINES[backend]
    out, log = workdir / f"{backend}.zarr", workdir / f"{backend}.log"
    config = workdir / "run.yaml"
    config.write_text(yaml.safe_dump({"device": "cpu", "partition_chips": 8,
                                      "dask": {"workers": 2, "dashboard_address": "127.0.0.1:0"}}))
    args = [str(BIN / "resflow"), "run", str(archive), "--out", str(out), "--config",
            str(config), *flags]
    shutil.rmtree(out, ignore_errors=True)  # the ledger polled below must be this run's
    # one kill early (a fixed delay after the workers are up), then at ledger shares
    thresholds = [round(total * (i + 1) / (kills + 1)) for i in range(kills - 1)]
    done_kills, killed = 0, set()
    start = time.perf_counter()
    with started(args, log) as proc:
        while proc.poll() is None and len(workers(proc.pid, marker)) < 2:
            time.sleep(0.2)
        time.sleep(3.0)
        while proc.poll() is None and done_kills < kills:
            due = done_kills == 0 or chips_done(out) >= thresholds[done_kills - 1]
            victims = [p for p in workers(proc.pid, marker) if p.pid not in killed]
            if due and victims:
                victim = rng.choice(victims)
                with suppress(psutil.NoSuchProcess):
                    status, name = victim.status(), victim.name()
                    victim.kill()
                    killed.add(victim.pid)
                    done_kills += 1
                    print(f"{backend}: killed {name} pid {victim.pid} ({status}) at "
                          f"{chips_done(out)}/{total} chips", flush=True)
            time.sleep(0.1)
        code = proc.wait(1800)
    wall = time.perf_counter() - start
    complete = code == 0 and OutputStore.open(out).complete
    expected = maps(clean)
    identical = complete and all(np.array_equal(a, expected[k]) for k, a in maps(out).items())
    return SoakResult(backend, total, chips_done(out), done_kills,
                      log.read_text(errors="replace").count(recovered), code, round(wall, 1),
                      complete, identical)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", dest="workdir", type=Path, required=True)
    parser.add_argument("--factor", type=int, default=4, help="mosaic size, source tiles")
    parser.add_argument("--chip", type=int, default=128)
    parser.add_argument("--kills", type=int, default=3, help="worker SIGKILLs per run")
    parser.add_argument("--backends", nargs="+", default=sorted(ENGINES), choices=ENGINES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    archive, clean, total = prepare(args.workdir, args.factor, args.chip)
    rng = random.Random(args.seed)
    results = [soak(b, archive, clean, total, args.kills, args.workdir, rng)
               for b in args.backends]
    print("| engine | chips written / total | worker kills | recoveries logged | exit | "
          "wall s | complete | identical to clean run |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r.backend} | {r.chips_written} / {r.chips_total} | {r.kills} | "
              f"{r.recoveries_logged} | {r.exit_code} | {r.wall_s} | {r.complete} | "
              f"{r.identical} |")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    if not all(r.identical for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
