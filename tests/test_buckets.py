"""Stage-2 initialisation is deterministic for a seed and separates clear clusters."""

import numpy as np
import pytest

from resflow.training.buckets import choose_k, init_buckets


@pytest.fixture(scope="module")
def three_clusters():
    rng = np.random.default_rng(0)
    centres = rng.random((3, 1280), dtype=np.float32) * 2
    return np.concatenate([c + 0.3 * rng.random((12, 1280), dtype=np.float32) for c in centres])


def test_same_seed_same_codes_and_buckets(three_clusters):
    a = init_buckets(three_clusters, seed=3, steps=60)
    b = init_buckets(three_clusters, seed=3, steps=60)
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.assignment, b.assignment)
    assert a.codes.dtype == bool and a.codes.shape == (3, 16)


def test_silhouette_finds_the_three_clusters_and_buckets_follow_them(three_clusters):
    k, scores = choose_k(three_clusters, seed=0)
    assert k == 3 and max(scores, key=scores.get) == 3
    result = init_buckets(three_clusters, seed=0, steps=150)
    assert result.criterion["method"] == "silhouette"
    assert len(np.unique(result.codes, axis=0)) == 3
    # Chips of one pseudo-class share one bucket, as inference will route them.
    for c in range(3):
        assert len(np.unique(result.assignment[result.pseudo_class == c])) == 1


def test_given_k_and_tiny_inputs(three_clusters):
    assert init_buckets(three_clusters, k=2, steps=10).codes.shape[0] == 2
    one = init_buckets(three_clusters[:2], steps=10)
    assert one.codes.shape[0] == 1 and (one.assignment == 0).all()
