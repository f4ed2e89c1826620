"""Stage 2 model: binary hash codes of the Lite0 embedding and their nearest bucket.

A chip's bucket is the reference code at the smallest Hamming distance from its own code, so
similar-looking chips share a bucket and its specialised segmenter.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

#: Rows of ``codes`` compared against all references at once in :func:`hamming_nearest`;
#: bounds the ``(rows, K, b)`` boolean temporary to a few tens of MiB.
_HAMMING_ROWS = 4096


class HashingHead(nn.Module):
    """MLP from the 1280-d embedding to ``bits`` hash logits.

    In training mode :meth:`forward` returns the relaxed code ``tanh(beta * z)`` in ``(-1, 1)``
    so losses have gradients; in eval mode it returns the hard code ``sign(z)`` in
    ``{-1, +1}`` (zero maps to ``+1``, matching :meth:`codes`).

    Parameters
    ----------
    in_features
        Embedding width (1280 for Lite0).
    hidden
        Width of the hidden layer.
    bits
        Code length ``b``.

    Examples
    --------
    >>> head = HashingHead(bits=8).eval()
    >>> head.codes(torch.zeros(2, 1280)).shape
    torch.Size([2, 8])
    """

    def __init__(self, in_features: int = 1280, hidden: int = 512, bits: int = 16) -> None:
        super().__init__()
        self.bits = bits
        #: Sharpness of the tanh relaxation; training may raise it so codes approach +-1.
        self.beta = 1.0
        self.mlp = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, bits)
        )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-binarisation values ``z``, shape ``(N, bits)``."""
        return self.mlp(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.logits(x)
        if self.training:
            return torch.tanh(self.beta * z)
        return torch.where(z >= 0, 1.0, -1.0).to(z.dtype)

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean codes ``z >= 0``, shape ``(N, bits)``, whatever the mode."""
        return self.logits(x) >= 0


def hamming_nearest(codes: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """Index of the nearest reference code in Hamming distance, lowest index on ties.

    Parameters
    ----------
    codes
        ``(N, b)`` bool chip codes.
    refs
        ``(K, b)`` bool reference (bucket) codes, ``K >= 1``.

    Returns
    -------
    numpy.ndarray
        ``(N,)`` int64 bucket indices in ``[0, K)``.

    Examples
    --------
    >>> refs = np.array([[0, 0, 0], [1, 1, 1]], dtype=bool)
    >>> hamming_nearest(np.array([[1, 1, 0], [1, 0, 0]], dtype=bool), refs)
    array([1, 0])
    """
    codes = np.asarray(codes, dtype=bool)
    refs = np.asarray(refs, dtype=bool)
    if codes.ndim != 2 or refs.ndim != 2 or codes.shape[1] != refs.shape[1] or len(refs) == 0:
        raise ValueError(f"codes {codes.shape} and refs {refs.shape} must be (N, b) and (K>=1, b)")
    nearest = np.empty(len(codes), dtype=np.int64)
    for start in range(0, len(codes), _HAMMING_ROWS):
        block = codes[start : start + _HAMMING_ROWS]
        distance = (block[:, None, :] != refs[None, :, :]).sum(axis=2)
        # argmin returns the first minimum: the lowest bucket index wins ties.
        nearest[start : start + len(block)] = distance.argmin(axis=1)
    return nearest
