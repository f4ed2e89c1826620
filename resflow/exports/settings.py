"""What every export of a run shares: its settings (:class:`ExportConfig`), checked before
anything is written, and the mask rule they imply.

An export reads the run's own mask, or cuts the stored probability again with the run's
halo and ``split_dip`` at a new threshold (:class:`~resflow.store.mask_rule.MaskRule`), so
a mask cut again at the run's settings is the run's mask. Scenes are read in windows of
:data:`TILE_PX` pixels, so memory does not grow with scene size.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from resflow.config import MIN_BUILDING_M2, load_config
from resflow.masks import min_pixels
from resflow.store.mask_rule import STORE_MASK, MaskRule
from resflow.store.reader import SceneMaps, run_settings
from resflow.store.writer import OutputStore

FootprintFormat = Literal["gpkg", "fgb", "parquet", "geojson"]
"""The formats footprints are written in: GeoPackage, FlatGeobuf, GeoParquet, GeoJSON."""

TILE_PX = 2048
"""Edge of the windows scenes are masked and vectorised in, pixels (rounded to whole chips):
a few tens of MB per window, whatever the scene size."""


class ExportConfig(BaseModel):
    """What an export makes of a finished run (``resflow export``'s settings): unknown keys
    and values out of range are refused, naming the setting, before anything is written."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float | None = Field(
        None, gt=0, lt=1, description="cut the stored probability again at this value for the "
        "COG mask and the footprints, without inference; null = the run's own mask")
    min_building_m2: float | None = Field(
        None, ge=0, description="drop buildings smaller than this, m^2 on the ground, from "
        "the footprints and (with threshold) the COG mask; null = the run's, else 8; 0 keeps "
        "every building")
    simplify_m: float | None = Field(
        None, ge=0, description="simplify footprint outlines with this tolerance, metres; "
        "null = exact pixel edges")
    footprints_format: FootprintFormat | None = Field(
        None, description="footprints format whatever the file name; null = by suffix")
    overwrite: bool = Field(
        False, description="replace footprints and COGs already there; false = refuse, "
        "writing nothing")


def export_settings(**given: Any) -> ExportConfig:
    """``given`` (an export function's keywords; ``None`` leaves a default) as a checked
    :class:`ExportConfig`.

    Raises
    ------
    ConfigError
        Naming the setting, its problem and where to read the valid values.
    """
    return load_config(None, ExportConfig, origin="export settings", **given)


def default_min_building_m2(store: OutputStore) -> float:
    """The run's ``min_building_m2``, else :data:`resflow.config.MIN_BUILDING_M2` (8 m^2)."""
    return float(run_settings(store).get("min_building_m2", MIN_BUILDING_M2))


def mask_rule(store: OutputStore, maps: SceneMaps, threshold: float | None,
              min_building_m2: float) -> MaskRule:
    """The store's own mask (no ``threshold``), or the scene's probability cut again at
    ``threshold`` with the run's halo and ``split_dip``, dropping groups under
    ``min_building_m2`` on the scene's grid."""
    if threshold is None:
        return STORE_MASK
    settings = run_settings(store)
    return MaskRule(threshold, min_pixels(min_building_m2, maps.gsd_m),
                    int(settings.get("halo", 0)), float(settings.get("split_dip", 0.0)))

