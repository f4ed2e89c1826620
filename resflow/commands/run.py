"""``resflow run``: an imagery archive through the three-stage graph into georeferenced maps."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer


class DeviceChoice(StrEnum):
    """The values ``--device`` accepts (typer refuses anything else before any work)."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def register(app: typer.Typer) -> None:
    """Add the ``run`` command to the CLI."""
    app.command("run")(run_command)


def run_command(
    archive: Annotated[Path, typer.Argument(help="the imagery archive (from `resflow ingest`)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="the output store, e.g. maps.zarr")],
    gallery: Annotated[Path | None, typer.Option(help="model gallery (default: bundled)")] = None,
    backend: Annotated[str | None, typer.Option(help="local, dask or spark (default dask)")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file of run settings")] = None,
    scheduler_address: Annotated[str | None, typer.Option(
        help="join a running Dask cluster, e.g. tcp://127.0.0.1:8786")] = None,
    spark_master: Annotated[str | None, typer.Option(
        help="Spark master URL, e.g. spark://127.0.0.1:7077 or local-cluster[2,1,1024]")] = None,
    workers: Annotated[int | None, typer.Option(
        help="embedded cluster size: Dask worker processes, or N in Spark's local[N]")] = None,
    batch_size: Annotated[int | None, typer.Option(help="chips per model call on GPU")] = None,
    device: Annotated[DeviceChoice | None, typer.Option(
        help="where models run: auto (a GPU when torch sees one), cpu or cuda (default auto)",
        case_sensitive=False)] = None,
    threshold: Annotated[float | None, typer.Option(
        help="probability above which a pixel is building (default 0.5)")] = None,
    min_building_m2: Annotated[float | None, typer.Option(
        "--min-building-m2", help="drop smaller groups of building pixels from the mask, "
        "m^2 on the ground (default 8; 0 keeps all)")] = None,
    plan: Annotated[str | None, typer.Option(
        help="fused (default): stages 1-3 per partition in one task; regrouped: regroup by "
        "bucket before stage 3 (RESFlow's shape). Same maps")] = None,
    cog: Annotated[Path | None, typer.Option(help="also write one COG per scene here")] = None,
    footprints: Annotated[Path | None, typer.Option(
        help="also write building footprints to this GeoJSON")] = None,
    resume: Annotated[bool, typer.Option(help="finish an interrupted output")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output")] = False,
) -> None:
    """Segment buildings in every scene of ARCHIVE and write OUT.zarr (same grids and CRS).

    Flags override the YAML file. Ends with one summary line. Exit codes: 0 on success (or
    when a resumed output is already complete); 1 when the run finished but some inputs or
    chips failed (listed in the run report); 2 when the run was refused before any work, or
    failed; 130 when interrupted (Ctrl-C), after saying how to resume.
    """
    from resflow.config import RunConfig, load_config
    from resflow.errors import ResflowError
    from resflow.graph import run_graph
    from resflow.interrupts import progress_line, sigterm_as_interrupt, stop_message
    from resflow.outputs import OutputComplete
    from resflow.plugins import load_backend
    from resflow.preflight import check_run

    try:
        settings: RunConfig = load_config(
            config, RunConfig, archive=archive, out=out, gallery=gallery, backend=backend,
            batch_size=batch_size, device=device.value if device else None,
            threshold=threshold, min_building_m2=min_building_m2,
            plan=plan, cog_dir=cog, footprints=footprints,
            resume=resume or None, overwrite=overwrite or None,
            **{"dask.scheduler_address": scheduler_address, "dask.workers": workers,
               "spark.master": spark_master or (f"local[{workers}]" if workers else None)},
        )
        executor_class = load_backend(settings.backend)
        if check_run(settings) == "resume":
            typer.echo(progress_line(out, "resuming"), err=True)
        with sigterm_as_interrupt(), executor_class.from_config(settings) as executor:
            if executor.dashboard_link:
                typer.echo(f"{settings.backend} dashboard: {executor.dashboard_link}", err=True)
            result = run_graph(settings, executor)
    except OutputComplete as done:
        typer.echo(f"nothing to do: {done}")
        return
    except ResflowError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo(f"interrupted: {stop_message(out)}", err=True)
        raise typer.Exit(130) from None
    except Exception as exc:  # an engine gave up (e.g. too many lost workers)
        typer.echo(f"error: the run failed ({exc.__class__.__name__}: {exc}); "
                   f"{stop_message(out)}", err=True)
        raise typer.Exit(2) from None
    for path in result.exports:
        typer.echo(f"wrote {path}", err=True)
    for error in result.report.errors:
        typer.echo(f"input error: {error['where']}: {error['problem']}. Fix: {error['fix']}.",
                   err=True)
    typer.echo(result.report.summary_line())
    if result.report.errors:
        raise typer.Exit(1)
