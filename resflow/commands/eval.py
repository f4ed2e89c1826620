"""``resflow eval``: score a finished building map against footprint labels."""

from __future__ import annotations

import json
import logging
from typing import Annotated

import typer

from resflow.commands.options import ConfigFile, PrintConfig, Sets, local_path, show_config
from resflow.commands.refusals import exit_2_on_refusal

logger = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    """Add the ``eval`` command to the CLI."""
    app.command("eval")(eval_command)


@exit_2_on_refusal
def eval_command(
    store: Annotated[str, typer.Argument(
        metavar="STORE", help="a complete output store from `resflow run`, on local disk")],
    labels: Annotated[list[str], typer.Option(
        "--labels", help="building footprints in any vector format GDAL/OGR reads (GeoJSON, "
        "GeoPackage, Shapefile, FlatGeobuf...) or a georeferenced mask, any CRS, on local "
        "disk (repeatable)")],
    covered: Annotated[list[str] | None, typer.Option(
        "--covered", metavar="SCENE", help="a scene the labels cover although no label "
        "polygon reaches it (empty land): scored with no building, so every building "
        "predicted there is a false alarm (repeatable)")] = None,
    threshold: Annotated[float | None, typer.Option(
        help="re-threshold the probability at this value (default: the run's mask)")] = None,
    out: Annotated[str | None, typer.Option(
        "--out", "-o", metavar="DIR", help="local folder for eval.json and the overlay PNGs "
        "(default: STORE's folder/<STORE>-eval)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print eval.json instead")] = False,
    config: ConfigFile = None,
    sets: Sets = None,
    print_config: PrintConfig = False,
) -> None:
    """Score the building maps of STORE against footprint labels, per scene and overall.

    Pixel precision, recall, F1 and IoU, and object precision, recall and F1 (one-to-one
    matches at IoU >= 0.5). A scene is scored when a label file reaches it or it is named
    with --covered; other scenes are listed as not labelled. Writes eval.json and one
    overlay PNG per scored scene. Settings (threshold, covered) come from their defaults,
    then --config, then each --set, then the flags. Exit code 0 when scored, 2 on bad input
    (the store, a label file, a --covered name, the threshold).

    Every scene, scored or not, also gets seam ratios for its probability and its mask:
    the mean change between neighbouring pixels across a chip border over the mean change
    everywhere else. About 1 means the chip grid does not show; well above 1 means it does.
    The imagery itself gives 0.8-1.9 on small scenes, so read a small scene's ratio as noise.
    """
    from resflow.config import load_config
    from resflow.evaluation import evaluate, format_table
    from resflow.evaluation_settings import EvalConfig

    settings = load_config(config, EvalConfig, sets=sets or (), threshold=threshold,
                           covered=covered or None)
    if print_config:
        show_config(settings)
        return
    fix = "copy it to local disk first (e.g. aws s3 cp --recursive) and give that path"
    result = evaluate(local_path("STORE", store, fix),
                      [local_path("--labels", path, fix) for path in labels],
                      threshold=settings.threshold, covered=settings.covered,
                      report_dir=local_path("--out", out, "write the report to a local folder, "
                                            "then copy it"))
    typer.echo(json.dumps(result, indent=2) if as_json else format_table(result))
