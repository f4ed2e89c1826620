"""Gallery round trip, and refusal of tampered, missing or unknown-schema galleries."""

import json

import numpy as np
import pytest
import torch

from resflow.errors import GalleryError
from resflow.gallery import DEFAULT_PATH, Gallery, write_gallery
from resflow.models.hashing import HashingHead
from resflow.models.segmentation import SegmentationDecoder


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("gallery")
    codes = np.array([[1, 0, 1, 0], [0, 1, 1, 1], [1, 1, 0, 0]], bool)
    decoders = {"mono": SegmentationDecoder(), "bucket-1": SegmentationDecoder()}
    head = HashingHead(hidden=32, bits=4)
    gallery = write_gallery(
        out, bucket_codes=codes, head=head, decoders=decoders,
        buckets=[{"chips": 5, "labelled_chips": 0}, {"chips": 7, "labelled_chips": 3},
                 {"chips": 2, "labelled_chips": 0}],
        gsd_m=0.5, info={"seed": 0, "metrics": {"mono": {"pixel_iou": 0.0}}})
    return out, codes, head, decoders, gallery


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_round_trip(written):
    out, codes, head, decoders, _ = written
    gallery = Gallery.load(out)
    np.testing.assert_array_equal(gallery.bucket_codes, codes)
    assert [gallery.model_name(k) for k in range(3)] == ["mono", "bucket-1", "mono"]
    assert gallery.manifest["seed"] == 0 and gallery.bits == 4
    features = torch.randn(6, 1280)
    np.testing.assert_array_equal(gallery.hashing_head().codes(features).numpy(),
                                  head.eval().codes(features).numpy())
    for name, module in decoders.items():
        loaded = gallery._segmenter(name).decoder.state_dict()
        for key, value in module.state_dict().items():
            torch.testing.assert_close(loaded[key], value)
    assert gallery.segmenter(0) is gallery.segmenter(2) is gallery.mono()   # built once
    assert gallery.segmenter(1).encoder is gallery.feature_extractor().backbone
    assert all(f.endswith(".safetensors") for f in gallery.manifest["files"])


def test_tampered_weight_file_is_refused(written, tmp_path):
    bad = _copy(written[0], tmp_path / "g")
    blob = bytearray((bad / "bucket-1.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (bad / "bucket-1.safetensors").write_bytes(bytes(blob))
    with pytest.raises(GalleryError, match=r"bucket-1\.safetensors: sha256 .* differs.*Fix: "):
        Gallery.load(bad)


def test_missing_weight_file_is_refused(written, tmp_path):
    bad = _copy(written[0], tmp_path / "g")
    (bad / "mono.safetensors").unlink()
    with pytest.raises(GalleryError, match=r"mono\.safetensors: .* missing"):
        Gallery.load(bad)


def test_unknown_schema_and_missing_manifest_are_refused(written, tmp_path):
    bad = _copy(written[0], tmp_path / "g")
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(GalleryError, match="unknown gallery schema version 99"):
        Gallery.load(bad)
    with pytest.raises(GalleryError, match="no gallery manifest"):
        Gallery.load(tmp_path / "nowhere")


def test_changed_encoder_checksum_is_refused(written, tmp_path):
    bad = _copy(written[0], tmp_path / "g")
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["encoder"]["sha256"] = "0" * 64
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(GalleryError, match="encoder sha256"):
        Gallery.load(bad)


def test_default_gallery_loads_and_verifies():
    gallery = Gallery.load(None)
    assert gallery.path == DEFAULT_PATH
    manifest = gallery.manifest
    assert len(gallery.bucket_codes) == len(manifest["buckets"]) >= 1
    assert {"seed", "data", "metrics", "training", "normalisation"} <= manifest.keys()
    assert sum((DEFAULT_PATH / f).stat().st_size for f in manifest["files"]) < 5 * 2**20
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert gallery.feature_extractor()(images).shape == (1, 1280)
        assert gallery.segmenter(0)(images).shape == (1, 1, 64, 64)


def test_a_run_pins_its_gallery_version(written, tmp_path):
    """A task process holding the run's gallery version reads nothing; one that must load
    the gallery refuses it once it was replaced mid-run, naming both versions."""
    from resflow.inference.caches import gallery_key, load_gallery

    folder = _copy(written[0], tmp_path / "g")
    version = gallery_key(folder)[1]
    loaded = load_gallery(folder, version)
    (folder / "manifest.json").unlink()  # a process holding the version never looks
    assert load_gallery(folder, version) is loaded

    replaced = _copy(written[0], tmp_path / "h")
    manifest = json.loads((replaced / "manifest.json").read_text())
    manifest["info"] = {"retrained": True}
    (replaced / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(GalleryError, match=f"changed during the run .*now "
                       f"{gallery_key(replaced)[1][:12]}, the run started with {version[:12]}"):
        load_gallery(replaced, version)
    assert load_gallery(replaced).manifest["info"] == {"retrained": True}  # unpinned: loads
