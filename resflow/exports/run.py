"""Every export of a finished run at once, as ``resflow export`` and ``resflow run`` make
them: COGs, then footprints, then a STAC Collection naming what was written.
"""

from __future__ import annotations

from pathlib import Path

from resflow import storage
from resflow.errors import ConfigError
from resflow.exports.cog import cog_files, export_cogs
from resflow.exports.files import check_writable, refuse_existing
from resflow.exports.footprints import export_footprints, footprint_format
from resflow.exports.settings import FootprintFormat, export_settings
from resflow.exports.stac import COLLECTION_FILE, write_collection
from resflow.store.reader import open_complete
from resflow.store.writer import OutputStore


def export_run(out_store: OutputStore | storage.Location, *, cog_dir: Path | str | None = None,
               footprints: Path | str | None = None, stac_dir: Path | str | None = None,
               threshold: float | None = None, min_building_m2: float | None = None,
               simplify_m: float | None = None,
               footprints_format: FootprintFormat | None = None,
               overwrite: bool = False) -> list[Path]:
    """Every export of a finished run, as ``resflow export`` and ``resflow run`` make them.

    COGs (:func:`export_cogs`), then footprints (:func:`export_footprints`), then a STAC
    Collection describing the store and whatever was written
    (:func:`resflow.exports.stac.write_collection`), last, so it only names files that exist.
    Settings, and that every target folder can be written, are checked before anything is
    written; unless ``overwrite`` (``--overwrite``) an existing footprints file or COG is
    refused then too, so a refused export writes nothing.

    Returns
    -------
    list of Path
        Every file written, in that order.

    Raises
    ------
    ResflowError
        Nothing to write, a setting out of range, an unknown footprints format, an output
        that is not complete, a folder that cannot be written, or (``overwrite=False``) a
        file that would be replaced.
    """
    if cog_dir is None and footprints is None and stac_dir is None:
        raise ConfigError("resflow export", "no output was asked for",
                          "pass --cog-dir DIR, --footprints FILE and/or --stac-dir DIR")
    export_settings(threshold=threshold, min_building_m2=min_building_m2,
                    simplify_m=simplify_m, footprints_format=footprints_format,
                    overwrite=overwrite)
    if footprints is not None:
        footprint_format(Path(footprints), footprints_format)
    store = open_complete(out_store)
    targets = [*(cog_files(store, cog_dir) if cog_dir is not None else []),
               *([Path(footprints)] if footprints is not None else [])]
    check_writable([*targets, *([Path(stac_dir) / COLLECTION_FILE] if stac_dir else [])])
    if not overwrite:
        refuse_existing(targets)
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
