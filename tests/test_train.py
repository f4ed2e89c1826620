"""A tiny end-to-end train on the sample archive: gallery, metrics, CLI. (That the same
seed gives the same gallery files is tested in ``test_object_storage``, training once from a
bucket and once from local disk.)

The session's one trained gallery (``trained_gallery``) serves every test that reads a
trained gallery; trainings of their own run on the tiny one-scene archive.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from resflow.cli import app
from resflow.errors import InputError
from resflow.gallery import MONO, Gallery, write_gallery
from resflow.models.hashing import HashingHead
from resflow.models.segmentation import SegmentationDecoder
from resflow.training.gaps import gap_weight, separated
from resflow.training.scoring import evaluate_gallery
from resflow.training.segmentation import loss_fn
from resflow.training.train import train
from tests.fixtures_data import ATLANTA_LABELS as LABELS
from tests.fixtures_data import TINY_TRAINING as TINY


@pytest.fixture(scope="module")
def trained(trained_gallery: Path) -> Gallery:
    return Gallery.load(trained_gallery)


def test_gallery_and_metrics_are_written(trained):
    gallery = Gallery.load(trained.path)
    manifest = gallery.manifest
    assert len(gallery.bucket_codes) == 2
    assert manifest["seed"] == 0 and manifest["training"]["mono_steps"] == 3
    assert manifest["training"]["augment"] is False
    assert any(s["labelled"] for s in manifest["data"]["scenes"])
    assert manifest["data"]["labels"][0]["sha256"]
    metrics = json.loads((trained.path / "metrics.json").read_text())
    assert set(metrics["test"]) == {"ensemble", "mono"}
    for scores in metrics["test"].values():
        assert {"pixel_iou", "pixel_f1", "pixel_precision", "pixel_recall",
                "object_f1"} <= scores.keys()
    assert metrics["regions"]["test"]["chips"] > 0
    assert metrics["regions"]["train"]["labelled_pixels"] > 0
    # three steps already learn something: mono's best validation loss is below its first
    mono = metrics["training"][MONO]
    assert mono["best_step"] > 0
    assert mono["best_validation_loss"] < mono["initial_validation_loss"]


def test_cli_refusals_are_one_line_and_exit_2(sample_archive, tmp_path):
    runner = CliRunner()
    bad = runner.invoke(app, ["train", str(sample_archive), "--labels", str(LABELS),
                              "--out", str(tmp_path / "g"), "--buckets", "many"])
    assert bad.exit_code == 2 and "--buckets" in bad.output
    missing = runner.invoke(app, ["gallery", "show", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no gallery manifest" in missing.output


def test_no_bucket_decoder_is_a_copy_of_mono(trained):
    files = {name: load_file(trained.path / m["file"])
             for name, m in trained.manifest["models"].items() if name != "hashing_head"}
    for name, tensors in files.items():
        if name != MONO:
            assert any(not torch.equal(t, files[MONO][k]) for k, t in tensors.items()), name
    for bucket in trained.manifest["buckets"]:
        assert bucket["decision"].startswith("own decoder" if bucket["model"] != MONO
                                             else "mono")


def test_write_gallery_refuses_a_bucket_copy_of_mono(tmp_path):
    mono = SegmentationDecoder()
    copy = SegmentationDecoder()
    copy.load_state_dict(mono.state_dict())
    with pytest.raises(ValueError, match="bucket-0 holds mono's very tensors"):
        write_gallery(tmp_path, bucket_codes=np.zeros((1, 4), bool), head=HashingHead(bits=4),
                      buckets=[{"chips": 1}], decoders={MONO: mono, "bucket-0": copy},
                      gsd_m=0.5, info={})


def test_manifest_records_resolution_buckets_and_time(trained, sample_archive):
    manifest = trained.manifest
    assert manifest["resolution"]["gsd_m"] == 0.3
    bucketing = manifest["training"]["bucketing"]
    assert 0.0 <= bucketing["routing_agrees_with_kmeans"] <= 1.0
    table = bucketing["chips_per_bucket_per_scene"]
    assert set(table) == {"sample_geotiff", "ms1"}  # rmnp-rgb is too coarse: not bucketed
    assert all(len(row) == 2 for row in table.values())
    assert manifest["training"]["seconds"]["total"] > 0


def test_training_refuses_labels_without_buildings_to_learn(tiny_archive, tmp_path):
    # One small footprint in the bottom (test) band: the train band holds no building.
    corner = (733601.0 + 10, 3724689.0 + 10)
    ring = [corner, (corner[0] + 4, corner[1]), (corner[0] + 4, corner[1] + 4),
            (corner[0], corner[1] + 4), corner]
    labels = tmp_path / "one.geojson"
    labels.write_text(json.dumps({
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32616"}},
        "features": [{"type": "Feature", "properties": {},
                      "geometry": {"type": "Polygon", "coordinates": [ring]}}]}))
    with pytest.raises(InputError, match="holds no building pixel"):
        train(tiny_archive, [labels], tmp_path / "g", **TINY)
    assert not (tmp_path / "g").exists()


def test_training_refuses_a_label_file_of_a_missing_scene(sample_archive, tmp_path):
    far = json.loads(LABELS.read_text())
    for feature in far["features"]:
        feature["geometry"]["coordinates"] = [
            [[x + 50_000, y] for x, y, *_ in ring] for ring in feature["geometry"]["coordinates"]]
    elsewhere = tmp_path / "elsewhere.geojson"
    elsewhere.write_text(json.dumps(far))
    with pytest.raises(InputError, match=r"elsewhere\.geojson: the labels cover no mapped scene"):
        train(sample_archive, [LABELS, elsewhere], tmp_path / "g", **TINY)
    assert not (tmp_path / "g").exists()


def test_a_saved_gallery_scores_as_its_training_did(trained, sample_archive):
    """evaluate_gallery rebuilds routing and models from the files: same test scores, in
    the windows the training scored."""
    metrics = json.loads((trained.path / "metrics.json").read_text())
    windows = {key: TINY[key] for key in ("window", "window_halo")}
    again = evaluate_gallery(sample_archive, [LABELS], trained.path, sweep=(0.0,), **windows)
    assert again["test"] == metrics["test"]
    assert again["test_chips_served_by"] == metrics["test_chips_served_by"]
    assert set(again["min_building_sweep"]["0"]["test"]) == {"ensemble", "mono"}


def two_roofs_and_a_shed() -> np.ndarray:
    """Footprint ids: two roofs sharing a wall (1, 2) and a shed 10 pixels away (3)."""
    ids = np.zeros((40, 60), np.int32)
    ids[5:20, 5:20], ids[5:20, 20:35], ids[30:38, 5:13] = 1, 2, 3
    return ids


def test_the_gap_between_touching_roofs_weighs_most():
    ids = two_roofs_and_a_shed()
    target = separated(ids)
    weight = gap_weight(ids, target, 10.0, 3.0)
    wall = (ids > 0) & ~target                       # the gap separated() cut between 1 and 2
    assert wall.any() and (weight[wall] > 9).all()
    assert (weight[target] == 1).all()               # buildings
    assert weight[0:4, 40:].max() < 1.5 and weight[39, 59] == 1  # open ground
    assert 1 < weight[25, 9] < weight[wall].min()    # 10 pixels between roof 1 and the shed
    assert (gap_weight(ids, target, 0.0, 3.0) == 1).all()


def test_filling_a_weighted_gap_costs_more_than_filling_open_ground():
    ids = two_roofs_and_a_shed()
    target = separated(ids)
    weight = torch.from_numpy(gap_weight(ids, target, 10.0, 3.0))[None, None]
    truth = torch.from_numpy(target.astype(np.float32))[None, None]
    logits = (truth * 8 - 4).clone()                 # right everywhere
    wall, ground = logits.clone(), logits.clone()
    wall[0, 0, 5:20, 19:21] = 4                      # fills the 30-pixel wall gap
    ground[0, 0, 0:2, 40:55] = 4                     # 30 pixels of open ground
    right = loss_fn(logits, truth, weight, 1.0)
    assert loss_fn(wall, truth, weight, 1.0) - right > 3 * (loss_fn(ground, truth, weight, 1.0)
                                                          - right)
