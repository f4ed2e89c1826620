"""A tiny end-to-end train on the sample archive: gallery, metrics, determinism, CLI."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from resflow.cli import app
from resflow.gallery import Gallery
from resflow.training.train import train

LABELS = Path(__file__).parents[1] / "resflow/samples/data/spacenet-atlanta/geotiff_labels.geojson"
TINY = {"buckets": 2, "hash_steps": 20, "mono_steps": 3, "bucket_steps": 2, "eval_every": 2}


@pytest.fixture(scope="module")
def trained(sample_archive, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "gallery"
    return train(sample_archive, [LABELS], out, seed=0, **TINY)


def test_gallery_and_metrics_are_written(trained):
    gallery = Gallery.load(trained.path)
    manifest = gallery.manifest
    assert len(gallery.bucket_codes) == 2
    assert manifest["seed"] == 0 and manifest["training"]["mono_steps"] == 3
    assert any(s["labelled"] for s in manifest["data"]["scenes"])
    assert manifest["data"]["labels"][0]["sha256"]
    metrics = json.loads((trained.path / "metrics.json").read_text())
    assert set(metrics["test"]) == {"ensemble", "mono"}
    for scores in metrics["test"].values():
        assert {"pixel_iou", "pixel_f1", "pixel_precision", "pixel_recall",
                "object_f1"} <= scores.keys()
    assert metrics["regions"]["test"]["chips"] > 0
    assert metrics["regions"]["train"]["labelled_pixels"] > 0


def test_same_seed_same_gallery(trained, sample_archive, tmp_path):
    again = train(sample_archive, [LABELS], tmp_path / "again", seed=0, **TINY)
    assert again.manifest["files"] == trained.manifest["files"]
    assert again.manifest["buckets"] == trained.manifest["buckets"]


def test_gallery_show_prints_scores_and_writes_a_mosaic(trained, sample_archive, tmp_path):
    png = tmp_path / "mosaic.png"
    result = CliRunner().invoke(app, ["gallery", "show", str(trained.path), "--archive",
                                      str(sample_archive), "--out", str(png)])
    assert result.exit_code == 0, result.output
    assert "ensemble" in result.output and "pixel_iou" in result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_refusals_are_one_line_and_exit_2(sample_archive, tmp_path):
    runner = CliRunner()
    bad = runner.invoke(app, ["train", str(sample_archive), "--labels", str(LABELS),
                              "--out", str(tmp_path / "g"), "--buckets", "many"])
    assert bad.exit_code == 2 and "--buckets" in bad.output
    missing = runner.invoke(app, ["gallery", "show", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no gallery manifest" in missing.output
