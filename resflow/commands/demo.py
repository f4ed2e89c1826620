"""``resflow demo``: the whole job on the bundled real imagery, in one command.

It is what ``make demo`` runs on a fresh machine: ingest every bundled raster sample into an
archive, describe it, map buildings on the default engine (its dashboard link, if it has
one, is printed), and write Cloud-Optimized GeoTIFFs, footprints and a quicklook PNG of the
labelled Atlanta scene. Each step is the same code path as its own command, and the engines'
flags are those of ``resflow run``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from resflow.commands.options import (
    Backend,
    ConfigFile,
    PrintConfig,
    Sets,
    local_path,
    resolve_run_config,
)
from resflow.commands.refusals import exit_2_on_refusal
from resflow.commands.run import with_engine_flags

logger = logging.getLogger(__name__)

#: The scene shown in the quicklook: the SpaceNet Atlanta tile, the one with buildings labelled.
QUICKLOOK_SCENE = "sample_geotiff"


def register(app: typer.Typer) -> None:
    """Add the ``demo`` command to the CLI."""
    app.command("demo")(with_engine_flags(demo_command))


@exit_2_on_refusal
def demo_command(
    out: Annotated[str, typer.Option(
        "--out", "-o", help="local folder for the archive, the maps and their exports")
    ] = "demo-output",
    backend: Backend = None,
    config: ConfigFile = None,
    sets: Sets = None,
    print_config: PrintConfig = False,
    engine_settings: dict[str, Any] | None = None,  # what the engines' flags set, dotted
) -> None:
    """Ingest the bundled samples, map their buildings, export COGs, footprints, a quicklook.

    The mapping step's settings are a run config, resolved as for `resflow run` (--config,
    then --set, then the flags); the demo sets the archive, the output and its exports, all
    in OUT.
    """
    from resflow.commands.info import info_command
    from resflow.commands.run import execute_run
    from resflow.ingestion import ingest
    from resflow.samples import list_samples

    folder = local_path("--out", out, "give a local folder")
    archive, maps = folder / "samples.zarr", folder / "buildings.zarr"
    settings = resolve_run_config(
        config, sets, print_config, archive=archive, out=maps, backend=backend,
        overwrite=True, cog_dir=folder / "cog", footprints=folder / "buildings.geojson",
        **(engine_settings or {}))
    if settings is None:
        return
    rasters = [s.path for s in list_samples("raster")]
    typer.echo(f"[1/3] ingesting {len(rasters)} bundled sample rasters -> {archive}")
    result = ingest(rasters, archive, progress=True)
    if not result.ok:
        for record in result.refused:
            logger.warning("refused: %s: %s", record["where"], record["problem"])
        raise typer.Exit(1)
    for record in result.too_coarse:
        logger.warning("skipped: %s: %s", record["name"], record["reason"])
    info_command(str(archive), as_json=False)

    typer.echo(f"[2/3] mapping buildings on the {settings.backend} backend -> {maps}")
    execute_run(settings)

    typer.echo("[3/3] quicklook of the labelled SpaceNet Atlanta scene")
    png = _quicklook(archive, maps, folder / f"quicklook_{QUICKLOOK_SCENE}.png")
    typer.echo(f"wrote {png}")


def _quicklook(archive_path: Path, out: Path, png: Path) -> Path:
    from resflow.archive import Archive
    from resflow.exports import quicklook

    return quicklook(out, Archive.open(archive_path), QUICKLOOK_SCENE, png)
