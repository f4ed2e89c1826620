"""Area rates set against RESFlow's reported 5.245 km^2/s at 0.5 m ground pixels.

A chip covers more ground at a coarser pixel for the same work, so every rate is also
given as if the archive's pixels were 0.5 m: the figure that compares with RESFlow's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the check imports torch and resflow only once it runs
    from resflow.archive import Archive

#: RESFlow's reported area rate, km^2/s, at :data:`REFERENCE_GSD_M`.
RESFLOW_KM2_PER_S = 5.245
#: Ground pixel, metres, at which area rates are compared with RESFlow's: a chip of the
#: same pixels covers ``(REFERENCE_GSD_M / gsd)^2`` times the ground of one at ``gsd``.
REFERENCE_GSD_M = 0.5


def reference_scale(refs: Sequence[Any], archive: Archive) -> float:
    """How much more ground the chips would cover at :data:`REFERENCE_GSD_M`: the same
    pixels at a coarser ground pixel, each chip's km^2 times ``(REFERENCE_GSD_M / gsd)^2``
    of its scene (2.78 from 0.3 m)."""
    km2 = sum(ref.km2 for ref in refs)
    scaled = sum(ref.km2 * (REFERENCE_GSD_M / archive.scenes[ref.scene].gsd_m) ** 2
                 for ref in refs)
    return float(scaled / km2) if km2 else 1.0


def rates(chips: int, km2: float, seconds: float, scale: float) -> dict[str, float]:
    """chips/s, km^2/s, km^2/s at :data:`REFERENCE_GSD_M` (``km2 * scale``, see
    :func:`reference_scale`) and that as a share of RESFlow's 5.245 km^2/s."""
    at_reference = km2 * scale / seconds
    return {"chips_per_s": chips / seconds, "km2_per_s": km2 / seconds,
            "km2_per_s_at_0_5m": at_reference, "of_resflow": at_reference / RESFLOW_KM2_PER_S}
