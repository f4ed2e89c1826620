"""``resflow info``: what an archive (or an output store) holds, and what was refused."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from resflow.commands.refusals import exit_2_on_refusal

logger = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    """Add the ``info`` command to the CLI."""
    app.command("info")(info_command)


@exit_2_on_refusal
def info_command(
    archive: Annotated[str, typer.Argument(
        help="archive (or run output) store: a folder or a URL (s3://...)")],
    as_json: Annotated[bool, typer.Option("--json", help="print machine-readable JSON")] = False,
) -> None:
    """Describe scenes, bands, CRS, resolution, chips, km^2 and refused inputs."""

    summary = describe(archive)
    if as_json:
        typer.echo(json.dumps(strict_json(summary), indent=2, default=str, allow_nan=False))
    elif summary.get("kind") == "output":
        from resflow.store.reader import format_description

        typer.echo(format_description(summary))
    else:
        typer.echo(format_archive(summary))


def strict_json(value: Any) -> Any:
    """``value`` with every float NaN or infinity as None: strict JSON has neither, and a
    float scene's nodata is often NaN.

    >>> strict_json({"nodata": float("nan"), "bands": [1.0, float("inf")]})
    {'nodata': None, 'bands': [1.0, None]}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(item) for item in value]
    return value


def describe(path: Path | str) -> dict:
    """The summary dict of an imagery archive, or of an output store (resflow.store.reader)."""
    from resflow import storage
    from resflow.archive import Archive
    from resflow.store.format import KIND
    from resflow.store.root import read_root_attrs

    location = storage.normalise(path)
    if (read_root_attrs(location) or {}).get("resflow_kind") == KIND:
        from resflow.store.reader import describe as describe_output

        return describe_output(location)
    return Archive.open(location).summary()


def format_archive(summary: dict) -> str:
    """Human-readable lines for an archive summary; band numbers count from 1, as in
    ``--rgb``."""
    lines = [f"archive {summary['path']}: {len(summary['scenes'])} scenes"]
    for s in summary["scenes"]:
        res = s["resolution"]
        lines.append(
            f"  {s['name']}: {s['width']}x{s['height']} px, {len(s['bands'])} bands "
            f"{','.join(s['bands'])}{_mask_note(s)} ({s['dtype']}, nodata {s['nodata']}), "
            f"{s['crs']}, pixel {res[0]:.6g} x {res[1]:.6g}, {s['chips']} chips of "
            f"{s['chip']} px, {s['km2']:.4g} km^2, R,G,B from bands "
            f"{','.join(map(str, s['rgb_bands']))}, ground pixel {s['gsd_m']:.3g} m (source "
            f"{s['source_gsd_m']:.3g} m, resampling {s['resampling']})")
    for s in summary.get("skipped", []):
        lines.append(f"  skipped {s['name']}: {s['reason']}; not mapped ({s['source']})")
    if summary["refused"]:
        lines.append(f"refused inputs: {len(summary['refused'])}")
        lines.extend(f"  {r['source']}: {r['problem']}. Fix: {r['fix']}."
                     for r in summary["refused"])
    return "\n".join(lines)


def _mask_note(scene: dict) -> str:
    """What besides nodata marks a scene's pixels invalid, after its band names."""
    if scene.get("mask") == "alpha":
        return f" (+ alpha mask, band {scene['alpha_band']})"
    if scene.get("mask") == "per_dataset":
        return " (+ GDAL mask band)"
    return ""
