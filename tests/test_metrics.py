"""Metrics on hand-built masks whose scores can be worked out on paper."""

import numpy as np
import pytest

from resflow.training.metrics import Scores, match_footprints


def _square(shape, y, x, size, value=1):
    out = np.zeros(shape, np.int32)
    out[y:y + size, x:x + size] = value
    return out


def test_perfect_prediction_scores_one():
    truth = _square((20, 20), 2, 2, 5, 1) + _square((20, 20), 10, 10, 4, 2)
    s = Scores()
    s.update(truth > 0, truth)
    m = s.summary()
    assert m["pixel_iou"] == m["pixel_f1"] == m["object_f1"] == 1.0
    assert (m["object_tp"], m["object_fp"], m["object_fn"]) == (2, 0, 0)


def test_pixel_scores_by_hand():
    truth = _square((10, 10), 0, 0, 4)            # 16 true pixels
    predicted = _square((10, 10), 0, 0, 4) > 0
    predicted[0, 0:4] = False                      # 4 missed
    predicted[8, 8] = True                         # 1 false alarm
    s = Scores()
    s.update(predicted, truth)
    m = s.summary()
    assert (s.tp, s.fp, s.fn) == (12, 1, 4)
    assert m["pixel_precision"] == pytest.approx(12 / 13)
    assert m["pixel_recall"] == pytest.approx(12 / 16)
    assert m["pixel_iou"] == pytest.approx(12 / 17)
    assert m["pixel_f1"] == pytest.approx(24 / 29)


def test_object_match_needs_iou_half():
    truth = _square((20, 20), 0, 0, 4)            # 16 px
    half_shift = _square((20, 20), 0, 2, 4) > 0   # overlap 8, union 24: IoU 1/3
    s = Scores()
    s.update(half_shift, truth)
    assert (s.object_tp, s.object_fp, s.object_fn) == (0, 1, 1)
    small_shift = _square((20, 20), 0, 1, 4) > 0  # overlap 12, union 20: IoU 0.6
    s = Scores()
    s.update(small_shift, truth)
    assert s.summary()["object_f1"] == 1.0


def test_one_prediction_matches_one_footprint_only():
    # A big and a thin touching building, predicted as one merged blob: the blob matches
    # the big one (IoU 36/42) and the thin one counts as missed.
    truth = _square((20, 20), 0, 0, 6, 1)
    truth[0:6, 6:7] = 2                            # a thin 6 px neighbour
    predicted = truth > 0                          # one component of 42 px
    assert match_footprints(predicted.astype(np.int32), truth) == (1, 1, 2)


def test_bool_truth_uses_connected_components_and_valid_mask():
    truth = np.zeros((10, 10), bool)
    truth[0:3, 0:3] = True
    truth[6:9, 6:9] = True
    valid = np.ones((10, 10), bool)
    valid[5:, :] = False                           # second building outside the scored area
    s = Scores()
    s.update(truth, truth, valid)
    assert (s.object_tp, s.object_fn, s.fn) == (1, 0, 0)


def test_empty_everything_is_zero_not_nan():
    s = Scores()
    s.update(np.zeros((4, 4), bool), np.zeros((4, 4), np.int32))
    assert all(v == 0 for v in s.summary().values())
