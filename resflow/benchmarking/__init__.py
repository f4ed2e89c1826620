"""Library side of ``resflow bench``: archives for scaling studies, the compute limit, the
hand-written baseline and the comparative study. The scripts in ``benchmarks/`` drive it."""
