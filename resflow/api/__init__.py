"""resflow from Python, for notebooks and scripts: each command as a function.

``resflow.ingest``, ``resflow.train``, ``resflow.run``, ``resflow.predict``,
``resflow.export``, ``resflow.evaluate`` and ``resflow.view`` take their input first, then
``out``, then the command's settings as keyword arguments named as in a YAML file
(validated as the command line validates its flags); ``resflow.open_maps`` opens the
maps. They print nothing (a progress bar only with ``progress=True``) and log what a person
may want to see to the ``resflow`` logger; refusals are
:class:`~resflow.errors.ResflowError` subclasses worded for Python (``pass resume=True``
where the CLI says ``pass --resume``).
"""

from resflow.api.mapping import open_maps, predict, run
from resflow.api.steps import evaluate, export, ingest, train, view

__all__ = ["evaluate", "export", "ingest", "open_maps", "predict", "run", "train", "view"]
