"""Exports of a complete output store: Cloud-Optimized GeoTIFFs, building footprints, a STAC
Collection and quicklooks.

Each kind of file has its module (:mod:`~resflow.exports.cog`,
:mod:`~resflow.exports.footprints`, :mod:`~resflow.exports.stac`,
:mod:`~resflow.exports.quicklook`); :func:`export_run` makes every one a run asks for. The
entry points are here, so callers write ``from resflow.exports import export_run``.
"""

from resflow.exports.cog import export_cogs
from resflow.exports.footprints import export_footprints, scene_footprints
from resflow.exports.quicklook import quicklook
from resflow.exports.run import export_run
from resflow.exports.stac import write_collection

__all__ = ["export_cogs", "export_footprints", "export_run", "quicklook", "scene_footprints",
           "write_collection"]
