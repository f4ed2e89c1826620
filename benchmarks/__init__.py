"""resflow's studies, kept out of the core ``resflow`` package.

* :mod:`benchmarks.engine_study`: the comparative performance study behind
  ``resflow bench`` (every engine against the compute limit and a hand-written loop,
  scaling, sweeps); installed with the distribution so the command finds it, and needs the
  ``bench`` extra (``pip install -e ".[bench]"``);
* :mod:`benchmarks.accuracy` and :mod:`benchmarks.default_gallery`: the accuracy study and
  the bundled gallery's retraining (``python -m benchmarks.accuracy``, ``make gallery``);
* ``soak.py`` and ``malloc_trim.py``: the soak test and the malloc profile, run as scripts.

Results and their analysis are in ``benchmarks/README.md``.
"""
