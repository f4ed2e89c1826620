"""``resflow gallery show``: what a gallery holds, how it scored, and a mosaic of its buckets."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from resflow.commands.options import local_path
from resflow.commands.refusals import exit_2_on_refusal

logger = logging.getLogger(__name__)

#: Columns of the evaluation table, in order.
METRIC_COLUMNS = ("pixel_iou", "pixel_f1", "pixel_precision", "pixel_recall", "object_f1")

gallery_app = typer.Typer(help="Inspect model galleries.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the ``gallery`` command group to the CLI."""
    app.add_typer(gallery_app, name="gallery")


@gallery_app.command("show")
@exit_2_on_refusal
def show_command(
    gallery: Annotated[str | None, typer.Argument(
        help="gallery: a folder or a URL (default: the bundled one)")] = None,
    archive: Annotated[str | None, typer.Option(
        help="archive to draw sample chips from: a folder or a URL (default: the one it was "
        "trained on)")] = None,
    out: Annotated[str, typer.Option(
        "--out", "-o", help="mosaic PNG to write, on local disk")] = "bucket_mosaic.png",
    per_bucket: Annotated[int, typer.Option(help="sample chips per bucket row")] = 8,
) -> None:
    """Verify GALLERY, print its manifest summary and metrics, and write a bucket mosaic."""
    from resflow.gallery import Gallery
    from resflow.inference.caches import gallery_folder
    from resflow.mosaic import write_mosaic

    png = local_path("--out", out, "write the mosaic to a local file, then copy it")
    loaded = Gallery.load(gallery_folder(gallery))
    typer.echo(format_manifest(loaded.manifest, loaded.path))
    trained_on = Path(loaded.manifest.get("data", {}).get("archive", ""))
    if archive is None and not trained_on.is_dir():
        logger.warning("no mosaic: the training archive %s is gone; pass --archive", trained_on)
        return
    write_mosaic(loaded, archive or trained_on, png, per_bucket=per_bucket)
    typer.echo(f"mosaic: {png}")


def format_manifest(manifest: dict, path: Path) -> str:
    """Human-readable summary: buckets, their models, provenance and test scores."""
    lines = [f"gallery {path} (schema {manifest['schema_version']}, {manifest['bits']}-bit codes,"
             f" seed {manifest.get('seed')}, working ground resolution "
             f"{manifest['resolution']['gsd_m']:g} m: ingest with --gsd "
             f"{manifest['resolution']['gsd_m']:g})"]
    training = manifest.get("training", {})
    criterion = training.get("bucket_criterion", {})
    agreement = training.get("bucketing", {}).get("routing_agrees_with_kmeans")
    lines.append(f"  buckets: {len(manifest['buckets'])} ({criterion.get('method', '?')})"
                 + (f", Hamming routing agrees with k-means on {agreement:.0%} of training "
                    "chips" if agreement is not None else ""))
    for b in manifest["buckets"]:
        lines.append(f"    {b['id']}: code {b['code']}  model {b['model']:<9} "
                     f"chips {b.get('chips', '?')}, labelled {b.get('labelled_chips', '?')}"
                     + (f"  ({b['decision']})" if "decision" in b else ""))
    lines.append(f"  encoder: {manifest['encoder']['source']} "
                 f"sha256 {manifest['encoder']['sha256'][:12]}...")
    for scene in manifest.get("data", {}).get("scenes", []):
        lines.append(f"  data: {scene['source']} sha256 {scene['sha256'][:12]}..."
                     + ("  (labelled)" if scene.get("labelled") else ""))
    for label in manifest.get("data", {}).get("labels", []):
        lines.append(f"  labels: {label['path']} sha256 {label['sha256'][:12]}...")
    if manifest.get("metrics", {}).get("test"):
        lines.append("  held-out test region:")
        lines.append(format_metrics(manifest["metrics"]["test"]))
    return "\n".join(lines)


def format_metrics(test: dict) -> str:
    """A fixed-width table of the test scores, one row per model set."""
    header = f"    {'model':<10}" + "".join(f"{c:>17}" for c in METRIC_COLUMNS)
    rows = [f"    {name:<10}" + "".join(f"{scores[c]:>17.3f}" for c in METRIC_COLUMNS)
            for name, scores in test.items()]
    return "\n".join([header, *rows])
