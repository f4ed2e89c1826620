"""What training and stage 1 feed the models: nodata-weighted pooling, radiometric jitter."""

from __future__ import annotations

import pytest
import torch

from resflow.models.efficientnet import data_weighted_mean
from resflow.training.segmentation import radiometric_jitter


def test_pooling_ignores_nodata_cells() -> None:
    maps = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])         # (1, 1, 2, 2) feature cells
    image = torch.rand(1, 3, 64, 64) + 0.1
    image[..., :, :32] = 0                                    # left half nodata (0 in all bands)
    assert data_weighted_mean(maps, image).item() == 3.0      # mean of the right cells 2, 4
    assert data_weighted_mean(maps, torch.zeros(1, 3, 64, 64)).item() == 2.5  # all nodata


def test_radiometric_jitter_is_seeded_bounded_and_keeps_nodata() -> None:
    images = torch.rand(4, 3, 16, 16)
    valid = torch.ones(4, 1, 16, 16)
    valid[..., :4] = 0

    def jitter(seed: int) -> torch.Tensor:
        return radiometric_jitter(images, valid, torch.Generator().manual_seed(seed))

    first = jitter(0)
    assert torch.equal(first, jitter(0)) and not torch.equal(first, jitter(1))
    assert first.min() >= 0 and first.max() <= 1
    assert (first[..., :4] == 0).all()
    assert not torch.allclose(first[..., 4:], images[..., 4:])


def test_augmented_encoding_is_every_flip_and_rotation_twice_and_seeded() -> None:
    """Training encodes each chip in the eight dihedral variants, as read and jittered
    (16 in all), the same for a seed; without augmentation, once as read."""
    from resflow.models.efficientnet import load_imagenet_lite0
    from resflow.training.segmentation import AUGMENTATIONS, encode_training

    encoder = load_imagenet_lite0()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    target = (images[:, 0] > 0.5).float()
    weight = torch.ones(2, 64, 64)
    first = encode_training(encoder, images.numpy(), target.numpy(), weight.numpy(), seed=0)
    again = encode_training(encoder, images.numpy(), target.numpy(), weight.numpy(), seed=0)
    other = encode_training(encoder, images.numpy(), target.numpy(), weight.numpy(), seed=1)
    plain = encode_training(encoder, images.numpy(), target.numpy(), weight.numpy(),
                            augment=False)
    assert len(first.maps) == 2 * len(AUGMENTATIONS) == 16 and len(plain.maps) == 1
    assert all(torch.equal(a, b) for m, n in zip(first.maps, again.maps, strict=True)
               for a, b in zip(m, n, strict=True))
    jittered = len(AUGMENTATIONS)  # the first jittered variant: identity, jittered
    assert not torch.equal(first.maps[jittered][-1], other.maps[jittered][-1])
    assert all(torch.equal(a, b) for a, b in zip(first.maps[0], plain.maps[0], strict=True))
    # a quarter turn of the chip turns its target with it
    assert torch.equal(first.target[1, :, 0], torch.rot90(target, 1, (-2, -1)))


def test_training_encodes_chips_with_their_context_and_keeps_the_chips_cells() -> None:
    """With context, a chip's training maps are the encoder's maps of the chip and its
    surroundings cut to the chip's cells, as a prediction window sees it, not the maps of
    the bare chip; a chip off the encoder's multiple keeps the cells that cover it."""
    from resflow.models.efficientnet import FEATURE_STRIDES, load_imagenet_lite0
    from resflow.training.segmentation import chip_maps

    encoder = load_imagenet_lite0().eval()
    scene = torch.rand(1, 3, 192, 192, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        whole = encoder.feature_maps(scene)
        kept = chip_maps(encoder, scene, 32, (128, 128))
        bare = chip_maps(encoder, scene[..., 32:160, 32:160], 0, (128, 128))
        odd = chip_maps(encoder, scene[..., :104, :104], 32, (40, 40))
    for level, cut, stride in zip(whole, kept, FEATURE_STRIDES, strict=True):
        cells = slice(32 // stride, 160 // stride)
        assert torch.equal(cut, level[..., cells, cells])
    assert [m.shape for m in kept] == [m.shape for m in bare]
    assert not torch.allclose(kept[-1], bare[-1], atol=1e-3)
    assert [m.shape[-1] * s for m, s in zip(odd, FEATURE_STRIDES, strict=True)] == [64] * 5


def test_a_context_off_the_encoders_stride_is_refused() -> None:
    from resflow.errors import InputError
    from resflow.training.config import TrainConfig

    with pytest.raises(InputError, match="context: 48 pixels is not a multiple of 32"):
        TrainConfig(context=48)
