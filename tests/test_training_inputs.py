"""What training and stage 1 feed the models: nodata-weighted pooling, radiometric jitter."""

from __future__ import annotations

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
