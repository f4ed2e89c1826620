"""The bucket segmenter: input-resolution output, frozen shared encoder, decoder-only files."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from resflow.models import BuildingSegmenter, EfficientNetLite0, SegmentationDecoder


@pytest.fixture(scope="module")
def encoder() -> EfficientNetLite0:
    torch.manual_seed(0)
    return EfficientNetLite0().eval()


@pytest.mark.parametrize("size", [64, 96, 100, 320])
def test_logits_at_input_resolution(encoder, size):
    model = BuildingSegmenter(encoder).eval()
    with torch.inference_mode():
        assert model(torch.rand(2, 3, size, size)).shape == (2, 1, size, size)


def test_encoder_is_frozen_and_shared(encoder):
    first, second = BuildingSegmenter(encoder), BuildingSegmenter(encoder)
    first.train()
    assert first.encoder is second.encoder
    assert not first.encoder.training and first.decoder.training
    assert not any(p.requires_grad for p in first.encoder.parameters())
    trainable = sum(p.numel() for p in first.parameters() if p.requires_grad)
    assert trainable == sum(p.numel() for p in first.decoder.parameters())
    assert 10_000 < trainable < 500_000
    loss = first(torch.rand(2, 3, 64, 64)).mean()
    loss.backward()
    assert all(p.grad is not None for p in first.decoder.parameters())


def test_decoder_round_trip_through_safetensors(encoder, tmp_path):
    torch.manual_seed(1)
    model = BuildingSegmenter(encoder, SegmentationDecoder()).eval()
    path = tmp_path / "bucket-0.safetensors"
    save_file(model.decoder_state_dict(), str(path))
    assert not any(key.startswith("encoder") for key in load_file(str(path)))
    torch.manual_seed(2)
    restored = BuildingSegmenter(encoder, SegmentationDecoder()).eval()
    restored.load_decoder_state_dict(load_file(str(path)))
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(model(x), restored(x))
