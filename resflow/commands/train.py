"""``resflow train``: a model gallery from an imagery archive and building labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the ``train`` command to the CLI."""
    app.command("train")(train_command)


def train_command(
    archive: Annotated[Path, typer.Argument(help="imagery archive from `resflow ingest`")],
    labels: Annotated[list[Path], typer.Option(
        "--labels", help="building footprints in any vector format OGR reads (GeoJSON, "
        "GeoPackage, Shapefile, ...) or a georeferenced mask, any CRS; each file labels the "
        "scenes its extent covers (repeatable)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="gallery directory to write")],
    seed: Annotated[int, typer.Option(help="seed of every random choice")] = 0,
    buckets: Annotated[str, typer.Option(
        help="number of buckets, or 'auto' for the best silhouette over 2..8")] = "auto",
    mono_steps: Annotated[int | None, typer.Option(help="mono decoder steps (default 600)")] = None,
    bucket_steps: Annotated[int | None, typer.Option(
        help="per-bucket fine-tune steps (default 200)")] = None,
    scene: Annotated[list[str] | None, typer.Option(
        "--scene", help="train on this labelled scene only (repeatable; default: all)")] = None,
    holdout: Annotated[list[str] | None, typer.Option(
        "--holdout", help="labelled scene scored whole as the test set and never trained on "
        "(repeatable; default: the bottom 20% of every labelled scene)")] = None,
) -> None:
    """Train the hashing head, bucket codes and decoders; score ensemble vs mono on held-out
    rows; write GALLERY/manifest.json, the safetensors weights and GALLERY/metrics.json."""
    from resflow.errors import ConfigError, ResflowError
    from resflow.training.train import train

    try:
        if buckets != "auto" and not (buckets.isdigit() and int(buckets) >= 1):
            raise ConfigError("--buckets", f"'{buckets}' is neither 'auto' nor a count >= 1",
                              "write e.g. --buckets 4 or --buckets auto")
        settings = {k: v for k, v in {"mono_steps": mono_steps,
                                      "bucket_steps": bucket_steps}.items() if v is not None}
        gallery = train(archive, labels, out, seed=seed, scenes=scene, holdout=holdout or (),
                        buckets=None if buckets == "auto" else int(buckets), **settings)
    except ResflowError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    from resflow.commands.gallery import format_metrics

    seconds = gallery.manifest["training"]["seconds"]
    typer.echo(f"{out}: {len(gallery.bucket_codes)} buckets, models "
               + ", ".join(gallery.model_name(k) for k in range(len(gallery.bucket_codes)))
               + f"; trained at {gallery.gsd_m:g} m in {seconds['total']:.0f} s")
    typer.echo(format_metrics(gallery.manifest["metrics"]["test"]))
