"""Spark's Python daemon with resflow's task code imported once, before it forks workers.

Spark starts one daemon per executor and forks a Python worker from it for each task slot
(``spark.python.daemon.module``). PySpark's own daemon imports nothing of resflow, so every
worker imported torch, the models and the stages itself, about 2.5 core-seconds each: on a
16-core executor, 40 s before its first chip, and again whenever a worker is replaced. Here
the daemon imports them and each worker is forked with them in place. Forking afterwards is
safe: the imports touch no GPU (CUDA starts in each worker), zarr resets its I/O loop in a
forked child, and the BLAS thread pools numpy and scipy start re-create theirs.

Workers block SIGINT: a terminal's Ctrl-C reaches every process of a local run, and a
worker would die of it mid-task (the executor logging a crash). The driver cancels the
jobs instead (:mod:`resflow_spark.interrupts`).
"""

import signal

import pyspark.daemon

import resflow.inference.window_work  # noqa: F401  (torch, the models, the stage functions)
import resflow_spark.tasks  # noqa: F401  (what each task unpickles)

_spark_worker = pyspark.daemon.worker


def _worker_without_sigint(*args: object) -> int:
    # PySpark's worker restores Python's SIGINT handler; blocked, the signal never arrives.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    return _spark_worker(*args)


pyspark.daemon.worker = _worker_without_sigint

if __name__ == "__main__":
    pyspark.daemon.manager()
