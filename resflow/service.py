"""Running the graph, once for every caller: ``resflow run``, ``resflow predict``,
``resflow.run`` and ``resflow.predict`` all map an archive through :func:`run_config`.

It takes a validated run config (the commands resolve it from ``--config``, ``--set`` and
flags; the Python API from keyword arguments), refuses what cannot run before an engine
starts, builds the engine (:meth:`resflow.executor.Executor.from_settings`), runs the graph
and its exports, and logs what a person may want to see to the ``resflow`` logger. How a
refusal or a failed chip is shown (a line on stderr and an exit code, or an exception
worded for Python) stays with the caller.
"""

from __future__ import annotations

import importlib
import json
import logging
from typing import TYPE_CHECKING, Any

from resflow.errors import BackendError
from resflow.redaction import redact, redact_text

if TYPE_CHECKING:
    from resflow.config import RunConfig
    from resflow.executor import Executor
    from resflow.graph import RunResult

logger = logging.getLogger(__name__)


def run_config(config: RunConfig, *, client: Any = None, progress: bool = False) -> RunResult:
    """Map the archive of ``config`` into its output store, with its exports; what the
    run did (:class:`resflow.graph.RunResult`).

    ``client`` is a cluster the caller already has (:func:`session`), used as is and never
    closed; without one the engine starts from its settings and closes after the run.

    Raises
    ------
    ResflowError
        Before any work: an engine that is not installed or cannot run the plan, a client
        that is not the engine's session, an unusable archive, gallery or output location.
    resflow.store.targets.OutputComplete
        ``resume`` over an output that is already complete (nothing to do).
    """
    from resflow.graph import run_graph
    from resflow.interrupts import progress_line
    from resflow.plugins import load_backend
    from resflow.preflight import check_run

    engine = load_backend(config.backend)
    existing = session(engine, client)
    logger.debug("run settings: %s", json.dumps(redact(config.model_dump(mode="json"))))
    if check_run(config) == "resume":
        logger.info("%s", progress_line(config.out, "resuming"))
    with engine.from_settings(config.engine_settings(config.backend), device=config.device,
                              progress=progress, **existing) as executor:
        if executor.dashboard_link:
            link = redact_text(executor.dashboard_link)
            logger.info("%s dashboard: %s", config.backend, link, extra={"dashboard": link})
        logger.debug("%s engine: %s", config.backend, redact(executor.describe()))
        result = run_graph(config, executor)
    for path in result.exports:
        logger.info("wrote %s", path, extra={"path": str(path)})
    return result


def session(engine: type[Executor], client: Any) -> dict[str, Any]:
    """``client`` as the keyword argument ``engine``'s constructor takes it under (the
    engine declares it: :attr:`resflow.executor.Executor.session`); empty without a client.

    Raises
    ------
    BackendError
        The engine cannot run on an existing session, or ``client`` is not its kind.
    """
    if client is None:
        return {}
    from resflow.plugins import engine_classes

    takers = {name: cls.session for name, cls in engine_classes().items() if cls.session}
    if engine.session is None:
        takes = " or ".join(f"backend='{name}'" for name in sorted(takers))
        raise BackendError("client", f"the '{engine.name}' engine cannot run on an existing "
                           "cluster", f"leave client out, or pass it with {takes}")
    keyword, module, cls_name = engine.session
    if not isinstance(client, getattr(importlib.import_module(module), cls_name)):
        given = type(client).__module__.split(".")[0]
        owner = [name for name, (_, m, _) in takers.items() if m.split(".")[0] == given]
        fix = (f"pass backend='{owner[0]}'" if owner else
               f"pass a {module}.{cls_name}, or leave client out to start one")
        raise BackendError("client", f"the '{engine.name}' engine runs on a {module}.{cls_name}"
                           f", not a {type(client).__module__}.{type(client).__qualname__}", fix)
    return {keyword: client}
