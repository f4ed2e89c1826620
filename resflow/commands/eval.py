"""``resflow eval``: score a finished building map against footprint labels."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from resflow.commands.refusals import exit_2_on_refusal

logger = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    """Add the ``eval`` command to the CLI."""
    app.command("eval")(eval_command)


@exit_2_on_refusal
def eval_command(
    out: Annotated[Path, typer.Argument(help="a complete output store from `resflow run`")],
    labels: Annotated[list[Path], typer.Option(
        "--labels", help="building footprints in any vector format GDAL/OGR reads (GeoJSON, "
        "GeoPackage, Shapefile, FlatGeobuf...) or a georeferenced mask, any CRS (repeatable)")],
    covered: Annotated[list[str] | None, typer.Option(
        "--covered", metavar="SCENE", help="a scene the labels cover although no label "
        "polygon reaches it (empty land): scored with no building, so every building "
        "predicted there is a false alarm (repeatable)")] = None,
    threshold: Annotated[float | None, typer.Option(
        help="re-threshold the probability at this value (default: the run's mask)")] = None,
    report_dir: Annotated[Path | None, typer.Option(
        help="where eval.json and the overlay PNGs go (default: OUT's folder/<OUT>-eval)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print eval.json instead")] = False,
) -> None:
    """Score the building maps of OUT against footprint labels, per scene and overall.

    Pixel precision, recall, F1 and IoU, and object precision, recall and F1 (one-to-one
    matches at IoU >= 0.5). A scene is scored when a label file reaches it or it is named
    with --covered; other scenes are listed as not labelled. Writes eval.json and one
    overlay PNG per scored scene. Exit code 0 when scored, 2 on bad input (the store, a
    label file, a --covered name, the threshold).

    Every scene, scored or not, also gets seam ratios for its probability and its mask:
    the mean change between neighbouring pixels across a chip border over the mean change
    everywhere else. About 1 means the chip grid does not show; well above 1 means it does.
    The imagery itself gives 0.8-1.9 on small scenes, so read a small scene's ratio as noise.
    """
    from resflow.evaluation import evaluate, format_table

    result = evaluate(out, labels, threshold=threshold, report_dir=report_dir,
                      covered=covered or [])
    typer.echo(json.dumps(result, indent=2) if as_json else format_table(result))
