"""``resflow predict``: rasters to building maps, COGs, footprints and STAC in one folder.

The command is ``resflow ingest`` then ``resflow run`` with its exports, in one folder
(:mod:`resflow.prediction`): it takes ingest's sources and band flags, and every flag of
``run`` but those that place files, which the folder's layout fixes. Run's flags are taken
from ``run`` itself (:func:`with_run_flags`), so the two commands never drift apart.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Annotated, Any

import typer

from resflow.commands.refusals import exit_2_on_refusal

logger = logging.getLogger(__name__)

PLACED = frozenset({"archive", "out", "cog_dir", "footprints", "stac", "stac_dir"})
"""``run``'s parameters that predict sets itself: the archive and what the folder holds."""


def register(app: typer.Typer) -> None:
    """Add the ``predict`` command to the CLI."""
    from resflow.commands.run import with_engine_flags

    app.command("predict")(with_engine_flags(with_run_flags(predict_command)))


def with_run_flags(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` with ``run``'s flags but :data:`PLACED` after its own parameters, passed
    to it as keyword arguments named as ``run``'s parameters."""
    from resflow.commands.run import run_command

    own = inspect.signature(command, eval_str=True)
    added = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
             for name, p in inspect.signature(run_command, eval_str=True).parameters.items()
             if name not in PLACED and name != "engine_settings"]
    kept = [p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]

    @functools.wraps(command)
    def with_flags(**given: Any) -> None:
        command(**given)

    with_flags.__signature__ = own.replace(  # type: ignore[attr-defined]
        parameters=[*kept, *added])
    return with_flags


@exit_2_on_refusal
def predict_command(
    sources: Annotated[list[str], typer.Argument(
        metavar="SRC", help="raster files or folders of rasters, URLs of objects or "
        "prefixes (s3://...), or STAC files (.json) naming them, as `resflow ingest` takes")],
    out: Annotated[str, typer.Option(
        "--out", "-o", help="the folder: maps.zarr, cogs/, footprints.gpkg and stac/ go "
        "here")],
    keep_archive: Annotated[bool, typer.Option(
        "--keep-archive", help="keep the ingested imagery as OUT/archive.zarr (default: "
        "removed once every chip is mapped)")] = False,
    rgb: Annotated[str | None, typer.Option(
        help="band numbers (from 1) feeding R,G,B, as `resflow ingest --rgb`")] = None,
    gsd: Annotated[str | None, typer.Option(
        help="working ground resolution in metres, or 'native', as `resflow ingest --gsd` "
        "(default 0.3, the bundled gallery's)")] = None,
    chip: Annotated[int | None, typer.Option(help="chip edge in pixels (default 256)")] = None,
    asset: Annotated[str | None, typer.Option(
        help="for STAC sources: the asset key to ingest (default: every GeoTIFF data asset)")
    ] = None,
    stac_web: Annotated[bool, typer.Option(
        "--stac-web", help="fetch the http(s) addresses a STAC catalogue names, as `resflow "
        "ingest --stac-web`")] = False,
    stac_outside: Annotated[bool, typer.Option(
        "--stac-outside", help="follow a local STAC catalogue's hrefs out of its folder, as "
        "`resflow ingest --stac-outside`")] = False,
    engine_settings: dict[str, Any] | None = None,  # what the engines' flags set, dotted
    **run_flags: Any,
) -> None:
    """Map the buildings of SRC into the folder OUT: ingest, run and export in one command.

    OUT gets the output store (maps.zarr), two COGs per scene (cogs/), the footprints
    (footprints.gpkg, WGS 84) and a STAC Collection (stac/). The imagery is ingested into
    OUT/archive.zarr, removed after a run that mapped every chip unless --keep-archive.
    --config, --set and the run flags are `resflow run`'s. Exit codes: 0 on success (or
    when a resumed job is already complete, or with --print-config); 1 when some inputs or
    chips failed; 2 when refused or failed, leaving nothing a new job made; 130 when
    interrupted, after saying how to resume.
    """
    from resflow import prediction
    from resflow.commands.ingest import band_indices, ingest_settings
    from resflow.commands.run import execute_run, flag_settings
    from resflow.plugins import load_backend
    from resflow.preflight import check_plan
    from resflow.store.targets import OutputComplete

    folder = prediction.PredictFolder.at(out)
    ingest_config = ingest_settings(None, None, chip=chip, workers=None, gsd=gsd,
                                    asset=asset, stac_web=stac_web or None,
                                    stac_outside=stac_outside or None)
    bands = band_indices(rgb)
    settings = flag_settings(**run_flags, engine_settings=engine_settings,
                             **prediction.folder_settings(folder))
    if settings is None:  # --print-config
        return
    try:
        # an engine that will not load, or cannot run the plan: refused before any work
        check_plan(load_backend(settings.backend), settings.plan)
        job = prediction.start(folder, sources, resume=settings.resume,
                            overwrite=settings.overwrite)
        refused = prediction.prepare_archive(job, sources, ingest_config, rgb=bands,
                                          progress=True)
        for record in refused:
            logger.warning("refused: %s: %s. Fix: %s.", record["where"], record["problem"],
                           record["fix"])
        prediction.check_run(job, settings)
    except OutputComplete as done:
        typer.echo(f"nothing to do: {done}")
        return
    except KeyboardInterrupt:
        logger.error("interrupted while ingesting into %s; the same command plus --resume "
                     "goes on", folder.archive)
        raise typer.Exit(130) from None
    execute_run(settings)  # exits but for a run that mapped every chip
    archive = prediction.finish(job, keep_archive=keep_archive)
    if archive is not None:
        logger.info("kept %s", archive, extra={"path": str(archive)})
    if refused:
        raise typer.Exit(1)
