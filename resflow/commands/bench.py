"""``resflow bench``: every engine against the compute limit and a hand-written loop.

The study lives in the repository's ``benchmarks/`` folder (:mod:`benchmarks.engine_study`,
with its own ``bench`` extra), which never ships in the wheel: benchmarks are not part of
the product. The command imports it only when it runs, from a checkout: one already on
``sys.path``, the source tree of an editable install, or the working directory. An
installed wheel has no studies, and the command says how to get them.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import Annotated

import typer

from resflow.commands.options import BACKEND_METAVAR, PlanName, local_path, parse_backend
from resflow.commands.refusals import exit_2_on_refusal
from resflow.commands.run import DeviceChoice

logger = logging.getLogger(__name__)

#: Top-level modules the study imports that only the ``bench`` extra installs.
BENCH_EXTRA: tuple[str, ...] = ("psutil",)
#: The study's package, relative to the root of a resflow checkout.
STUDY_PACKAGE = Path("benchmarks", "engine_study", "__init__.py")


def register(app: typer.Typer) -> None:
    """Add the ``bench`` command to the CLI."""
    app.command("bench")(bench_command)


@exit_2_on_refusal
def bench_command(
    quick: Annotated[bool, typer.Option(
        "--quick", help="x4 archive, no sweeps: about 30 minutes on 2 cores")] = False,
    backend: Annotated[list[str] | None, typer.Option(
        parser=parse_backend, metavar=BACKEND_METAVAR,
        help="an engine to compare side by side (repeatable; default: local, dask and "
        "spark)")] = None,
    plan: Annotated[list[PlanName] | None, typer.Option(
        help="a graph plan each engine runs (repeatable; default: fused and regrouped); the "
        "first is held to the targets")] = None,
    repeats: Annotated[int, typer.Option(min=1, help="timed repetitions of everything")] = 3,
    out: Annotated[str, typer.Option(
        "--out", "-o", help="local folder for JSON, PNG plots and table")
    ] = "benchmarks/results",
    gallery: Annotated[str | None, typer.Option(
        help="model gallery: a folder or a URL (default: bundled)")] = None,
    partition_chips: Annotated[int, typer.Option(min=1, help="chips per partition")] = 16,
    batch_size: Annotated[int, typer.Option(
        min=1, help="chips per model call on CUDA, in the limit, the hand-written loop and "
        "every engine; the CPU runs one chip per call whatever it is (see resflow.stages)")] = 8,
    device: Annotated[DeviceChoice, typer.Option(
        help="where every model runs, the limit's and the hand-written loop's included: auto "
        "(a GPU when torch sees one), cpu or cuda", case_sensitive=False)] = DeviceChoice.auto,
    work_dir: Annotated[str | None, typer.Option(
        help="keep scratch archives in this local folder (default: a temporary folder)")
    ] = None,
) -> None:
    """Measure area rate (km^2/s) and chips/s of each engine on one archive, as fractions
    of the pure-compute limit and against a hand-written rasterio loop; scaling x1 to x8;
    sweeps of cluster shape and settings (full mode). Writes bench-<mode>.json, PNG plots
    and table-<mode>.md to OUT and prints the tables.
    """
    study, tables = _study()
    fix = "give a local folder"
    results_dir = local_path("--out", out, fix)
    # engines and plans left out: the study's defaults
    chosen = {"backends": tuple(backend or ()), "plans": tuple(p.value for p in plan or ())}
    options = study.BenchOptions(
        quick=quick, repeats=repeats, out=results_dir, gallery=_gallery_folder(gallery),
        partition_chips=partition_chips, batch_size=batch_size, device=device.value,
        work_dir=local_path("--work-dir", work_dir, fix),
        **{field: names for field, names in chosen.items() if names})
    results = study.run_benchmark(options, log=logger.info)
    typer.echo(tables.markdown_tables(results))
    logger.info("wrote %s/bench-%s.json, plots and table-%s.md", results_dir, options.mode,
                options.mode, extra={"path": str(results_dir)})


def _gallery_folder(location: str | None) -> Path | None:
    """The gallery's local folder (a URL's verified local copy), or ``None`` for the bundled
    one: the studies load galleries from local disk."""
    if location is None:
        return None
    from resflow.inference.caches import gallery_folder

    return gallery_folder(location)


def _study() -> tuple[ModuleType, ModuleType]:
    """The study's ``study`` and ``tables`` modules, or a :class:`ResflowError` saying how
    to get them when no checkout holds ``benchmarks`` or the ``bench`` extra is missing."""
    from resflow.errors import ResflowError

    try:
        return _import_study()
    except ModuleNotFoundError as err:
        missing = (err.name or "").split(".")[0]
        if missing == "benchmarks" and (root := checkout_root()) is not None:
            sys.path.insert(0, str(root))
            return _study()
        if missing == "benchmarks":
            raise ResflowError(
                "resflow bench",
                "the benchmark studies (benchmarks.engine_study) ship only with the "
                "repository, not with the installed package",
                "clone the resflow repository and run `make bench` from its root") from None
        if missing in BENCH_EXTRA:
            raise ResflowError(
                "resflow bench", f"the benchmarks need {missing}, which is not installed",
                'install the bench extra: pip install -e ".[bench]"') from None
        raise


def _import_study() -> tuple[ModuleType, ModuleType]:
    """The import alone, so that :func:`_study` can try it again once a checkout is on
    ``sys.path``."""
    from benchmarks.engine_study import study, tables

    return study, tables


def checkout_root() -> Path | None:
    """The resflow checkout whose ``benchmarks/`` the command runs, not yet on ``sys.path``:
    the source tree of an editable install (the studies of the code that runs), else the
    working directory; ``None`` for an installed wheel run outside a checkout."""
    import resflow

    on_path = {Path(entry or ".").resolve() for entry in sys.path}
    for root in (Path(resflow.__file__).parent.parent, Path.cwd()):
        if (root / STUDY_PACKAGE).is_file() and root.resolve() not in on_path:
            return root
    return None
