"""The GPU check: resflow's stages and engines on one CUDA GPU, measured and set against the CPU.

``benchmarks/gpu_check.sh`` runs it on a GPU host that has no package index, with the wheels
and the archive carried from here (``benchmarks/README.md``, "GPU check"); ``--device cpu``
rehearses every step on any machine. ``python -m benchmarks.gpu_check`` has three
subcommands: ``wheels`` (:mod:`.wheels`, :mod:`.pack`), ``archive`` (:mod:`.archive`) and
``run`` (:mod:`.check`: :mod:`.compare`, :mod:`.input_route`, :mod:`.sweep`,
:mod:`.engines`, summarised by :mod:`.report`), with every area rate also scaled to 0.5 m
ground pixels, where RESFlow reported 5.245 km^2/s (:mod:`.rates`).
"""
