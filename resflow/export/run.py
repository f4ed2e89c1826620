"""Every export of a finished run at once, as ``resflow export`` and ``resflow run`` make
them: COGs, then footprints, then a STAC Collection naming what was written.
"""

from __future__ import annotations

from pathlib import Path

from resflow import storage
from resflow.errors import ConfigError
from resflow.export.cog import export_cogs
from resflow.export.footprints import FootprintFormat, export_footprints, footprint_format
from resflow.export.settings import check_settings
from resflow.export.stac import write_collection
from resflow.store.reader import open_complete
from resflow.store.writer import OutputStore


def export_run(out_store: OutputStore | storage.Location, *, cog_dir: Path | str | None = None,
               footprints: Path | str | None = None, stac_dir: Path | str | None = None,
               threshold: float | None = None, min_building_m2: float | None = None,
               simplify_m: float | None = None,
               footprints_format: FootprintFormat | None = None) -> list[Path]:
    """Every export of a finished run, as ``resflow export`` and ``resflow run`` make them.

    COGs (:func:`export_cogs`), then footprints (:func:`export_footprints`), then a STAC
    Collection describing the store and whatever was written
    (:func:`resflow.export.stac.write_collection`), last, so it only names files that exist.
    Settings are checked before anything is written.

    Returns
    -------
    list of Path
        Every file written, in that order.

    Raises
    ------
    ResflowError
        Nothing to write, a setting out of range, an unknown footprints format, or an
        output that is not complete.
    """
    if cog_dir is None and footprints is None and stac_dir is None:
        raise ConfigError("resflow export", "no output was asked for",
                          "pass --cog DIR, --footprints FILE and/or --stac DIR")
    check_settings(threshold, min_building_m2, simplify_m)
    if footprints is not None:
        footprint_format(Path(footprints), footprints_format)
    store = open_complete(out_store)
    written: list[Path] = []
    cogs: list[Path] = []
    if cog_dir is not None:
        cogs = export_cogs(store, cog_dir, threshold=threshold, min_building_m2=min_building_m2)
        written.extend(cogs)
    footprints_file = None
    if footprints is not None:
        (footprints_file,) = export_footprints(
            store, footprints, format=footprints_format, threshold=threshold,
            min_building_m2=min_building_m2, simplify_m=simplify_m)
        written.append(footprints_file)
    if stac_dir is not None:
        written.extend(write_collection(store, stac_dir, cog_dir=cog_dir if cogs else None,
                                        footprints=footprints_file, threshold=threshold,
                                        min_building_m2=min_building_m2))
    return written
