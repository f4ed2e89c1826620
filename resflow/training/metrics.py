"""Building-segmentation scores: pixel IoU, F1, precision, recall, and SpaceNet object F1.

Pixel scores say how much building area is right; object F1 says how many buildings were
found, which is what a footprint map is used for. Object F1 follows the SpaceNet rule: a
predicted footprint (one connected component of the predicted mask) is a true positive
when it overlaps one not yet matched true footprint at IoU >= 0.5; each footprint matches
at most once, best IoU first.

Scores accumulate in a :class:`Scores` over many windows (chips or regions) so a whole
test region is scored as one, not as an average of per-chip ratios.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

#: SpaceNet's match threshold between a predicted and a true footprint.
OBJECT_IOU = 0.5


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


def match_footprints(predicted: np.ndarray, truth: np.ndarray,
                     threshold: float = OBJECT_IOU) -> tuple[int, int, int]:
    """Greedy one-to-one matching of footprints at IoU >= ``threshold``.

    Parameters
    ----------
    predicted, truth
        int (H, W) footprint ids, 0 = background. Ids need not be consecutive.

    Returns
    -------
    (matched, n_predicted, n_true)
    """
    pred_ids, pred_idx = np.unique(predicted, return_inverse=True)
    true_ids, true_idx = np.unique(truth, return_inverse=True)
    n_pred = int(np.count_nonzero(pred_ids))
    n_true = int(np.count_nonzero(true_ids))
    if n_pred == 0 or n_true == 0:
        return 0, n_pred, n_true
    # Joint histogram of (predicted id, true id): every overlap area in one pass.
    joint = np.bincount(pred_idx.ravel() * len(true_ids) + true_idx.ravel(),
                        minlength=len(pred_ids) * len(true_ids)).reshape(len(pred_ids), -1)
    pred_area = joint.sum(axis=1, keepdims=True)
    true_area = joint.sum(axis=0, keepdims=True)
    iou = joint / np.maximum(pred_area + true_area - joint, 1)
    iou = iou[pred_ids != 0][:, true_ids != 0]
    pred_used = np.zeros(n_pred, bool)
    true_used = np.zeros(n_true, bool)
    order = np.argsort(-iou, axis=None, kind="stable")
    for p, t in zip(*np.unravel_index(order, iou.shape), strict=True):
        if iou[p, t] < threshold:
            break
        if not pred_used[p] and not true_used[t]:
            pred_used[p] = true_used[t] = True
    return int(pred_used.sum()), n_pred, n_true


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0
