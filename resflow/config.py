"""The one validated configuration model behind every resflow command.

Every run is a :class:`RunConfig`; the CLI only fills it (YAML file first, then flags), and
the run report embeds the exact config so any map can be reproduced. Validation happens
before any work: a malformed file or field is a :class:`~resflow.errors.ConfigError` naming
the field.
"""

from __future__ import annotations

from collections.abc import Iterator
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
    model_serializer,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from resflow.errors import ConfigError
from resflow.resolution import DEFAULT_GSD_M, MAX_GSD_M
from resflow.storage import LocationField

#: Default smallest building kept in a mask, m^2: about 2 x 4 m. Chosen by the accuracy
#: study (docs/accuracy.md), which scores 0, 4 and 8 m^2.
MIN_BUILDING_M2 = 8.0


ENGINE_SECTION = "engine_section"
"""Error type of a run-config section that names no installed engine with settings."""
ENGINE_SECTION_FIX = ("rename or remove the section, or install the engine it is for "
                      "(`resflow doctor` lists the installed engines, and why any failed to load)")


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


class RunConfig(_Strict):
    """One inference run: archive in, georeferenced building maps out.

    Besides the fields below, a run config holds one section per installed engine that has
    settings, under the engine's name as users write it in YAML (``<engine>: {<field>: ..}``).
    Each section is validated by the engine's own ``config_model`` (errors name the field,
    ``<engine>.<field>``), holds the engine's defaults when not given, and is read with
    :meth:`engine_settings`. A mapping under a name that is neither a field nor an installed
    engine is refused. Dumps (``model_dump``) write the sections back at the top level, so
    the run report's copy validates again into the same config.

    Examples
    --------
    >>> RunConfig.model_validate({"backend": "local", "threshold": 0.6}).threshold
    0.6
    """

    archive: LocationField | None = Field(
        None, description="the imagery archive: a folder or a URL such as s3://bucket/a.zarr")
    gallery: Path | None = Field(None, description="model gallery; None = the bundled default")
    out: LocationField | None = Field(
        None, description="the output store: a folder or a URL such as s3://bucket/maps.zarr")
    backend: str = Field(
        "dask", description="the engine: any installed resflow.backends entry point "
        "(`resflow doctor` lists them)")
    batch_size: int = Field(8, ge=1, description="chips per model forward pass")
    partition_chips: int = Field(16, ge=1, description="chips per partition of the graph")
    plan: Literal["fused", "regrouped"] = Field(
        "fused", description="fused: stages 1-3 of a partition in one task, each chip read "
        "once; regrouped: regroup chips by bucket between stages 2 and 3, so every stage-3 "
        "task serves one bucket's model (RESFlow's shape). Same maps either way")
    halo: int = Field(
        32, ge=0, description="context pixels around each chip for overlap-tile inference")
    torch_threads: int = Field(
        1, ge=1, description="intra-op threads per task (avoid oversubscription)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threshold: float = Field(
        0.5, gt=0, lt=1, description="probability above which a pixel is building")
    min_building_m2: float = Field(
        MIN_BUILDING_M2, ge=0, description="smaller connected groups of building pixels, in "
        "m^2 on the ground, are dropped from the mask (specks, not buildings); 0 keeps all")
    cog_dir: Path | None = Field(None, description="also write one COG per scene and map here")
    footprints: Path | None = Field(
        None, description="also write building footprints to this file: GeoParquet, or RFC "
        "7946 GeoJSON for .geojson, in WGS 84")
    stac: bool = Field(True, description="write a STAC Collection of the run's maps")
    stac_dir: Path | None = Field(
        None, description="where the STAC Collection goes; None = OUT/stac for a store on "
        "local disk (a store in object storage needs a folder here)")
    resume: bool = False
    overwrite: bool = False

    _engines: dict[str, BaseModel] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _with_engine_sections(cls, data: Any,
                              handler: ModelWrapValidatorHandler[RunConfig]) -> RunConfig:
        """Validate the sections named after engines by each engine's model, the rest here.

        Errors of both kinds are raised together, each located at its YAML path.
        """
        if not isinstance(data, dict):
            return handler(data)
        sections, errors, unknown = _engine_sections(
            {key: value for key, value in data.items() if key not in cls.model_fields})
        try:
            config = handler({**{key: value for key, value in data.items()
                                 if key in cls.model_fields}, **unknown})
        except ValidationError as exc:
            if not errors:
                raise
            errors = [*_as_details(exc.errors(), ()), *errors]
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
            data[name] = section.model_dump(mode=mode)
        return data

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        yield from super().__repr_args__()
        yield from self._engines.items()

    def engine_settings(self, name: str) -> Any:
        """The validated settings section of engine ``name`` (an instance of its
        ``config_model``): what ``Executor.from_config`` builds the engine from.

        Raises
        ------
        ConfigError
            for an engine that is not installed or has no settings.
        """
        if name not in self._engines:
            with_settings = ", ".join(sorted(self._engines)) or "none"
            raise ConfigError(f"engine '{name}'", "this run config holds no settings for it "
                              f"(engines with settings: {with_settings})",
                              "install the engine's package, or check the engine name")
        return self._engines[name]


