"""Building-segmentation scores: pixel IoU, F1, precision, recall, and SpaceNet object F1.

Pixel scores say how much building area is right; object F1 says how many buildings were
found, which is what a footprint map is used for. Object F1 follows the SpaceNet rule: a
predicted footprint (one connected component of the predicted mask) is a true positive
when it overlaps one not yet matched true footprint at IoU >= 0.5; each footprint matches
at most once, best IoU first.

Scores accumulate in a :class:`Scores` over many windows (chips or regions) so a whole
test region is scored as one, not as an average of per-chip ratios. :func:`score_scene` is
the one place a map is scored: training's held-out test band and ``resflow eval`` both call
it, so their numbers mean the same thing. Scores of several scenes add up (``a + b``) by
summing counts, so an overall score is never a mean of per-scene ratios.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

#: SpaceNet's match threshold between a predicted and a true footprint.
OBJECT_IOU = 0.5

#: Names of the codes :func:`pixel_categories` returns (the code is the index).
PIXEL_CATEGORIES = ("not scored", "true negative", "true positive", "false positive",
                    "false negative")
NOT_SCORED, TRUE_NEGATIVE, TRUE_POSITIVE, FALSE_POSITIVE, FALSE_NEGATIVE = range(5)


@dataclass
class Scores:
    """Running counts of pixels and footprints; add windows with :meth:`update`.

    Examples
    --------
    >>> s = Scores()
    >>> s.update(np.array([[1, 0]], bool), np.array([[1, 1]], np.int32))
    >>> s.summary()["pixel_precision"], s.summary()["pixel_recall"]
    (1.0, 0.5)
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0
    object_tp: int = 0
    object_fp: int = 0
    object_fn: int = 0

    def update(self, predicted: np.ndarray, truth: np.ndarray,
               valid: np.ndarray | None = None) -> None:
        """Add one window.

        Parameters
        ----------
        predicted
            bool (H, W) building mask.
        truth
            int (H, W) true footprint ids (0 = background, each building its own id), or a
            bool mask, whose connected components are then taken as the footprints.
        valid
            bool (H, W); pixels outside (nodata, padding) are not scored. A footprint is
            scored from its valid pixels only.
        """
        predicted = np.asarray(predicted, bool)
        truth = np.asarray(truth)
        if truth.dtype == bool:
            truth = ndimage.label(truth)[0]
        if valid is not None:
            predicted = predicted & valid
            truth = np.where(valid, truth, 0)
        true_mask = truth > 0
        self.tp += int(np.count_nonzero(predicted & true_mask))
        self.fp += int(np.count_nonzero(predicted & ~true_mask))
        self.fn += int(np.count_nonzero(~predicted & true_mask))
        tp, n_pred, n_true = match_footprints(ndimage.label(predicted)[0], truth)
        self.object_tp += tp
        self.object_fp += n_pred - tp
        self.object_fn += n_true - tp

    def __add__(self, other: Scores) -> Scores:
        """Counts of both summed: the scores of the two areas taken as one."""
        return Scores(**{k: v + getattr(other, k) for k, v in asdict(self).items()})

    def summary(self) -> dict[str, float | int]:
        """Pixel IoU, F1, precision, recall, object F1 and the raw counts, JSON-ready.

        A ratio with an empty denominator is 0.0 (no prediction and no truth scores 0, not
        NaN, so tables stay numeric).
        """
        obj_p = _ratio(self.object_tp, self.object_tp + self.object_fp)
        obj_r = _ratio(self.object_tp, self.object_tp + self.object_fn)
        return {
            "pixel_iou": _ratio(self.tp, self.tp + self.fp + self.fn),
            "pixel_f1": _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn),
            "pixel_precision": _ratio(self.tp, self.tp + self.fp),
            "pixel_recall": _ratio(self.tp, self.tp + self.fn),
            "object_precision": obj_p,
            "object_recall": obj_r,
            "object_f1": _ratio(2 * obj_p * obj_r, obj_p + obj_r),
            **asdict(self),
        }


