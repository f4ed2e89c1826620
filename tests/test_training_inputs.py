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
