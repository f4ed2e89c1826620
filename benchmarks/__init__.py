"""resflow's studies, kept out of the ``resflow`` package, its wheel and sdist: they run from
a checkout (``python -m benchmarks.<study>`` from the repository root).

* :mod:`benchmarks.engine_study`: every engine against the compute limit and a hand-written
  loop, scaling, sweeps (``resflow bench``; needs ``pip install -e ".[bench]"``);
* :mod:`benchmarks.accuracy`, :mod:`benchmarks.default_gallery`: the accuracy study and the
  bundled gallery's retraining (``make accuracy``, ``make gallery``);
* :mod:`benchmarks.gpu_check`: resflow on one CUDA GPU of a host without a package index;
* ``host_cost`` (with ``host_replay``, ``host_engines``, ``host_archives``): host CPU per
  chip and per scene on every engine, models replayed; ``mask_cost``: the mask step alone;
* ``seams``, ``planning``: seam ratios at chip borders; the driver's cost as archives grow;
* ``soak``, ``malloc_trim``: workers killed during long runs, the malloc profile.

Results, analysis and each command: ``benchmarks/README.md``.
"""
