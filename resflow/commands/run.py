"""``resflow run``: an imagery archive through the three-stage graph into georeferenced maps.

The engines' own flags (a cluster address, a worker count) are not written here: each engine
declares them (``Executor.cli_options``) and :func:`with_engine_flags` adds them to the
command, so installing an engine adds its flags to ``resflow run --help``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import warnings
from collections.abc import Callable, Collection
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from resflow.commands.options import (
    Backend,
    ConfigFile,
    PlanChoice,
    PrintConfig,
    Sets,
    resolve_run_config,
)
from resflow.commands.refusals import exit_2_on_refusal
from resflow.executor import CliOption

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from resflow.config import RunConfig


class DeviceChoice(StrEnum):
    """The values ``--device`` accepts (typer refuses anything else before any work):
    ``RunConfig.device``'s values (a test holds them equal)."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def register(app: typer.Typer) -> None:
    """Add the ``run`` command to the CLI."""
    app.command("run")(with_engine_flags(run_command))


def engine_options(reserved: Collection[str] = ()) -> list[tuple[str, CliOption]]:
    """Every installed engine's flags as ``(engine, option)``, engines by name, each engine's
    flags in its order: the order in which given flags are applied.

    A flag whose name is in ``reserved`` (the command's own parameters), or which another
    engine declares with another type, is left out with a warning naming the engine.
    """
    from resflow.plugins import engine_classes

    kept: list[tuple[str, CliOption]] = []
    types: dict[str, type] = {}
    for engine, cls in sorted(engine_classes().items()):
        for option in cls.cli_options:
            if option.param in reserved:
                clash = "it is an option of the command itself"
            elif types.setdefault(option.param, option.type) is not option.type:
                clash = f"another engine declares it as {types[option.param].__name__}"
            else:
                kept.append((engine, option))
                continue
            warnings.warn(f"resflow backend '{engine}': flag {option.flag} left out, {clash}. "
                          "Fix: rename the flag in the backend's cli_options",
                          RuntimeWarning, stacklevel=2)
    return kept


def engine_overrides(options: list[tuple[str, CliOption]],
                     given: dict[str, Any]) -> dict[str, Any]:
    """The engine settings the given flags set, as dotted keys ``"<engine>.<field>"``.

    Where two flags of one engine set the same field, the one the engine declares first wins.
    """
    settings: dict[str, Any] = {}
    for engine, option in options:
        if given.get(option.param) is not None:
            settings.setdefault(f"{engine}.{option.field}", option.value(given[option.param]))
    return settings


