"""Rounding of a Conv's s8 weights to its output, not to itself, and the bias that keeps its mean.

Plain numpy, no graph editing (onnxcompress.int8 applies it to a QDQ model).

ORT's quantizer rounds each weight to the nearest point of its channel's grid (scale s_o,
zero point 0). That minimises |W - Wq|, not the error of the layer's output X (W - Wq)^T.
`round_to_output` minimises the second, one input column at a time with the error of each
rounded column spread over the columns not yet rounded, weighted by the inverse of the input's
second moment H = X^T X (the optimal-brain-quantization update, as in GPTQ, Frantar et al. 2022).
The scales stay ORT's, so only the integers change, always within [-qmax, qmax] (127, or 64 for
ORT's `reduce_range`).

`mean_corrected_bias` then moves the bias by the mean the rounding shifts the output by,
(W - Wq) E[x] per output channel, with E[x] the mean of the unfolded input (zero padding
included), as in the bias correction of Nagel et al. 2019 (data-free quantization), here with
the calibration inputs' means.
"""

from __future__ import annotations

import numpy as np

__all__ = ["round_to_nearest", "round_to_output", "mean_corrected_bias"]

QMAX = 127  # ORT's s8 symmetric weights: [-127, 127]
QMAX_REDUCED = 64  # with quantize_static's reduce_range: [-64, 64], no pair of u8 x s8 products past an int16


def round_to_nearest(weight: np.ndarray, scale: np.ndarray, qmax: int = QMAX) -> np.ndarray:
    """int8 weights [M, K] nearest to `weight` on the grid `scale` [M] (zero point 0), clipped to
    [-qmax, qmax]."""
    s = np.asarray(scale, np.float64).reshape(-1, 1)
    return np.clip(np.rint(np.asarray(weight, np.float64) / s), -qmax, qmax).astype(np.int8)


def round_to_output(weight: np.ndarray, scale: np.ndarray, H: np.ndarray, damp: float = 0.01,
                    qmax: int = QMAX) -> np.ndarray:
    """int8 weights [M, K] on the grid `scale` [M] (zero point 0) minimising the output error.

    weight: [M, K] float, one row per output channel, K columns of the unfolded input;
    H: [K, K], the input's second moment X^T X (any positive scale); damp: added to the
    diagonal as a fraction of its mean (columns never seen get rounded to nearest).
    Deterministic; with H diagonal it is round-to-nearest.
    """
    W = np.array(weight, np.float64, copy=True)
    m, k = W.shape
    s = np.asarray(scale, np.float64).reshape(m)
    if np.any(s <= 0) or not np.all(np.isfinite(s)):
        raise ValueError("weight scales must be positive and finite")
    H = np.array(H, np.float64, copy=True)
    if H.shape != (k, k):
        raise ValueError(f"H must be [{k}, {k}], got {list(H.shape)}")
    dead = np.diag(H) <= 0
    H[dead, dead] = 1.0
    H[np.diag_indices(k)] += damp * float(np.mean(np.diag(H)))
    # the upper Cholesky factor of H^-1: row j holds the update of columns > j after column j
    try:
        U = np.linalg.cholesky(np.linalg.inv(H)).T
    except np.linalg.LinAlgError:
        return round_to_nearest(W, s, qmax)
    Q = np.zeros((m, k), np.int8)
    for j in range(k):
        q = np.clip(np.rint(W[:, j] / s), -qmax, qmax)
        Q[:, j] = q
        err = (W[:, j] - q * s) / U[j, j]
        if j + 1 < k:
            W[:, j + 1:] -= np.outer(err, U[j, j + 1:])
    return Q


def mean_corrected_bias(bias: np.ndarray | None, weight: np.ndarray, dequantized: np.ndarray,
                        mean_x: np.ndarray) -> np.ndarray:
    """bias [M] + (weight - dequantized) [M, K] @ mean_x [K]: the output mean of the fp32 layer kept."""
    w = np.asarray(weight, np.float64)
    shift = (w - np.asarray(dequantized, np.float64)) @ np.asarray(mean_x, np.float64)
    base = np.zeros(w.shape[0]) if bias is None else np.asarray(bias, np.float64)
    return (base + shift).astype(np.float32)
