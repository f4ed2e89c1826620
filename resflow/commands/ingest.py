"""``resflow ingest``: rasters (files or folders) into one Zarr imagery archive."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the ``ingest`` command to the CLI."""
    app.command("ingest")(ingest_command)


def ingest_command(
    sources: Annotated[list[str], typer.Argument(
        help="raster files or folders of rasters, URLs of objects or prefixes (s3://...), or "
        "STAC files (.json) naming them")],
    out: Annotated[str, typer.Option(
        "--out", "-o", help="the archive, e.g. archive.zarr or s3://bucket/archive.zarr")],
    chip: Annotated[int | None, typer.Option(help="chip edge in pixels (default 256)")] = None,
    workers: Annotated[int | None, typer.Option(help="scenes in parallel (default 2)")] = None,
    rgb: Annotated[str | None, typer.Option(
        help="1-based bands feeding R,G,B for every source, e.g. 3,2,1 "
        "(default: by band names, else pan x3, else bands 1,2,3)")] = None,
    gsd: Annotated[str | None, typer.Option(
        help="working ground resolution in metres every scene is resampled to, or 'native' "
        "to keep each scene's own (default 0.5, the bundled gallery's; use your gallery's)"
    )] = None,
    asset: Annotated[str | None, typer.Option(
        help="for STAC sources (a catalogue, collection or ItemCollection .json): the asset "
        "key to ingest, e.g. visual (default: every GeoTIFF data asset)")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file of ingest settings")] = None,
) -> None:
    """Ingest GDAL rasters into ARCHIVE.zarr, one group per scene, chunked on the chip grid.

    Exit code 0 when every input was ingested, 1 when some were refused (listed on stderr
    and in `resflow info`), 2 when nothing could be done.
    """
    from resflow.config import IngestConfig, load_config
    from resflow.errors import ConfigError, ResflowError
    from resflow.ingest import ingest

    try:
        overrides = {"chip": chip, "workers": workers, "stac_asset": asset}
        if gsd is not None:
            try:
                overrides["gsd"] = None if gsd == "native" else float(gsd)
            except ValueError:
                raise ConfigError("--gsd", f"'{gsd}' is neither metres nor 'native'",
                                  "write e.g. --gsd 0.5 or --gsd native") from None
        settings = load_config(config, IngestConfig, **overrides)
        if gsd == "native":  # an explicit null beats the file's value
            settings = settings.model_copy(update={"gsd": None})
        bands = None
        if rgb is not None:
            try:
                bands = [int(b) - 1 for b in rgb.split(",")]
            except ValueError:
                raise ConfigError("--rgb", f"'{rgb}' is not three band numbers",
                                  "write three 1-based numbers, e.g. --rgb 3,2,1") from None
        result = ingest(sources, out, settings, rgb=bands, progress=True)
    except ResflowError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    for record in result.refused:
        typer.echo(f"refused: {record['where']}: {record['problem']}. Fix: {record['fix']}.",
                   err=True)
    for record in result.too_coarse:
        typer.echo(f"skipped: {record['name']}: {record['reason']}; kept in the archive, "
                   "never mapped", err=True)
    typer.echo(f"{out}: {len(result.ingested)} ingested, {len(result.skipped)} unchanged, "
               f"{len(result.refused)} refused", file=sys.stdout)
    if result.refused:
        raise typer.Exit(1 if result.ingested or result.skipped else 2)