def score_scene(predicted: np.ndarray, truth: np.ndarray,
                valid: np.ndarray | None = None) -> Scores:
    """Score one whole scene (or one region of it) in one call.

    Score a whole scene at once rather than chip by chip when you can: a building cut by a
    chip border is then one footprint, not two halves that each fail the IoU test.

    Parameters
    ----------
    predicted
        bool (H, W) building mask.
    truth
        int (H, W) true footprint ids, 0 = background (from
        :func:`resflow.training.labels.rasterise`), or a bool mask.
    valid
        bool (H, W) pixels to score (mapped, not nodata); None = all.

    Returns
    -------
    Scores
        This scene's counts; add scenes with ``+`` for an overall score.

    Examples
    --------
    >>> truth = np.zeros((4, 4), np.int32); truth[:2, :2] = 1
    >>> score_scene(truth > 0, truth).summary()["object_f1"]
    1.0
    """
    scores = Scores()
    scores.update(predicted, truth, valid)
    return scores


def pixel_categories(predicted: np.ndarray, truth: np.ndarray,
                     valid: np.ndarray | None = None) -> np.ndarray:
    """Per-pixel outcome codes (uint8, see :data:`PIXEL_CATEGORIES`), for overlay maps.

    The codes count exactly as :meth:`Scores.update` does: ``(codes == TRUE_POSITIVE).sum()``
    is its ``tp``, and so on.
    """
    predicted = np.asarray(predicted, bool)
    true_mask = np.asarray(truth) > 0
    codes = np.full(predicted.shape, TRUE_NEGATIVE, np.uint8)
    codes[predicted & true_mask] = TRUE_POSITIVE
    codes[predicted & ~true_mask] = FALSE_POSITIVE
    codes[~predicted & true_mask] = FALSE_NEGATIVE
    if valid is not None:
        codes[~np.asarray(valid, bool)] = NOT_SCORED
    return codes


def match_footprints(predicted: np.ndarray, truth: np.ndarray,
                     threshold: float = OBJECT_IOU) -> tuple[int, int, int]:
    """Greedy one-to-one matching of footprints at IoU >= ``threshold``.

    Only overlapping pairs are listed (a sparse joint histogram), so memory grows with the
    building pixels, not with predicted x true buildings: a whole scene with 100,000
    buildings a side is matched in megabytes, not in 10^10 histogram cells.

    Parameters
    ----------
    predicted, truth
        int (H, W) footprint ids, 0 = background. Ids need not be consecutive.
    threshold
        Minimum IoU of a match, > 0 (pairs that do not overlap never match).

    Returns
    -------
    (matched, n_predicted, n_true)
    """
    predicted, truth = np.asarray(predicted).ravel(), np.asarray(truth).ravel()
    pred_ids, pred_area = np.unique(predicted[predicted != 0], return_counts=True)
    true_ids, true_area = np.unique(truth[truth != 0], return_counts=True)
    n_pred, n_true = len(pred_ids), len(true_ids)
    if n_pred == 0 or n_true == 0:
        return 0, n_pred, n_true
    both = (predicted != 0) & (truth != 0)
    # Every overlap area in one pass: a histogram of (predicted, true) index pairs, sorted
    # by predicted index then true index, so ties in IoU break in that order.
    codes = (np.searchsorted(pred_ids, predicted[both]).astype(np.int64) * n_true
             + np.searchsorted(true_ids, truth[both]))
    pairs, overlap = np.unique(codes, return_counts=True)
    p, t = np.divmod(pairs, n_true)
    iou = overlap / (pred_area[p] + true_area[t] - overlap)
    pred_used = np.zeros(n_pred, bool)
    true_used = np.zeros(n_true, bool)
    for i in np.argsort(-iou, kind="stable"):
        if iou[i] < threshold:
            break
        if not pred_used[p[i]] and not true_used[t[i]]:
            pred_used[p[i]] = true_used[t[i]] = True
    return int(pred_used.sum()), n_pred, n_true


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0
