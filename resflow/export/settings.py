"""What every export of a run shares: its settings, checked before anything is written,
and the mask rule they imply.

An export reads the run's own mask, or cuts the stored probability again with the run's
halo and ``split_dip`` at a new threshold (:class:`~resflow.store.mask_rule.MaskRule`), so
a mask cut again at the run's settings is the run's mask. Scenes are read in windows of
:data:`TILE_PX` pixels, so memory does not grow with scene size.
"""

from __future__ import annotations

from resflow.config import MIN_BUILDING_M2
from resflow.errors import ConfigError
from resflow.masks import min_pixels
from resflow.store.mask_rule import STORE_MASK, MaskRule
from resflow.store.reader import SceneMaps, run_settings
from resflow.store.writer import OutputStore

TILE_PX = 2048
"""Edge of the windows scenes are masked and vectorised in, pixels (rounded to whole chips):
a few tens of MB per window, whatever the scene size."""


def check_settings(threshold: float | None, min_building_m2: float | None,
                   simplify_m: float | None) -> None:
    """Refuse a setting out of range before anything is written.

    Raises
    ------
    ConfigError
        Naming the option, its value and what to give instead.
    """
    if threshold is not None and not 0 < threshold < 1:
        raise ConfigError("--threshold", f"{threshold} is not between 0 and 1",
                          "give a probability such as 0.5")
    if min_building_m2 is not None and min_building_m2 < 0:
        raise ConfigError("--min-building-m2", f"{min_building_m2} is negative",
                          "give an area in m^2 (0 keeps every building)")
    if simplify_m is not None and simplify_m < 0:
        raise ConfigError("--simplify-m", f"{simplify_m} is negative",
                          "give a tolerance in metres, or leave it out to keep pixel edges")


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

