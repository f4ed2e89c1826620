"""Refuse a run that cannot succeed before any engine starts or any file is written.

``resflow run`` checks its archive, gallery and output path here first: a missing or
tampered gallery, an archive that is not one, or an output that already exists (without
``--resume`` or ``--overwrite``) is refused while nothing has been started or created, so a
refused run never leaves an output directory, a cluster or a Spark application behind.
:func:`resflow.graph.run_graph` repeats the same checks for library callers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from resflow.errors import ConfigError

if TYPE_CHECKING:
    from resflow.config import RunConfig


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
        naming the file or field at fault (archive, gallery manifest or weight file, output).
    resflow.outputs.OutputComplete
        ``--resume`` over a complete output.
    """
    from resflow.archive import Archive
    from resflow.graph import load_gallery
    from resflow.outputs import OutputStore

    for field in ("archive", "out"):
        if getattr(config, field) is None:
            raise ConfigError(f"field '{field}'", f"a run needs an {field} path",
                              f"give the {field} on the command line or in the YAML file")
    archive = Archive.open(config.archive)  # type: ignore[arg-type]
    load_gallery(config.gallery)  # verifies every sha256
    return OutputStore.check_target(config.out, archive, overwrite=config.overwrite,  # type: ignore[arg-type]
                                    resume=config.resume,
                                    run_config=config.model_dump(mode="json"))
