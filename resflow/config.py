"""The one validated configuration model behind every resflow command.

Every run is a :class:`RunConfig`; the CLI only fills it (the YAML file of ``--config``, then
each ``--set KEY=VALUE``, then the command's flags: :func:`load_config`), and the run report
embeds the exact config so any map can be reproduced. Validation happens before any work: a
malformed file or field is a :class:`~resflow.errors.ConfigError` naming the field and where
its value came from.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    model_serializer,
    model_validator,
)

from resflow.engine_sections import (
    ENGINE_SECTION,
    ENGINE_SECTION_FIX,
    EngineModels,
    as_details,
    context_engines,
    engine_sections,
)
from resflow.errors import ConfigError
from resflow.resolution import DEFAULT_GSD_M, MAX_GSD_M
from resflow.storage import LocalPathField, LocationField
from resflow.windows import WINDOW_CHIPS, WINDOW_HALO

#: Default smallest building kept in a mask, m^2: about 2 x 4 m. Chosen by the accuracy
#: study (docs/accuracy.md), which scores 0, 4 and 8 m^2.
MIN_BUILDING_M2 = 8.0

#: Default dip in building probability between two roof peaks that splits one blob into two
#: buildings (:func:`resflow.masks.split_touching`). Chosen by the accuracy study
#: (docs/accuracy.md), which scores 0 to 0.2.
SPLIT_DIP = 0.1


class _Strict(BaseModel):
    """Unknown keys are refused: a typo in a YAML file must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class IngestConfig(_Strict):
    """How rasters become a Zarr imagery archive."""

    chip: int = Field(
        256, ge=32, le=4096, description="chip edge in pixels; also the Zarr chunk edge")
    workers: int = Field(2, ge=1, description="scenes ingested in parallel (threads)")
    window_rows: int = Field(
        1024, ge=32, description="rows read per window while streaming a scene (bounds memory)"
    )
    gsd: float | None = Field(
        DEFAULT_GSD_M, gt=0, description="working ground resolution in metres every scene is "
        "resampled to (the gallery's; see resflow.resolution); null keeps each scene's own")
    max_gsd: float = Field(
        MAX_GSD_M, gt=0, description="scenes coarser than this many metres per pixel are "
        "recorded as skipped, never mapped")
    stac_asset: str | None = Field(
        None, description="from a STAC catalogue or ItemCollection given as a source, ingest "
        "each Item's asset of this key (e.g. visual); None = every GeoTIFF data asset")
    stac_web: bool = Field(
        False, description="fetch the http(s) addresses a STAC catalogue names; off, they are "
        "refused, since a catalogue could make ingest fetch any web address this machine "
        "reaches (link-local and cloud metadata addresses are refused either way)")
    stac_outside: bool = Field(
        False, description="follow a local STAC catalogue's hrefs that lead out of its folder "
        "(resflow's own exported catalogues name ../cog/...); off, they are refused")
    max_pixels: int = Field(
        10_000_000_000, ge=1, description="largest scene ingested, in pixels (height x width, "
        "of the source and of its working grid); a larger one is refused before its pixels "
        "are read, since a small file can declare any size")


