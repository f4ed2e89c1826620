"""``resflow bench``: every engine against the compute limit and a hand-written loop.

The study itself is not part of the core: it lives in :mod:`benchmarks.engine_study`
(installed with the distribution, with its own ``bench`` extra) and is imported only when the
command runs, so a core install without it still has every other command.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType
from typing import Annotated

import typer

from resflow.commands.run import DeviceChoice

logger = logging.getLogger(__name__)

#: Top-level modules the study imports that only the ``bench`` extra installs.
BENCH_EXTRA: tuple[str, ...] = ("psutil",)


def register(app: typer.Typer) -> None:
    """Add the ``bench`` command to the CLI."""
    app.command("bench")(bench_command)


def bench_command(
    quick: Annotated[bool, typer.Option(
        "--quick", help="x4 archive, no sweeps: under 10 minutes on 2 cores")] = False,
    backends: Annotated[str, typer.Option(
        help="comma-separated engines to compare side by side")] = "local,dask,spark",
    plans: Annotated[str, typer.Option(
        help="comma-separated graph plans each engine runs; the first is held to the "
        "targets")] = "fused,regrouped",
    repeats: Annotated[int, typer.Option(min=1, help="timed repetitions of everything")] = 3,
    out: Annotated[Path, typer.Option(help="folder for JSON, PNG plots and table")] = Path(
        "benchmarks/results"),
    gallery: Annotated[Path | None, typer.Option(help="model gallery (default: bundled)")] = None,
    partition_chips: Annotated[int, typer.Option(min=1, help="chips per partition")] = 16,
    batch_size: Annotated[int, typer.Option(
        min=1, help="chips per model call on CUDA, in the limit, the hand-written loop and "
        "every engine; the CPU runs one chip per call whatever it is (see resflow.stages)")] = 8,
    device: Annotated[DeviceChoice, typer.Option(
        help="where every model runs, the limit's and the hand-written loop's included: auto "
        "(a GPU when torch sees one), cpu or cuda", case_sensitive=False)] = DeviceChoice.auto,
    work_dir: Annotated[Path | None, typer.Option(
        help="keep scratch archives here (default: a temporary folder)")] = None,
) -> None:
    """Measure area rate (km^2/s) and chips/s of each engine on one archive, as fractions
    of the pure-compute limit and against a hand-written rasterio loop; scaling x1 to x8;
    sweeps of cluster shape and settings (full mode). Writes bench-<mode>.json, PNG plots
    and table-<mode>.md to OUT and prints the tables.
    """
    from resflow.config import RunConfig, load_config
    from resflow.errors import ResflowError

    try:
        study, tables = _study()
        options = study.BenchOptions(
            quick=quick, backends=_names(backends), plans=_names(plans),
            repeats=repeats, out=out, gallery=gallery, partition_chips=partition_chips,
            batch_size=batch_size, device=device.value, work_dir=work_dir)
        for plan in options.plans:  # refused before any work, naming the field
            load_config(None, RunConfig, plan=plan)
        results = study.run_benchmark(options, log=logger.info)
    except ResflowError as err:
        logger.error("%s", err)
        raise typer.Exit(2) from None
    typer.echo(tables.markdown_tables(results))
    logger.info("wrote %s/bench-%s.json, plots and table-%s.md", out, options.mode,
                options.mode, extra={"path": str(out)})


def _study() -> tuple[ModuleType, ModuleType]:
    """The study's ``study`` and ``tables`` modules, or a :class:`ResflowError` saying what
    to install when the ``benchmarks`` package or the ``bench`` extra is missing."""
    from resflow.errors import ResflowError

    try:
        from benchmarks.engine_study import study, tables
    except ModuleNotFoundError as err:
        missing = (err.name or "").split(".")[0]
        if missing == "benchmarks":
            raise ResflowError(
                "resflow bench",
                f"the benchmark package benchmarks.engine_study is not importable ({err})",
                'reinstall resflow from its repository root with the bench extra: '
                'pip install -e ".[bench]" (or make install)') from None
        if missing in BENCH_EXTRA:
            raise ResflowError(
                "resflow bench", f"the benchmarks need {missing}, which is not installed",
                'install the bench extra: pip install -e ".[bench]"') from None
        raise
    return study, tables


def _names(listing: str) -> tuple[str, ...]:
    """``"a, b,"`` -> ``("a", "b")``."""
    return tuple(name.strip() for name in listing.split(",") if name.strip())