def _engine_sections(
    given: dict[str, Any],
) -> tuple[dict[str, BaseModel], list[InitErrorDetails], dict[str, Any]]:
    """Each installed engine's section (from ``given``, else its defaults), the errors of the
    sections in ``given``, and what in ``given`` is no section: unknown settings, which the
    run config's own validation refuses.

    ``given`` holds the keys of a run config's input that are not its fields.
    """
    from resflow.plugins import declared_backends, engine_classes

    classes = engine_classes()
    models = {name: cls.config_model for name, cls in classes.items() if cls.config_model}
    sections: dict[str, BaseModel] = {}
    errors: list[InitErrorDetails] = []
    unknown: dict[str, Any] = {}
    for name, value in given.items():
        if name in models:
            continue
        if not isinstance(value, dict | BaseModel):
            unknown[name] = value
            continue
        if name in classes:
            problem = f"the '{name}' engine has no settings"
        elif name in declared_backends():
            problem = (f"the '{name}' engine is declared but could not be loaded, so its "
                       "settings cannot be checked")
        else:
            problem = (f"'{name}' is neither a run setting nor an installed engine (installed "
                       f"engines: {', '.join(sorted(classes)) or 'none'})")
        errors.append(InitErrorDetails(type=PydanticCustomError(ENGINE_SECTION, problem),
                                       loc=(name,), input=value))
    for name, model in sorted(models.items()):
        value = given.get(name)
        if isinstance(value, model):
            sections[name] = value
            continue
        try:
            sections[name] = model.model_validate({} if value is None else value)
        except ValidationError as exc:
            errors.extend(_as_details(exc.errors(), (name,)))
    return sections, errors, unknown


def _as_details(errors: list[ErrorDetails], prefix: tuple[str, ...]) -> list[InitErrorDetails]:
    """Validation errors, located under ``prefix``, ready to be raised again together."""
    return [InitErrorDetails(type=PydanticCustomError(error["type"], error["msg"]),
                             loc=(*prefix, *error["loc"]), input=error["input"])
            for error in errors]


def load_config(path: Path | str | None, model: type[BaseModel] = RunConfig,
                **overrides: Any) -> Any:
    """Load ``model`` from a YAML file, then apply non-None ``overrides`` (the CLI flags).

    Nested overrides use dotted keys: ``"<engine>.<field>"`` sets a field of an engine's
    section.

    Raises
    ------
    ConfigError
        naming the file and the first bad field, for unreadable YAML or invalid values.
    """
    data: dict[str, Any] = {}
    where = str(path) if path is not None else "command line"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(where, "the config file does not exist", "check the path")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(where, f"not valid YAML ({exc.__class__.__name__}: {exc})",
                              "fix the YAML syntax at the position shown") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(where, "the top level must be a mapping of settings",
                              "write `key: value` lines, e.g. `backend: dask`")
        data = loaded or {}
    for key, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            if node.get(part) is None:  # absent, or a YAML section with every line commented
                node[part] = {}
            node = node[part]
        node[leaf] = value
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        fix = (ENGINE_SECTION_FIX if first["type"] == ENGINE_SECTION else
               f"see `resflow --help` or the README for valid values of '{field}'")
        raise ConfigError(f"{where}: field '{field}'", first["msg"], fix) from exc
