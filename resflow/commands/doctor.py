"""``resflow doctor``: what this machine offers resflow (Python, Java, torch, GPUs, backends)."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the ``doctor`` command to the CLI."""
    app.command("doctor")(doctor_command)


def doctor_command(
    as_json: Annotated[bool, typer.Option("--json", help="print machine-readable JSON")] = False,
) -> None:
    """Check the environment: Python, Java (for Spark), torch and CUDA, GPUs, backends."""
    report = diagnose()
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    for key, value in report.items():
        typer.echo(f"{key:>10}: {value}")


def diagnose() -> dict:
    """A JSON-ready description of the environment."""
    import warnings

    from resflow.plugins import declared_backends, list_backends

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        installed = sorted(list_backends())
    broken = [str(w.message) for w in caught]
    report = {"python": f"{platform.python_version()} ({platform.platform()})",
              "java": java_version(), **torch_status(),
              "backends": ", ".join(installed) or "none",
              "declared": ", ".join(declared_backends())}
    if broken:
        report["broken"] = " | ".join(broken)
    return report


def java_version() -> str:
    """First line of ``java -version`` (Spark needs Java 17+), or why it is unavailable."""
    java = shutil.which("java")
    if java is None:
        return "not found (the spark backend needs Java 17 or 21 on PATH)"
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"failed to run ({exc})"
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[0] if lines else "no version output"


def torch_status() -> dict:
    """torch version, CUDA availability and GPU count."""
    try:
        import torch
    except ImportError as exc:
        return {"torch": f"not importable ({exc})", "cuda": "n/a", "gpus": 0}
    cuda = torch.cuda.is_available()
    return {"torch": torch.__version__,
            "cuda": torch.version.cuda if cuda else f"not available (build {torch.version.cuda})",
            "gpus": torch.cuda.device_count() if cuda else 0}
