"""The GPU check: resflow's stages and engines on one CUDA GPU, measured and set against the CPU.

``wheels`` downloads and packs what the host lacks (:mod:`benchmarks.gpu_check.pack`);
``archive`` ingests the carried archive (:mod:`benchmarks.gpu_check.archive`); ``run`` is
the check (:mod:`benchmarks.gpu_check.check`), ``--device cpu`` rehearsing it anywhere.
Exit codes: 0 when everything worked, 1 when a step or a run failed, 2 when the device
cannot be used.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from benchmarks.gpu_check.archive import archive_command
from benchmarks.gpu_check.check import run_check
from benchmarks.gpu_check.options import CHECK_DIR, QUICK, CheckOptions
from benchmarks.gpu_check.pack import wheels_command
from benchmarks.gpu_check.report import check_failed, markdown
from benchmarks.gpu_check.wheels import HOST_PYTHON


def run_command(args: argparse.Namespace) -> int:
    """``run``: the check; 0 when every step and engine run finished, 1 otherwise, 2 when
    the device cannot be used."""
    defaults = {**asdict(CheckOptions(archive=args.archive, out=args.out)),
                **(QUICK if args.quick else {})}
    given = {key: value for key, value in vars(args).items()
             if key in defaults and value is not None}
    options = CheckOptions(**(defaults | given))
    summary = run_check(options, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(markdown(summary))
    print(f"wrote {options.out / 'gpu-check.json'} and gpu-check.md", file=sys.stderr)
    if summary["steps"]["device"]["status"] != "ok":
        return 2
    return 1 if check_failed(summary) else 0


def _sizes(listing: str) -> tuple[int, ...]:
    return tuple(int(n) for n in listing.split(",") if n.strip())


def _names(listing: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in listing.split(",") if n.strip())


def parser() -> argparse.ArgumentParser:
    """The command line: ``wheels``, ``archive`` and ``run``."""
    top = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check",
                                  description=__doc__.split("\n\n")[0])
    commands = top.add_subparsers(dest="command", required=True)

    wheels = commands.add_parser(
        "wheels", help="download the wheels the GPU host lacks, split them and the archive "
        "into parts that each travel with the repository")
    wheels.add_argument("--out", type=Path, default=CHECK_DIR / "wheels",
                        help="replaced by part1, part2, ... folders")
    wheels.add_argument("--archive", type=Path, default=CHECK_DIR / "archive",
                        help="the archive folder (from `archive`), packed with the wheels")
    wheels.add_argument("--python-version", default=HOST_PYTHON,
                        help="the host's Python, major.minor")
    wheels.set_defaults(handler=wheels_command)

    archive = commands.add_parser("archive", help="ingest the archive the check carries")
    archive.add_argument("--out", type=Path, default=CHECK_DIR / "archive")
    archive.add_argument("--factor", type=int, default=1,
                         help="Atlanta tiles in the mosaic (1: 36 chips, 3 MiB; 2: 72 chips, "
                         "6 MiB; 4: 144 chips, 12 MiB)")
    archive.add_argument("--chip", type=int, default=256, help="chip edge, pixels")
    archive.set_defaults(handler=archive_command)

    run = commands.add_parser("run", help="the check itself")
    run.add_argument("--archive", type=Path, default=CHECK_DIR / "archive",
                     help="an archive, or the folder holding one")
    run.add_argument("--out", type=Path,
                     default=Path(os.environ.get("OUT") or CHECK_DIR / "results"),
                     help="results folder (default: $OUT, else gpu-check/results)")
    run.add_argument("--logs", type=Path, help="engine logs, nvidia-smi samples "
                     "(default: gpu-check/logs)")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cuda")
    run.add_argument("--quick", action="store_true",
                     help="batch sizes 1,4,8, 8 chips compared, 32 per sweep pass, one run "
                     "each, a large run of 72 chips: a rehearsal of a few minutes on 2 CPU "
                     "cores")
    run.add_argument("--gallery", type=Path, help="model gallery (default: bundled)")
    run.add_argument("--batch-sizes", dest="batch_sizes", type=_sizes)
    run.add_argument("--compare-chips", dest="compare_chips", type=int)
    run.add_argument("--sweep-chips", dest="sweep_chips", type=int)
    run.add_argument("--repeats", type=int)
    run.add_argument("--engines", type=_names, help="comma-separated: local,dask,spark")
    run.add_argument("--engine-batch-size", dest="engine_batch_size", type=int)
    run.add_argument("--workers", type=int, help="Dask workers, Spark local[N]")
    run.add_argument("--halo", type=int, help="context pixels around each prediction window "
                     "(default: the graph's)")
    run.add_argument("--window", type=int, help="chips per side of a prediction window "
                     "(default: the graph's)")
    run.add_argument("--run-timeout-s", dest="run_timeout_s", type=float)
    run.add_argument("--large-run-chips", dest="large_run_chips", type=int,
                     help="one Dask run over the archive replicated to this many chips "
                     "(0: none)")
    run.set_defaults(handler=run_command)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns its exit code."""
    args = parser().parse_args(argv)
    return args.handler(args)
