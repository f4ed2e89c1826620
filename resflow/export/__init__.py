"""Exports of a complete output store: Cloud-Optimized GeoTIFFs, building footprints, a STAC
Collection and quicklooks.

Each kind of file has its module (:mod:`~resflow.export.cog`,
:mod:`~resflow.export.footprints`, :mod:`~resflow.export.stac`,
:mod:`~resflow.export.quicklook`); :func:`export_run` makes every one a run asks for. The
entry points are here, so callers write ``from resflow.export import export_run``.
"""

from resflow.export.cog import export_cogs
from resflow.export.footprints import export_footprints, scene_footprints
from resflow.export.quicklook import quicklook
from resflow.export.run import export_run
from resflow.export.stac import write_collection

__all__ = ["export_cogs", "export_footprints", "export_run", "quicklook", "scene_footprints",
           "write_collection"]
