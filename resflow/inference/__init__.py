"""The inference graph's work, run on the workers: what each task of either plan does.

A chip's path, read top to bottom, is :mod:`~resflow.inference.window_work` (read, encode,
route, segment, trim, write). :mod:`~resflow.inference.fused` and
:mod:`~resflow.inference.regrouped` are the two plans built from it;
:mod:`~resflow.inference.settings` is what every task is told,
:mod:`~resflow.inference.caches` what a worker process keeps across tasks,
:mod:`~resflow.inference.records` what the regrouped plan passes between stages and
:mod:`~resflow.inference.summary` what every task returns. :mod:`resflow.graph` wires them
into an engine's graph on the driver.
"""
