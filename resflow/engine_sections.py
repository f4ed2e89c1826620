"""A run config's engine sections, checked against the installed engines.

Each engine owns the section of a run config named after it (``dask:``), validated by the
engine's ``config_model``. Which engines are installed is the registry's knowledge
(:func:`resflow.plugins.engine_models`); it reaches validation as pydantic's validation
context (:class:`EngineModels`), so the config module never imports the registry, and a
config validated without that context keeps its sections as written for the engine to
check when it is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

ENGINE_SECTION = "engine_section"
"""Error type of a run-config section that names no installed engine with settings."""
ENGINE_SECTION_FIX = ("rename or remove the section, or install the engine it is for "
                      "(`resflow doctor` lists the installed engines, and why any failed to load)")


@dataclass(frozen=True)
class EngineModels:
    """The installed engines, as a run config's validation context: what its engine
    sections are checked against.

    :func:`resflow.plugins.engine_models` builds it from the registry and
    ``load_config(..., engines=...)`` passes it on
    (``RunConfig.model_validate(data, context={"engines": ...})``). The config module never
    reads the registry itself: without this context a run config validates its own fields
    alone and keeps engine sections as given, for the engine to check when it is built
    (:meth:`resflow.executor.Executor.from_settings`).
    """

    #: the settings model of each installed engine that has settings, by engine name
    models: Mapping[str, type[BaseModel]] = field(default_factory=dict)
    #: installed engines without settings (a section for one is refused)
    without_settings: frozenset[str] = frozenset()
    #: engines declared but not importable (their sections cannot be checked)
    unloadable: frozenset[str] = frozenset()

    @property
    def installed(self) -> list[str]:
        """Names of the installed engines, sorted."""
        return sorted({*self.models, *self.without_settings})


def context_engines(context: Any) -> EngineModels | None:
    """The installed engines a validation context names (``{"engines": EngineModels}``)."""
    engines = context.get("engines") if isinstance(context, dict) else None
    return engines if isinstance(engines, EngineModels) else None


def engine_sections(
    given: dict[str, Any], engines: EngineModels | None,
) -> tuple[dict[str, BaseModel | dict[str, Any]], list[InitErrorDetails], dict[str, Any]]:
    """Each engine's section, the errors of the sections in ``given``, and what in ``given``
    is no section: unknown settings, which the run config's own validation refuses.

    ``given`` holds the keys of a run config's input that are not its fields. With
    ``engines``, every installed engine with settings gets its section (from ``given``,
    else its defaults), checked by its model; without, every mapping is kept as given.
    """
    if engines is None:
        kept = {name: value for name, value in given.items()
                if isinstance(value, dict | BaseModel)}
        return kept, [], {name: v for name, v in given.items() if name not in kept}
    models = engines.models
    sections: dict[str, BaseModel | dict[str, Any]] = {}
    errors: list[InitErrorDetails] = []
    unknown: dict[str, Any] = {}
    for name, value in given.items():
        if name in models:
            continue
        if not isinstance(value, dict | BaseModel):
            unknown[name] = value
            continue
        if name in engines.without_settings:
            problem = f"the '{name}' engine has no settings"
        elif name in engines.unloadable:
            problem = (f"the '{name}' engine is declared but could not be loaded, so its "
                       "settings cannot be checked")
        else:
            problem = (f"'{name}' is neither a run setting nor an installed engine (installed "
                       f"engines: {', '.join(engines.installed) or 'none'})")
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
            errors.extend(as_details(exc.errors(), (name,)))
    return sections, errors, unknown


def as_details(errors: list[ErrorDetails], prefix: tuple[str, ...]) -> list[InitErrorDetails]:
    """Validation errors, located under ``prefix``, ready to be raised again together."""
    return [InitErrorDetails(type=PydanticCustomError(error["type"], error["msg"]),
                             loc=(*prefix, *error["loc"]), input=error["input"])
            for error in errors]
