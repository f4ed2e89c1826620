"""The comparative study behind ``resflow bench``: archives for scaling studies, the compute
limit, the hand-written baseline, every engine side by side, sweeps, plots and tables.

Not part of the core: :mod:`resflow.commands.bench` imports :mod:`benchmarks.engine_study.study`
only when the command runs. ``benchmarks/soak.py`` uses its scaled archives too.
"""
