"""resflow's studies, kept out of the ``resflow`` package and out of its wheel and sdist:
they run from a checkout of the repository (``python -m benchmarks.<study>`` from its root).

* :mod:`benchmarks.engine_study`: every engine against the compute limit and a hand-written
  loop, scaling, sweeps (``resflow bench``; needs ``pip install -e ".[bench]"``);
* :mod:`benchmarks.accuracy` and :mod:`benchmarks.default_gallery`: the accuracy study and
  the bundled gallery's retraining (``python -m benchmarks.accuracy``, ``make gallery``);
* :mod:`benchmarks.gpu_check`: resflow on one CUDA GPU of a host without a package index;
* ``host_cost.py`` (``python -m benchmarks.host_cost``): host CPU cost per chip and per scene
  on every engine, models replayed (``host_replay.py``, ``host_engines.py``, ``host_archives.py``);
* ``soak.py`` and ``malloc_trim.py``: the soak test (``python -m benchmarks.soak``) and
  the malloc profile (``python benchmarks/malloc_trim.py``).

Results and their analysis are in ``benchmarks/README.md``.
"""