def with_engine_flags(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` as typer sees it: its own parameters plus every installed engine's flags.

    ``command`` takes ``engine_settings``, a dict of dotted engine settings (see
    :func:`engine_overrides`), which it passes on to :func:`resflow.config.load_config`; a
    flag several engines declare is one flag whose help names each engine's meaning.
    """
    signature = inspect.signature(command, eval_str=True)
    own = [p for name, p in signature.parameters.items() if name != "engine_settings"]
    options = engine_options(reserved={p.name for p in own})
    helps: dict[str, list[str]] = {}
    flags: dict[str, CliOption] = {}
    for engine, option in options:
        flags.setdefault(option.param, option)
        helps.setdefault(option.param, []).append(f"{engine}: {option.help}")
    added = [inspect.Parameter(
        param, inspect.Parameter.KEYWORD_ONLY, default=None,
        annotation=Annotated[option.type | None,
                             typer.Option(option.flag, help="; ".join(helps[param]))])
        for param, option in flags.items()]

    @functools.wraps(command)
    def with_flags(**given: Any) -> None:
        values = {param: given.pop(param) for param in flags}
        command(**given, engine_settings=engine_overrides(options, values))

    with_flags.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*own, *added])
    return with_flags


@exit_2_on_refusal
def run_command(
    archive: Annotated[str, typer.Argument(
        help="the imagery archive (from `resflow ingest`): a folder or a URL (s3://...)")],
    out: Annotated[str, typer.Option(
        "--out", "-o", help="the output store, e.g. maps.zarr or s3://bucket/maps.zarr")],
    gallery: Annotated[str | None, typer.Option(
        help="model gallery: a folder or a URL (default: bundled)")] = None,
    backend: Backend = None,
    config: ConfigFile = None,
    sets: Sets = None,
    print_config: PrintConfig = False,
    batch_size: Annotated[int | None, typer.Option(
        help="chips per model call in benchmarks; a run sends one prediction window a call")
    ] = None,
    device: Annotated[DeviceChoice | None, typer.Option(
        help="where models run: auto (a GPU when torch sees one), cpu or cuda (default auto)",
        case_sensitive=False)] = None,
    threshold: Annotated[float | None, typer.Option(
        help="probability above which a pixel is building (default 0.5)")] = None,
    min_building_m2: Annotated[float | None, typer.Option(
        "--min-building-m2", help="drop smaller groups of building pixels from the mask, "
        "m^2 on the ground (default 8; 0 keeps all)")] = None,
    split_dip: Annotated[float | None, typer.Option(
        help="split touching roofs where the building probability dips by at least this "
        "between two peaks (default 0.1; 0 keeps blobs whole)")] = None,
    plan: Annotated[PlanChoice | None, typer.Option(
        help="fused (default): stages 1-3 per partition in one task; regrouped: regroup by "
        "bucket before stage 3 (RESFlow's shape). Same maps")] = None,
    cog_dir: Annotated[str | None, typer.Option(
        "--cog-dir", metavar="DIR", help="also write one COG per scene here")] = None,
    footprints: Annotated[str | None, typer.Option(
        metavar="FILE", help="also write building footprints to this file, in WGS 84, in the "
        "format of its suffix: .gpkg, .fgb, .parquet or .geojson (RFC 7946)")] = None,
    stac: Annotated[bool | None, typer.Option(
        "--stac/--no-stac", help="write a STAC Collection of the maps (default: on)")] = None,
    stac_dir: Annotated[str | None, typer.Option(
        "--stac-dir", metavar="DIR", help="where the STAC Collection goes (default: OUT/stac "
        "for a local store)")] = None,
    resume: Annotated[bool, typer.Option(help="finish an interrupted output")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output")] = False,
    engine_settings: dict[str, Any] | None = None,  # what the engines' flags set, dotted
) -> None:
    """Segment buildings in every scene of ARCHIVE and write OUT.zarr (same grids and CRS).

    Settings come from the run config's defaults, then --config, then each --set, then the
    other flags; each installed engine adds its own flags. Ends with one summary line. Exit
    codes: 0 on success (or when a resumed output is already complete, or with
    --print-config); 1 when the run finished but some inputs or chips failed (listed in the
    run report); 2 when the run was refused before any work, or failed; 130 when interrupted
    (Ctrl-C), after saying how to resume.
    """
    settings = flag_settings(
        config, sets, print_config, archive=archive, out=out, gallery=gallery,
        backend=backend, batch_size=batch_size, device=device, threshold=threshold,
        min_building_m2=min_building_m2, split_dip=split_dip, plan=plan, cog_dir=cog_dir,
        footprints=footprints, stac=stac, stac_dir=stac_dir, resume=resume,
        overwrite=overwrite, engine_settings=engine_settings)
    if settings is not None:
        execute_run(settings)


def flag_settings(config: Path | None, sets: list[str] | None, print_config: bool, *,
                  device: DeviceChoice | None = None, resume: bool = False,
                  overwrite: bool = False, engine_settings: dict[str, Any] | None = None,
                  **fields: Any) -> RunConfig | None:
    """The run config of ``run``'s flags
    (:func:`resflow.commands.options.resolve_run_config`), the other flags given as the run
    config's fields; ``None`` once ``--print-config`` printed it. Flags left off (``None``,
    ``False``) leave the file's and ``--set``'s values."""
    return resolve_run_config(config, sets, print_config,
                              device=device.value if device else None,
                              resume=resume or None, overwrite=overwrite or None, **fields,
                              **(engine_settings or {}))


def execute_run(settings: RunConfig) -> None:
    """Run the graph as ``settings`` (a :class:`~resflow.config.RunConfig` with ``archive``
    and ``out``) say (:func:`resflow.service.run_config`, with progress), and report it as
    ``resflow run`` does, exit codes included."""
    from resflow.errors import ResflowError
    from resflow.interrupts import sigterm_as_interrupt, stop_message
    from resflow.redaction import redact_text
    from resflow.service import run_config
    from resflow.store.targets import OutputComplete

    try:
        with sigterm_as_interrupt():
            report = run_config(settings, progress=True).report
    except OutputComplete as done:
        typer.echo(f"nothing to do: {done}")
        return
    except ResflowError as err:
        logger.error("%s", err)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        logger.error("interrupted: %s", stop_message(settings.out))
        raise typer.Exit(130) from None
    except Exception as exc:  # an engine gave up (e.g. too many lost workers)
        logger.error("the run failed (%s: %s); %s", exc.__class__.__name__,
                     redact_text(str(exc)), stop_message(settings.out))
        raise typer.Exit(2) from None
    for error in report.errors:
        logger.warning("input error: %s: %s. Fix: %s.", error["where"], error["problem"],
                       error["fix"], extra={"where": error["where"]})
    typer.echo(report.summary_line())
    if report.errors:
        raise typer.Exit(1)
