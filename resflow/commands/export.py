"""``resflow export``: COGs, building footprints and a STAC Collection from a finished run."""

from __future__ import annotations

import logging
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from resflow.commands.refusals import exit_2_on_refusal

logger = logging.getLogger(__name__)


class FootprintsFormat(StrEnum):
    """The values ``--footprints-format`` accepts."""

    gpkg = "gpkg"
    fgb = "fgb"
    parquet = "parquet"
    geojson = "geojson"


def register(app: typer.Typer) -> None:
    """Add the ``export`` command to the CLI."""
    app.command("export")(export_command)


@exit_2_on_refusal
def export_command(
    out: Annotated[str, typer.Argument(  # str, not Path: an s3:// URL keeps its slashes
        metavar="OUT", help="a complete output store: a folder such as maps.zarr, or a URL")],
    cog: Annotated[Path | None, typer.Option(
        help="write two Cloud-Optimized GeoTIFFs per scene (probability, mask) here")] = None,
    footprints: Annotated[Path | None, typer.Option(
        help="write every scene's buildings to this file, in WGS 84, in the format of its "
        "suffix: .gpkg GeoPackage, .fgb FlatGeobuf, .parquet GeoParquet, .geojson GeoJSON "
        "(RFC 7946)")] = None,
    footprints_format: Annotated[FootprintsFormat | None, typer.Option(
        help="footprints format, whatever the file name (default: by suffix)",
        case_sensitive=False)] = None,
    stac: Annotated[Path | None, typer.Option(
        help="write a STAC Collection (collection.json, one Item per scene) here")] = None,
    threshold: Annotated[float | None, typer.Option(
        help="cut the stored probability again at this value in (0, 1) for the COG mask and "
        "the footprints, without inference (default: the run's own mask; the store is "
        "never changed)")] = None,
    min_building_m2: Annotated[float | None, typer.Option(
        "--min-building-m2", help="drop buildings smaller than this, m^2 on the ground: from the "
        "footprints, and from the COG mask with --threshold (default: the run's "
        "min_building_m2, else 8)")] = None,
    simplify_m: Annotated[float | None, typer.Option(
        "--simplify-m", help="simplify footprint outlines with this tolerance, metres "
        "(default: exact pixel edges)")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="replace footprints and COGs already there (default: refuse, "
        "writing nothing)")] = False,
) -> None:
    """Export OUT (a finished `resflow run`) as COGs, footprints and a STAC Collection.

    Give at least one of --cog, --footprints and --stac. Exit codes: 0 written; 2 refused
    (nothing asked for, a setting out of range, an incomplete or missing output, a file
    already there without --overwrite, a folder that cannot be written), with one line
    naming the file, the problem and the fix; a refused export writes nothing.
    """
    from resflow.export import export_run

    written = export_run(
        out, cog_dir=cog, footprints=footprints, stac_dir=stac, threshold=threshold,
        min_building_m2=min_building_m2, simplify_m=simplify_m,
        footprints_format=footprints_format.value if footprints_format else None,
        overwrite=overwrite)
    for path in written:
        typer.echo(f"wrote {path}")