class RunConfig(_Strict):
    """One inference run: archive in, georeferenced building maps out.

    Besides the fields below, a run config holds one section per engine, under the engine's
    name as users write it in YAML (``<engine>: {<field>: ..}``), read with
    :meth:`engine_settings`. Validated with the installed engines as context
    (:class:`EngineModels`, as :func:`load_config` does for the CLI and the Python API), each
    section is checked by the engine's own ``config_model`` (errors name the field,
    ``<engine>.<field>``) and holds the engine's defaults when not given, and a mapping under
    a name that is neither a field nor an installed engine is refused. Without that context
    sections are kept as given. Dumps (``model_dump``) write the sections back at the top
    level, so the run report's copy validates again into the same config.

    Examples
    --------
    >>> RunConfig.model_validate({"backend": "local", "threshold": 0.6}).threshold
    0.6
    """

    archive: LocationField | None = Field(
        None, description="the imagery archive: a folder or a URL such as s3://bucket/a.zarr")
    gallery: LocationField | None = Field(
        None, description="model gallery: a folder or a URL; None = the bundled default")
    out: LocationField | None = Field(
        None, description="the output store: a folder or a URL such as s3://bucket/maps.zarr")
    backend: str = Field(
        "dask", description="the engine: any installed resflow.backends entry point "
        "(`resflow doctor` lists them)")
    batch_size: int = Field(8, ge=1, description="chips per model call in the benchmarks' "
                            "compute limit; a run sends one prediction window per call")
    partition_chips: int = Field(16, ge=1, description="chips per partition of the graph")
    plan: Literal["fused", "regrouped"] = Field(
        "fused", description="fused: stages 1-3 of a partition in one task, each chip read "
        "once; regrouped: regroup chips by bucket between stages 2 and 3, so every stage-3 "
        "task serves one bucket's model (RESFlow's shape). Same maps either way")
    halo: int = Field(
        WINDOW_HALO, ge=0, le=1024, description="context pixels around each prediction window for "
        "overlap-tile inference")
    window: int = Field(
        WINDOW_CHIPS, ge=1, le=16, description="chips per side of a prediction window: each "
        "window x window chips is encoded, routed and segmented in one piece, so chip "
        "borders inside it do not show in the maps; 1 = chip by chip")
    torch_threads: int = Field(
        1, ge=1, description="intra-op threads per task (avoid oversubscription)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threshold: float = Field(
        0.5, gt=0, lt=1, description="probability above which a pixel is building")
    min_building_m2: float = Field(
        MIN_BUILDING_M2, ge=0, description="smaller connected groups of building pixels, in "
        "m^2 on the ground, are dropped from the mask (specks, not buildings); 0 keeps all")
    split_dip: float = Field(
        SPLIT_DIP, ge=0, lt=1, description="touching roofs found as one blob are split where "
        "the building probability dips by at least this between two peaks (dense "
        "settlements); 0 keeps every blob whole")
    cog_dir: LocalPathField | None = Field(
        None, description="also write one COG per scene and map here (local disk)")
    footprints: LocalPathField | None = Field(
        None, description="also write building footprints to this file: GeoParquet, or RFC "
        "7946 GeoJSON for .geojson, in WGS 84")
    stac: bool = Field(True, description="write a STAC Collection of the run's maps")
    stac_dir: LocalPathField | None = Field(
        None, description="where the STAC Collection goes; None = OUT/stac for a store on "
        "local disk (a store in object storage needs a folder here)")
    resume: bool = False
    overwrite: bool = False

    _engines: dict[str, BaseModel | dict[str, Any]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _with_engine_sections(cls, data: Any, handler: ModelWrapValidatorHandler[RunConfig],
                              info: ValidationInfo) -> RunConfig:
        """Validate the sections named after engines by each engine's model (given the
        installed engines as context), the rest here.

        Errors of both kinds are raised together, each located at its YAML path.
        """
        if not isinstance(data, dict):
            return handler(data)
        sections, errors, unknown = engine_sections(
            {key: value for key, value in data.items() if key not in cls.model_fields},
            context_engines(info.context))
        try:
            config = handler({**{key: value for key, value in data.items()
                                 if key in cls.model_fields}, **unknown})
        except ValidationError as exc:
            if not errors:
                raise
            errors = [*as_details(exc.errors(), ()), *errors]
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        config._engines = sections
        return config

    @model_serializer(mode="wrap")
    def _dump_engine_sections(self, handler: SerializerFunctionWrapHandler,
                              info: SerializationInfo) -> dict[str, Any]:
        """The fields, then each engine section at the top level as users write it."""
        data = handler(self)
        mode = "json" if info.mode_is_json() else "python"
        for name, section in self._engines.items():
            data[name] = (section.model_dump(mode=mode) if isinstance(section, BaseModel)
                          else section)
        return data

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        yield from super().__repr_args__()
        yield from self._engines.items()

    def engine_settings(self, name: str) -> BaseModel | dict[str, Any] | None:
        """The settings section of engine ``name``: an instance of its ``config_model`` when
        validated with the installed engines, else the mapping as given, or ``None`` when
        there is none. :meth:`resflow.executor.Executor.from_settings` builds the engine
        from it."""
        return self._engines.get(name)


SET_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
"""A ``--set`` key: a setting's name, dotted for a field of a section (``dask.workers``)."""


def parse_sets(items: Iterable[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as ``{KEY: value}``, a later item for a key winning.

    VALUE is read by YAML's rules, as it would be in a config file, so the command line and
    the file mean the same: ``0.6`` is a number, ``true`` a bool, ``null`` (or nothing) null,
    ``[0, 1]`` a list, and anything else a string.

    Raises
    ------
    ConfigError
        naming the item, for one that is not ``KEY=VALUE`` or whose VALUE is not YAML.

    Examples
    --------
    >>> parse_sets(["threshold=0.6", "dask.workers=4", "stac=false", "gsd=null"])
    {'threshold': 0.6, 'dask.workers': 4, 'stac': False, 'gsd': None}
    """
    values: dict[str, Any] = {}
    for item in items:
        key, equals, text = item.partition("=")
        key = key.strip()
        if not equals or not SET_KEY.fullmatch(key):
            raise ConfigError(f"--set {item}", "not KEY=VALUE with KEY the name of a setting "
                              "(dotted for a field of a section)",
                              "write e.g. --set threshold=0.6 or --set dask.workers=4")
        try:
            values[key] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}", f"the value is not valid YAML "
                              f"({exc.__class__.__name__}: {exc})",
                              f"quote it, e.g. --set {key}='\"...\"'") from exc
    return values


def load_config(path: Path | str | None, model: type[BaseModel] = RunConfig, *,
                sets: Iterable[str] = (), origin: str = "command line",
                engines: EngineModels | None = None, **overrides: Any) -> Any:
    """Resolve ``model`` from, lowest precedence first, its defaults, the YAML file at
    ``path``, the ``sets`` (``--set KEY=VALUE`` items, :func:`parse_sets`) in order, and the
    non-None ``overrides`` (the command's own flags, or a function's arguments: ``origin``
    names where they came from in errors).

    So a flag beats a ``--set`` of the same setting, which beats the file. Keys of ``sets``
    and ``overrides`` are dotted for a field of a section: ``"<engine>.<field>"`` sets a field
    of an engine's section. A ``--set`` may set a value to null; a flag left out (None) sets
    nothing. ``engines`` (:func:`resflow.plugins.engine_models`) checks a run config's
    engine sections against the installed engines.

    Raises
    ------
    ConfigError
        naming the first bad field and where its value came from (the file, ``--set KEY`` or
        ``origin``), for unreadable YAML or invalid values; an unknown key's error lists
        the settings that exist there.
    """
    where = str(path) if path is not None else origin
    data = _read_yaml(Path(path)) if path is not None else {}
    given: list[tuple[tuple[str, ...], str]] = []  # (key path, source), in the order applied
    for key, value in parse_sets(sets).items():
        _assign(data, key, value, f"--set {key}")
        given.append((tuple(key.split(".")), f"--set {key}"))
    for key, value in overrides.items():
        if value is not None:
            _assign(data, key, value, f"{origin}: {key}")
            given.append((tuple(key.split(".")), origin))
    try:
        return model.model_validate(data, context={"engines": engines} if engines else None)
    except ValidationError as exc:
        raise _config_error(exc, model, where, given, engines) from exc


def dump_config(settings: BaseModel) -> str:
    """``settings`` as the YAML a config file would hold to reproduce them (what
    ``--print-config`` prints): every field, engine sections included, in model order.

    Examples
    --------
    >>> print(dump_config(IngestConfig(chip=512)), end="")
    chip: 512
    workers: 2
    window_rows: 1024
    gsd: 0.3
    max_gsd: 2.0
    stac_asset: null
    stac_web: false
    stac_outside: false
    max_pixels: 10000000000
    """
    return yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False,
                          default_flow_style=False, allow_unicode=True)


def _read_yaml(path: Path) -> dict[str, Any]:
    """The mapping a YAML config file holds (empty for an empty file)."""
    if not path.is_file():
        raise ConfigError(str(path), "the config file does not exist", "check the path")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), f"not valid YAML ({exc.__class__.__name__}: {exc})",
                          "fix the YAML syntax at the position shown") from exc
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(str(path), "the top level must be a mapping of settings",
                          "write `key: value` lines, e.g. `backend: dask`")
    return loaded or {}


def _assign(data: dict[str, Any], key: str, value: Any, source: str) -> None:
    """Set dotted ``key`` in ``data``, making the sections on the way; ``source`` names where
    the value came from in the error for a key that runs through a plain value."""
    node = data
    *parents, leaf = key.split(".")
    for depth, part in enumerate(parents):
        if node.get(part) is None:  # absent, or a YAML section with every line commented
            node[part] = {}
        elif not isinstance(node[part], dict):
            section = ".".join(parents[:depth + 1])
            raise ConfigError(source, f"'{section}' holds a value ({node[part]!r}), not a "
                              f"section with a field '{leaf}'",
                              f"set '{section}' itself, or remove its value from the file")
        node = node[part]
    node[leaf] = value


def _config_error(exc: ValidationError, model: type[BaseModel], where: str,
                  given: list[tuple[tuple[str, ...], str]],
                  engines: EngineModels | None) -> ConfigError:
    """The first validation error, located at its field and at the source of its value:
    the last ``--set`` or flag whose key is the field, or holds it, or lies inside it; else
    the file."""
    first = exc.errors()[0]
    loc = tuple(str(p) for p in first["loc"])
    field = ".".join(loc) or "(top level)"
    source = next((label for path, label in reversed(given) if loc
                   and path[:len(loc)] == loc[:len(path)]), None)
    if source is None:
        location = f"{where}: field '{field}'"
    elif source == f"--set {field}":
        location = source
    else:
        location = f"{source}: field '{field}'"
    known = (_settings_at(model, loc[:-1], engines) if first["type"] == "extra_forbidden"
             else [])
    if first["type"] == ENGINE_SECTION:
        fix = ENGINE_SECTION_FIX
    elif known:
        section = f" of '{'.'.join(loc[:-1])}'" if len(loc) > 1 else ""
        fix = f"use one of the settings{section}: {', '.join(known)}"
    else:
        fix = f"see `resflow --help` or the README for valid values of '{field}'"
    return ConfigError(location, first["msg"], fix)


def _settings_at(model: type[BaseModel], section: tuple[str, ...],
                 installed: EngineModels | None) -> list[str]:
    """The keys a mapping at ``section`` of ``model``'s YAML may hold: the fields of the
    (nested) model there, and for a run config's top level the sections of the
    ``installed`` engines; [] where ``section`` names no model."""
    engines = dict(installed.models) if installed and issubclass(model, RunConfig) else {}
    current: type[BaseModel] | None = model
    for part in section:
        field = current.model_fields.get(part) if current else None
        inner = field.annotation if field else engines.get(part) if current is model else None
        current = inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None
    if current is None:
        return []
    return [*current.model_fields, *(sorted(engines) if current is model else [])]
