"""Spark's Python daemon with resflow's task code imported once, before it forks workers.

Spark starts one daemon per executor and forks a Python worker from it for each task slot
(``spark.python.daemon.module``). PySpark's own daemon imports nothing of resflow, so every
worker imported torch, the models and the stages itself, about 2.5 core-seconds each: on a
16-core executor, 40 s before its first chip, and again whenever a worker is replaced. Here
the daemon imports them and each worker is forked with them in place. Forking afterwards is
safe: the imports touch no GPU (CUDA starts in each worker), zarr resets its I/O loop in a
forked child, and the BLAS thread pools numpy and scipy start re-create theirs.
"""

from pyspark.daemon import manager

import resflow.inference.window_work  # noqa: F401  (torch, the models, the stage functions)
import resflow_spark.tasks  # noqa: F401  (what each task unpickles)

if __name__ == "__main__":
    manager()
