"""``resflow export``: COGs, building footprints and a STAC Collection from a finished run."""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Annotated

import typer

from resflow.commands.options import ConfigFile, PrintConfig, Sets, local_path, show_config
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
    store: Annotated[str, typer.Argument(  # str, not Path: an s3:// URL keeps its slashes
        metavar="STORE", help="a complete output store: a folder such as maps.zarr, or a URL")],
    cog_dir: Annotated[str | None, typer.Option(
        "--cog-dir", metavar="DIR", help="write two Cloud-Optimized GeoTIFFs per scene "
        "(probability, mask) in this local folder")] = None,
    footprints: Annotated[str | None, typer.Option(
        metavar="FILE", help="write every scene's buildings to this local file, in WGS 84, in "
        "the format of its suffix: .gpkg GeoPackage, .fgb FlatGeobuf, .parquet GeoParquet, "
        ".geojson GeoJSON (RFC 7946)")] = None,
    footprints_format: Annotated[FootprintsFormat | None, typer.Option(
        help="footprints format, whatever the file name (default: by suffix)",
        case_sensitive=False)] = None,
    stac_dir: Annotated[str | None, typer.Option(
        "--stac-dir", metavar="DIR", help="write a STAC Collection (collection.json, one Item "
        "per scene) in this local folder")] = None,
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
    config: ConfigFile = None,
    sets: Sets = None,
    print_config: PrintConfig = False,
) -> None:
    """Export STORE (a finished `resflow run`) as COGs, footprints and a STAC Collection.

    Give at least one of --cog-dir, --footprints and --stac-dir. Settings (threshold,
    min_building_m2, simplify_m, footprints_format, overwrite) come from their defaults,
    then --config, then each --set, then the other flags. Exit codes: 0 written; 2 refused
    (nothing asked for, a setting out of range, an incomplete or missing output, a file
    already there without --overwrite, a folder that cannot be written), with one line
    naming the file, the problem and the fix; a refused export writes nothing.
    """
    from resflow.config import load_config
    from resflow.exports import export_run
    from resflow.exports.settings import ExportConfig

    settings = load_config(
        config, ExportConfig, sets=sets or (), threshold=threshold,
        min_building_m2=min_building_m2, simplify_m=simplify_m,
        footprints_format=footprints_format.value if footprints_format else None,
        overwrite=overwrite or None)
    if print_config:
        show_config(settings)
        return
    fix = "export to a local folder, then copy the files (e.g. aws s3 cp --recursive)"
    written = export_run(
        store, cog_dir=local_path("--cog-dir", cog_dir, fix),
        footprints=local_path("--footprints", footprints, fix),
        stac_dir=local_path("--stac-dir", stac_dir, fix), **settings.model_dump())
    for path in written:
        typer.echo(f"wrote {path}")
