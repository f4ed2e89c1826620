"""resflow: partitioned three-stage deep-learning inference over satellite imagery archives.

The core package is engine-agnostic: it never imports dask or pyspark. Engines are found
through the ``resflow.backends`` entry-point group (see :mod:`resflow.plugins`).
"""

from resflow.errors import ResflowError

__version__ = "0.1.0"
__all__ = ["ResflowError", "__version__"]
