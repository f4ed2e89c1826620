"""``resflow train``: a model gallery from an imagery archive and building labels."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from resflow.commands.options import ConfigFile, PrintConfig, Sets, local_path, show_config
from resflow.commands.refusals import exit_2_on_refusal

logger = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    """Add the ``train`` command to the CLI."""
    app.command("train")(train_command)


@exit_2_on_refusal
def train_command(
    archive: Annotated[str, typer.Argument(
        help="imagery archive from `resflow ingest`: a folder or a URL (s3://...)")],
    labels: Annotated[list[str], typer.Option(
        "--labels", help="building footprints in any vector format OGR reads (GeoJSON, "
        "GeoPackage, Shapefile, ...) or a georeferenced mask, any CRS, on local disk; each "
        "file labels the scenes its extent covers (repeatable)")],
    out: Annotated[str, typer.Option(
        "--out", "-o", help="gallery folder to write, on local disk")],
    seed: Annotated[int | None, typer.Option(
        help="seed of every random choice (default 0)")] = None,
    buckets: Annotated[str | None, typer.Option(
        help="number of buckets, or 'auto' for the best silhouette over 2..8 (default "
        "auto)")] = None,
    mono_steps: Annotated[int | None, typer.Option(help="mono decoder steps (default 600)")] = None,
    bucket_steps: Annotated[int | None, typer.Option(
        help="per-bucket fine-tune steps (default 200)")] = None,
    scene: Annotated[list[str] | None, typer.Option(
        "--scene", help="train on this labelled scene only (repeatable; default: all)")] = None,
    holdout: Annotated[list[str] | None, typer.Option(
        "--holdout", help="labelled scene scored whole as the test set and never trained on "
        "(repeatable; default: the bottom 20% of every labelled scene)")] = None,
    config: ConfigFile = None,
    sets: Sets = None,
    print_config: PrintConfig = False,
) -> None:
    """Train the hashing head, bucket codes and decoders; score ensemble vs mono on held-out
    rows; write GALLERY/manifest.json, the safetensors weights and GALLERY/metrics.json.

    Settings (every field of the training config: steps, learning rates, buckets...) come
    from its defaults, then --config, then each --set, then the other flags; the gallery's
    manifest records them.
    """
    from resflow.config import load_config
    from resflow.errors import ConfigError
    from resflow.training.config import training_settings

    if buckets not in (None, "auto") and not (buckets.isdigit() and int(buckets) >= 1):
        raise ConfigError("--buckets", f"'{buckets}' is neither 'auto' nor a count >= 1",
                          "write e.g. --buckets 4 or --buckets auto")
    settings = load_config(
        config, training_settings(), sets=sets or (), seed=seed, mono_steps=mono_steps,
        bucket_steps=bucket_steps,
        buckets=int(buckets) if buckets not in (None, "auto") else None)
    if buckets == "auto":  # an explicit 'auto' beats the file's count and --set's
        settings = settings.model_copy(update={"buckets": None})
    if print_config:
        show_config(settings)
        return
    folder = local_path("--out", out, "train into a local folder, then copy the gallery "
                        "(`resflow run --gallery` reads it from a URL)")
    label_files = [local_path("--labels", path, "download the label file and give its "
                              "local path") for path in labels]
    from resflow.training.train import train

    gallery = train(archive, label_files, folder, scenes=scene, holdout=holdout or (),
                    **settings.model_dump())
    from resflow.commands.gallery import format_metrics

    seconds = gallery.manifest["training"]["seconds"]
    typer.echo(f"{out}: {len(gallery.bucket_codes)} buckets, models "
               + ", ".join(gallery.model_name(k) for k in range(len(gallery.bucket_codes)))
               + f"; trained at {gallery.gsd_m:g} m in {seconds['total']:.0f} s")
    typer.echo(format_metrics(gallery.manifest["metrics"]["test"]))
