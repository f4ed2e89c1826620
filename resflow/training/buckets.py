"""Stage 2 offline: pseudo-classes by k-means, a hashing head, and bucket reference codes.

There are no semantic classes for unlabelled imagery, so chips are grouped by what the
frozen Lite0 sees: k-means over the L2-normalised embeddings gives pseudo-classes. The
number of buckets ``K`` is either given or chosen by the mean silhouette score over
``K`` in ``2..min(8, N - 1)`` (the K whose clusters are tightest relative to their
neighbours; ties go to the smaller K). The hashing head is then trained so that relaxed
codes of the same pseudo-class agree and those of different ones disagree (pairwise
similarity loss on code inner products, as in supervised hashing), plus a quantisation
loss pulling relaxed codes to +-1 so that binarising them loses little. A bucket's
reference code is the sign of its pseudo-class's mean relaxed code; a chip then goes to the
nearest reference in Hamming distance, which is how inference routes it.

Everything is full-batch with a fixed seed, so the same features give the same codes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from resflow.models.hashing import HashingHead, hamming_nearest

#: Largest K tried by the silhouette criterion: more buckets than this would leave most
#: without labelled chips at the data sizes resflow trains on.
MAX_AUTO_K = 8


@dataclass
class Buckets:
    """The result of stage-2 initialisation.

    Attributes
    ----------
    head
        Trained hashing head, eval mode.
    codes
        ``(K, b)`` bool reference codes.
    assignment
        ``(N,)`` bucket of every input chip, by Hamming-nearest reference (as at inference).
    pseudo_class
        ``(N,)`` k-means label of every input chip.
    criterion
        How K was chosen: ``{"method": "silhouette"|"given", "k": K, "scores": {K: s}}``.
    """

    head: HashingHead
    codes: np.ndarray
    assignment: np.ndarray
    pseudo_class: np.ndarray
    criterion: dict = field(default_factory=dict)


def choose_k(features: np.ndarray, seed: int) -> tuple[int, dict[int, float]]:
    """K with the best mean silhouette over ``2..min(MAX_AUTO_K, N - 1)``; 1 if N < 3."""
    x = _normalise(features)
    scores: dict[int, float] = {}
    for k in range(2, min(MAX_AUTO_K, len(x) - 1) + 1):
        labels = _kmeans(x, k, seed)
        if len(np.unique(labels)) > 1:
            scores[k] = float(silhouette_score(x, labels))
    if not scores:
        return 1, scores
    return max(scores, key=lambda k: (scores[k], -k)), scores


def init_buckets(features: np.ndarray, *, k: int | None = None, bits: int = 16,
                 hidden: int = 128, steps: int = 300, seed: int = 0,
                 quantisation_weight: float = 0.1) -> Buckets:
    """Cluster chip embeddings and train the hashing head on the pseudo-classes.

    Parameters
    ----------
    features
        ``(N, 1280)`` float32 Lite0 embeddings, one per chip.
    k
        Number of buckets; ``None`` chooses it by silhouette (:func:`choose_k`).
    bits, hidden
        Hashing head code length and hidden width.
    steps
        Full-batch Adam steps.
    seed
        Seeds k-means and the head's initialisation: same inputs, same codes.
    quantisation_weight
        Weight of the ``(|u| - 1)^2`` term against the similarity term.

    Examples
    --------
    >>> feats = np.random.default_rng(0).random((40, 1280), dtype=np.float32)
    >>> init_buckets(feats, k=2, steps=20).codes.shape
    (2, 16)
    """
    features = np.asarray(features, np.float32)
    if k is None:
        k, scores = choose_k(features, seed)
        criterion = {"method": "silhouette", "k": k, "range": [2, MAX_AUTO_K],
                     "scores": {str(kk): round(s, 4) for kk, s in scores.items()}}
    else:
        criterion = {"method": "given", "k": k}
    k = max(1, min(k, len(features)))
    pseudo = _kmeans(_normalise(features), k, seed) if k > 1 else np.zeros(len(features), int)
    head = _train_head(features, pseudo, bits, hidden, steps, seed, quantisation_weight)
    with torch.no_grad():
        relaxed = torch.tanh(head.logits(torch.from_numpy(features))).numpy()
    codes = np.stack([relaxed[pseudo == c].mean(axis=0) >= 0 for c in range(k)])
    assignment = hamming_nearest(relaxed >= 0, codes)
    return Buckets(head, codes, assignment, pseudo, criterion)


def _train_head(features: np.ndarray, pseudo: np.ndarray, bits: int, hidden: int,
                steps: int, seed: int, quantisation_weight: float) -> HashingHead:
    torch.manual_seed(seed)
    head = HashingHead(in_features=features.shape[1], hidden=hidden, bits=bits).train()
    x = torch.from_numpy(features)
    labels = torch.from_numpy(pseudo)
    target = torch.where(labels[:, None] == labels[None, :], 1.0, -1.0)
    optimiser = torch.optim.Adam(head.parameters(), lr=1e-3)
    for _ in range(steps):
        u = head(x)
        similarity = (u @ u.T) / bits
        loss = ((similarity - target) ** 2).mean()
        loss = loss + quantisation_weight * ((u.abs() - 1) ** 2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return head.eval()


def _normalise(features: np.ndarray) -> np.ndarray:
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def _kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
