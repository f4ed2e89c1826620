"""``resflow doctor``: what this machine offers resflow (Python, torch, GPUs, backends).

Each installed engine adds what it depends on (``Executor.environment()``: the Spark engine
reports Java), so this module names no engine.
"""

from __future__ import annotations

import json
import platform
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the ``doctor`` command to the CLI."""
    app.command("doctor")(doctor_command)


def doctor_command(
    as_json: Annotated[bool, typer.Option("--json", help="print machine-readable JSON")] = False,
) -> None:
    """Check the environment: Python, torch and CUDA, GPUs, backends and what they need."""
    report = diagnose()
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    for key, value in report.items():
        typer.echo(f"{key:>10}: {value}")


def diagnose() -> dict:
    """A JSON-ready description of the environment."""
    import warnings

    from resflow.plugins import declared_backends, engine_classes, list_backends

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        installed = sorted(list_backends())
    broken = [str(w.message) for w in caught]
    needs: dict[str, str] = {}
    for name, cls in sorted(engine_classes().items()):
        try:
            needs.update(cls.environment())
        except Exception as exc:  # a third-party engine's check must not stop the doctor
            needs[name] = f"environment check failed ({exc.__class__.__name__}: {exc})"
    report = {"python": f"{platform.python_version()} ({platform.platform()})",
              **needs, **torch_status(),
              "backends": ", ".join(installed) or "none",
              "declared": ", ".join(declared_backends())}
    if broken:
        report["broken"] = " | ".join(broken)
    return report


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
