"""Refuse a run that cannot succeed before any engine starts or any file is written.

``resflow run`` checks its archive, gallery and output path here first: a missing or
tampered gallery, an archive that is not one, or an output that already exists (without
``--resume`` or ``--overwrite``) is refused while nothing has been started or created, so a
refused run never leaves an output directory, a cluster or a Spark application behind.
:func:`resflow.graph.run_graph` repeats the same checks for library callers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from resflow.errors import BackendError, ConfigError, InputError
from resflow.resolution import matches

if TYPE_CHECKING:
    from resflow.archive import Archive
    from resflow.config import RunConfig
    from resflow.executor import Executor
    from resflow.gallery import Gallery


def check_run(config: RunConfig) -> str:
    """Validate a run's inputs and output path without writing anything.

    Parameters
    ----------
    config
        The run; its ``archive``, ``gallery``, ``out``, ``resume`` and ``overwrite`` are checked.

    Returns
    -------
    str
        What the run will do with its output path: ``"new"``, ``"resume"`` or ``"overwrite"``.

    Raises
    ------
    ResflowError
        naming the file or field at fault (archive, gallery manifest or weight file, output),
        or the engine that cannot run the plan asked for (:func:`check_plan`).
    resflow.store.targets.OutputComplete
        ``--resume`` over a complete output.
    """
    from resflow.archive import Archive
    from resflow.inference.caches import gallery_key, load_gallery
    from resflow.plugins import load_backend
    from resflow.store.writer import OutputStore

    check_plan(load_backend(config.backend), config.plan)
    for field in ("archive", "out"):
        if getattr(config, field) is None:
            raise ConfigError(f"field '{field}'", f"a run needs an {field} path",
                              f"give the {field} on the command line or in the YAML file")
    archive = Archive.open(config.archive)  # type: ignore[arg-type]
    archive.check()  # a damaged scene is one refusal here, not a failure in every task
    check_resolution(archive, load_gallery(config.gallery))  # load verifies every sha256
    if not (config.overwrite or config.resume):
        check_exports_new(config, archive)
    return OutputStore.check_target(config.out, archive, overwrite=config.overwrite,  # type: ignore[arg-type]
                                    resume=config.resume,
                                    run_config=config.model_dump(mode="json"),
                                    gallery_version=gallery_key(config.gallery)[1])


def check_exports_new(config: RunConfig, archive: Archive) -> None:
    """Refuse, before any work, a run whose exports would replace files already there: the
    footprints file, or a COG named after one of the archive's scenes in ``cog_dir``
    (``--overwrite`` replaces them, as it replaces the store)."""
    from resflow.exports.cog import group_cog_names
    from resflow.exports.files import refuse_existing
    from resflow.store.format import group_names

    targets = [Path(config.footprints)] if config.footprints is not None else []
    if config.cog_dir is not None:
        for group in group_names(archive.scenes).values():
            targets += [Path(config.cog_dir) / name for name in group_cog_names(group)]
    refuse_existing(targets)


def check_plan(engine: type[Executor], plan: str) -> None:
    """Refuse the ``regrouped`` plan on an engine that does not implement ``group_by_key``.

    The regroup is optional in the engine contract (:mod:`resflow.executor`): the default
    ``fused`` plan never calls it, so such an engine runs every other run as it is.

    Raises
    ------
    BackendError
        naming the engine and the plan that it can run.
    """
    if plan == "regrouped" and not engine.regroups():
        raise BackendError(f"backend '{engine.name}'", f"the '{engine.name}' engine does not "
                           "implement group_by_key, which the regrouped plan needs",
                           "set plan: fused in the run config (the default), which writes "
                           "the same maps without a regroup")


def check_resolution(archive: Archive, gallery: Gallery) -> None:
    """Refuse a scene stored at another ground resolution than the gallery works at.

    Models see buildings at the scale they were trained at, so a mismatch would give maps
    that look fine and are wrong; ``resflow ingest --gsd`` brings scenes to the gallery's.
    """
    for info in archive.scenes.values():
        if not matches(info.gsd_m, gallery.gsd_m):
            raise InputError(  # InputError masks URL credentials (resflow.redaction)
                f"{archive.display}: scene '{info.name}'",
                f"stored at {info.gsd_m:.3g} m per pixel, but the gallery {gallery.path} "
                f"works at {gallery.gsd_m:g} m",
                f"re-ingest the sources with `resflow ingest --gsd {gallery.gsd_m:g}` into a "
                "new archive, or run a gallery trained at the archive's resolution")
