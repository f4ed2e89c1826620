"""The settings of an evaluation (``resflow eval``): a strict model, so a config file's typo
or a threshold out of range is refused, naming the setting, before any scoring."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from resflow.config import load_config


class EvalConfig(BaseModel):
    """How a finished run is scored against footprint labels (:func:`resflow.evaluation.evaluate`).

    Examples
    --------
    >>> EvalConfig(threshold=0.4, covered=["ms1"]).covered
    ('ms1',)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float | None = Field(
        None, gt=0, lt=1, description="re-threshold the stored probability at this value; "
        "null = the run's own mask")
    covered: tuple[str, ...] = Field(
        (), description="scenes the labels cover although no label polygon reaches them "
        "(empty land): scored with no building, so every building predicted there is a false "
        "alarm")


def eval_settings(**given: Any) -> EvalConfig:
    """``given`` (:func:`~resflow.evaluation.evaluate`'s keywords; ``None`` leaves a
    default) as a checked :class:`EvalConfig`.

    Raises
    ------
    ConfigError
        Naming the setting, its problem and where to read the valid values.
    """
    return load_config(None, EvalConfig, origin="evaluation settings", **given)
