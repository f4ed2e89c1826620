"""What one ``run`` of the check measures, with the defaults of a full check and of
``--quick``.

The check imports resflow only once it runs (the command line answers ``--help`` and
packs wheels without torch), so the graph's window and halo are repeated here and a test
holds them equal to :class:`resflow.config.RunConfig`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the check imports torch and resflow only once it runs
    from resflow.devices import DevicePreference

#: The gitignored folder for the carried wheels and archive, the install and the results.
CHECK_DIR = Path("gpu-check")
#: The graph's prediction window and halo (``RunConfig.window``, ``RunConfig.halo``), kept
#: here because this module imports resflow only once the check runs; a test holds them equal.
GRAPH_WINDOW = 4
GRAPH_HALO = 128


@dataclass(frozen=True)
class CheckOptions:
    """What one ``run`` measures.

    Attributes
    ----------
    archive
        The archive (a ``.zarr`` or the folder holding one).
    out
        Folder for ``gpu-check.json`` and ``gpu-check.md``, nothing else: results come back
        from a GPU host as a few files.
    logs
        Folder for the engine runs' logs and the ``nvidia-smi`` samples (the summary keeps
        each failed run's last lines).
    device
        ``"cuda"``, ``"cpu"`` (the rehearsal) or ``"auto"``.
    gallery
        Model gallery; ``None`` = the bundled default.
    batch_sizes
        Batch sizes swept over the stage functions; the first is the reference of the
        batch-invariance comparison.
    compare_chips
        Chips run on both the CPU and the device: the archive's first prediction windows
        holding at least this many.
    sweep_chips
        Chips per sweep pass: the archive's windows repeated until they hold this many, so
        a fast GPU runs long enough to time (0: the archive's windows once).
    repeats
        Timed passes per sweep point, and timed ``resflow run`` per engine.
    engines
        Engines run end to end; Spark only where pyspark imports and Java is found.
    engine_batch_size
        ``--batch-size`` of the engine runs.
    workers
        ``--workers`` of the Dask and Spark runs.
    cold_run
        Run each engine once untimed first (caches, CUDA kernels loaded from disk).
    halo, window
        Context pixels around each prediction window and chips per side of one, for the
        stage functions and the engine runs alike (default: the graph's).
    run_timeout_s
        Longest one ``resflow run`` may take before it is killed.
    large_run_chips
        One timed Dask run over the archive replicated on the host to at least this many
        chips (:func:`benchmarks.gpu_check.archive.replicate`), long enough to time the
        engine at the GPU's pace; 0: none.
    """

    archive: Path
    out: Path
    logs: Path = CHECK_DIR / "logs"
    device: DevicePreference = "cuda"
    gallery: Path | None = None
    batch_sizes: tuple[int, ...] = (1, 4, 8, 16, 32, 64)
    compare_chips: int = 64
    sweep_chips: int = 512
    repeats: int = 3
    engines: tuple[str, ...] = ("local", "dask", "spark")
    engine_batch_size: int = 8
    workers: int = 4
    cold_run: bool = True
    halo: int = GRAPH_HALO
    window: int = GRAPH_WINDOW
    run_timeout_s: float = 600.0
    large_run_chips: int = 5000
#: ``--quick``: a small sweep and one run of each, a few minutes on 2 CPU cores.
QUICK = {"batch_sizes": (1, 4, 8), "compare_chips": 8, "sweep_chips": 32, "repeats": 1,
         "cold_run": False, "workers": 2, "large_run_chips": 72}
