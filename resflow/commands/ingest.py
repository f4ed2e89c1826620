"""``resflow ingest``: rasters (files or folders) into one Zarr imagery archive."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from resflow.commands.options import ConfigFile, PrintConfig, Sets, show_config
from resflow.commands.refusals import exit_2_on_refusal

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from resflow.config import IngestConfig
    from resflow.ingestion import IngestResult


def register(app: typer.Typer) -> None:
    """Add the ``ingest`` command to the CLI."""
    app.command("ingest")(ingest_command)


@exit_2_on_refusal
def ingest_command(
    sources: Annotated[list[str], typer.Argument(
        help="raster files or folders of rasters, URLs of objects or prefixes (s3://...), or "
        "STAC files (.json) naming them")],
    out: Annotated[str, typer.Option(
        "--out", "-o", help="the archive, e.g. archive.zarr or s3://bucket/archive.zarr")],
    chip: Annotated[int | None, typer.Option(help="chip edge in pixels (default 256)")] = None,
    workers: Annotated[int | None, typer.Option(help="scenes in parallel (default 2)")] = None,
    rgb: Annotated[str | None, typer.Option(
        help="band numbers (from 1) feeding R,G,B for every source, e.g. 3,2,1 "
        "(default: by band names, else pan x3, else bands 1,2,3; never an alpha band)")] = None,
    gsd: Annotated[str | None, typer.Option(
        help="working ground resolution in metres every scene is resampled to, or 'native' "
        "to keep each scene's own (default 0.3, the bundled gallery's; use your gallery's)"
    )] = None,
    asset: Annotated[str | None, typer.Option(
        help="for STAC sources (a catalogue, collection or ItemCollection .json): the asset "
        "key to ingest, e.g. visual (default: every GeoTIFF data asset)")] = None,
    stac_web: Annotated[bool | None, typer.Option(
        "--stac-web", help="fetch the http(s) addresses a STAC catalogue names (default: "
        "refused; link-local and cloud metadata addresses always are)")] = None,
    stac_outside: Annotated[bool | None, typer.Option(
        "--stac-outside", help="follow a local STAC catalogue's hrefs that lead out of its "
        "folder (default: refused)")] = None,
    config: ConfigFile = None,
    sets: Sets = None,
    print_config: PrintConfig = False,
) -> None:
    """Ingest GDAL rasters into ARCHIVE.zarr, one group per scene, chunked on the chip grid.

    Settings come from the ingest defaults, then --config, then each --set, then the other
    flags. Exit code 0 when every input was ingested (or with --print-config), 1 when some
    were refused (listed on stderr and in `resflow info`), 2 when nothing could be done.
    """
    from resflow import storage
    from resflow.ingestion import ingest

    try:
        settings = ingest_settings(config, sets, chip=chip, workers=workers, gsd=gsd,
                                   asset=asset, stac_web=stac_web, stac_outside=stac_outside)
        bands = band_indices(rgb)
        if print_config:
            show_config(settings)
            return
        result = ingest(sources, out, settings, rgb=bands, progress=True)
    except KeyboardInterrupt:
        kept = (f"{storage.display(out)} keeps the scenes finished so far; the same command "
                "finishes it" if storage.exists(storage.normalise(out)) else "nothing was kept")
        logger.error("interrupted: %s", kept)
        raise typer.Exit(130) from None
    report_refusals(result)
    removed = f"; nothing was ingested, so {out} was not kept" if result.removed else ""
    typer.echo(f"{out}: {len(result.ingested)} ingested, {len(result.skipped)} unchanged, "
               f"{len(result.refused)} refused{removed}", file=sys.stdout)
    if result.refused:
        raise typer.Exit(1 if result.ingested or result.skipped else 2)


def ingest_settings(config: str | None, sets: list[str] | None, *, chip: int | None,
                    workers: int | None, gsd: str | None, asset: str | None,
                    stac_web: bool | None = None,
                    stac_outside: bool | None = None) -> IngestConfig:
    """The ingest settings from ``--config``, ``--set`` and the ingest flags, ``--gsd``
    taking metres or ``native`` (:func:`resflow.config.load_config`).

    Raises
    ------
    ConfigError
        naming the flag or field at fault.
    """
    from resflow.config import IngestConfig, load_config
    from resflow.errors import ConfigError

    overrides: dict[str, Any] = {"chip": chip, "workers": workers, "stac_asset": asset,
                                 "stac_web": stac_web, "stac_outside": stac_outside}
    if gsd is not None and gsd != "native":
        try:
            overrides["gsd"] = float(gsd)
        except ValueError:
            raise ConfigError("--gsd", f"'{gsd}' is neither metres nor 'native'",
                              "write e.g. --gsd 0.5 or --gsd native") from None
    settings = load_config(config, IngestConfig, sets=sets or (), **overrides)
    if gsd == "native":  # an explicit null beats the file's value and --set's
        settings = settings.model_copy(update={"gsd": None})
    return settings


def report_refusals(result: IngestResult) -> None:
    """Say on stderr which inputs were refused and which scenes will never be mapped."""
    for record in result.refused:
        logger.warning("refused: %s: %s. Fix: %s.", record["where"], record["problem"],
                       record["fix"], extra={"source": record.get("source")})
    for record in result.too_coarse:
        logger.warning("skipped: %s: %s; kept in the archive, never mapped", record["name"],
                       record["reason"], extra={"scene": record["name"]})


def band_indices(rgb: str | None) -> list[int] | None:
    """``--rgb 3,2,1`` as the 0-based band indices :func:`resflow.ingestion.ingest` takes.

    Raises
    ------
    ConfigError
        naming ``--rgb``, unless it is three whole numbers of at least 1.

    Examples
    --------
    >>> band_indices("3,2,1"), band_indices(None)
    ([2, 1, 0], None)
    """
    from resflow.errors import ConfigError

    if rgb is None:
        return None
    try:
        numbers = [int(b) for b in rgb.split(",")]
    except ValueError:
        numbers = []
    if len(numbers) != 3 or min(numbers) < 1:
        raise ConfigError("--rgb", f"'{rgb}' is not three band numbers counted from 1",
                          "write three 1-based numbers, e.g. --rgb 3,2,1")
    return [b - 1 for b in numbers]
