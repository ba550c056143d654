"""CluSpa fitting: weight sharing with a 1-D Gaussian mixture plus weight sparsity.

Plain numpy functions, no graph code. A layer's weights are handled as the
matrix W [M, D] (D = Cin/group * kh * kw, the order of W.reshape(M, -1)); the
calibration statistics come per group as centred second moments
(Hc [D, D], Gc [D, M/group]) with the input and target means (see
onnxcompress.calibration.ConvMoments / MomentAccumulator.centered()).

The result of a fit is a `ClusteredLayer`: `labels` [M, D] (-1 = pruned, the
zero cluster; otherwise the index of the shared value), `values` ([K-1] for
one codebook per layer or [M, K-1] per output channel) and a bias. K counts
the zero cluster: K = 16 means 15 shared non-zero values plus exact zeros.

Pieces, used by the pass (onnxcompress/passes/cluspa.py):

- fit_gmm_1d: EM for a 1-D Gaussian mixture, batched over rows, with one
  component optionally pinned at mean exactly 0 (scikit-learn's
  GaussianMixture cannot pin a mean, so this is our own EM; deterministic:
  quantile initialisation, seeded subsampling).
- magnitude_mask / second_order_scores / mask_from_scores: which weights to
  prune (|w|, or the Optimal Brain Compression saliency w^2 / [H^-1]_jj).
- allocate_sparsity: a different fraction per layer for a global target, by a
  Lagrangian over per-layer error curves.
- cluster_weights: GMM on the surviving weights, hard assignment to the
  nearest component mean, values = mean of their weights.
- refit_values: least-squares refit of the shared values with the assignments
  fixed, against the layer's real outputs (from the moments).
- fit_layer_calibrated / fit_layer_data_free: the whole layer recipe.
- encode_layout: the op's compact layout (counts per (channel, cluster),
  column indices grouped by cluster, each in its smallest integer type).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy import sparse

from . import allocation

__all__ = [
    "ClusteredLayer", "fit_gmm_1d", "magnitude_mask", "threshold_mask", "second_order_scores", "mask_from_scores",
    "pruning_error_curve", "allocate_sparsity", "cluster_weights", "refit_values", "masked_refit",
    "fit_layer_calibrated", "fit_layer_data_free", "encode_layout", "decode_layout", "smallest_uint",
    "SPARSITY_GRID", "DEFAULT_RIDGE",
]

DEFAULT_RIDGE = 1e-4
# Candidate per-layer sparsities for the allocation across layers.
SPARSITY_GRID = (0.0, 0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99)


@dataclass
class ClusteredLayer:
    """A layer as shared values plus exact zeros.

    labels: int [M, D], -1 where the weight is zero (pruned), else the index of its value.
    values: float [K'] (one codebook for the layer) or [M, K'] (one per output channel).
    bias: float [M] or None.
    """

    labels: np.ndarray
    values: np.ndarray
    bias: np.ndarray | None
    info: dict = field(default_factory=dict)

    @property
    def per_channel(self) -> bool:
        return self.values.ndim == 2

    def weight(self) -> np.ndarray:
        """The dense [M, D] weight matrix this layer stands for (float32)."""
        return weight_from_labels(self.labels, self.values)

    @property
    def sparsity(self) -> float:
        return float(np.mean(self.labels < 0)) if self.labels.size else 0.0


def weight_from_labels(labels: np.ndarray, values: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    values = np.asarray(values, np.float64)
    if values.ndim == 1:
        table = np.concatenate([values, [0.0]])
        w = table[np.where(labels < 0, len(values), labels)]
    else:
        table = np.concatenate([values, np.zeros((values.shape[0], 1))], axis=1)
        w = np.take_along_axis(table, np.where(labels < 0, values.shape[1], labels), axis=1)
    return w.astype(np.float32)


# ---------------------------------------------------------------- 1-D Gaussian mixture

def fit_gmm_1d(x: np.ndarray, k: int, *, pin_zero: bool = False, valid: np.ndarray | None = None,
               max_iter: int = 60, tol: float = 1e-6, seed: int = 0, sample: int = 8192,
               reg_var: float = 1e-10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EM for 1-D Gaussian mixtures, one per row of x [B, n] (or x [n]: one mixture).

    pin_zero: component 0's mean stays exactly 0 (its variance and weight are free).
    valid: bool like x, the entries that take part (None: all).
    sample: rows longer than this are fitted on a seeded random subset.
    Initialisation: means at evenly spaced quantiles of each row (deterministic),
    equal weights, the row's variance. Returns (means, variances, weights), each
    [B, k] ([k] for 1-D x).
    """
    x = np.asarray(x, np.float64)
    squeeze = x.ndim == 1
    if squeeze:
        x = x[None]
        valid = None if valid is None else np.asarray(valid, bool)[None]
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    b, n = x.shape
    valid = np.ones_like(x, bool) if valid is None else np.asarray(valid, bool)
    rng = np.random.default_rng(seed)
    if n > sample:
        cols = np.sort(rng.choice(n, size=sample, replace=False))
        x, valid = x[:, cols], valid[:, cols]
        n = sample
    v = valid.astype(np.float64)
    cnt = np.maximum(v.sum(1), 1.0)
    mean = (x * v).sum(1) / cnt
    var = np.maximum(((x - mean[:, None]) ** 2 * v).sum(1) / cnt, reg_var)
    free = k - 1 if pin_zero else k
    means = np.zeros((b, k))
    if free > 0:
        qs = (np.arange(free) + 0.5) / free
        for i in range(b):
            xi = x[i][valid[i]]
            means[i, k - free:] = np.quantile(xi, qs) if xi.size else 0.0
    variances = np.repeat((var / max(k, 1) ** 2)[:, None], k, axis=1) + reg_var
    weights = np.full((b, k), 1.0 / k)
    prev = -np.inf
    for _ in range(max_iter):
        # E step, in log space: [B, n, k]
        d = x[:, :, None] - means[:, None, :]
        logp = (-0.5 * d * d / variances[:, None, :] - 0.5 * np.log(2 * np.pi * variances[:, None, :])
                + np.log(np.maximum(weights[:, None, :], 1e-300)))
        top = logp.max(2, keepdims=True)
        p = np.exp(logp - top)
        s = p.sum(2, keepdims=True)
        resp = p / s * v[:, :, None]
        ll = float(((np.log(s[..., 0]) + top[..., 0]) * v).sum() / cnt.sum())
        # M step
        nk = resp.sum(1) + 1e-12
        weights = nk / cnt[:, None]
        new_means = (resp * x[:, :, None]).sum(1) / nk
        if pin_zero:
            new_means[:, 0] = 0.0
        means = new_means
        d = x[:, :, None] - means[:, None, :]
        variances = (resp * d * d).sum(1) / nk + reg_var
        if abs(ll - prev) < tol * max(1.0, abs(ll)):
            break
        prev = ll
    if squeeze:
        return means[0], variances[0], weights[0]
    return means, variances, weights


# ---------------------------------------------------------------- which weights to prune

def _kth_threshold(scores: np.ndarray, sparsity: float) -> np.ndarray:
    """Bool mask keeping the largest (1 - sparsity) of scores (ties broken by position, deterministic)."""
    flat = scores.ravel()
    n_prune = int(round(float(sparsity) * flat.size))
    keep = np.ones(flat.size, bool)
    if n_prune > 0:
        order = np.argsort(flat, kind="stable")
        keep[order[:n_prune]] = False
    return keep.reshape(scores.shape)


def magnitude_mask(w: np.ndarray, sparsity: float, per_channel: bool = False) -> np.ndarray:
    """Keeps the largest |w|: a fraction `sparsity` of the layer (or of each row) is pruned."""
    return mask_from_scores(np.abs(np.asarray(w, np.float64)), sparsity, per_channel)


def threshold_mask(w: np.ndarray, threshold: float) -> np.ndarray:
    """Keeps |w| >= threshold."""
    return np.abs(np.asarray(w)) >= threshold


def mask_from_scores(scores: np.ndarray, sparsity: float, per_channel: bool = False) -> np.ndarray:
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    scores = np.asarray(scores, np.float64)
    if per_channel:
        return np.stack([_kth_threshold(row, sparsity) for row in scores]) if scores.size else scores > 0
    return _kth_threshold(scores, sparsity)


def _ridged(H: np.ndarray, ridge: float) -> np.ndarray:
    H = np.asarray(H, np.float64)
    scale = float(np.mean(np.diag(H))) if H.size else 0.0
    lam = ridge * scale if scale > 0 else ridge
    return H + max(lam, 1e-12) * np.eye(H.shape[0])


def second_order_scores(w: np.ndarray, H: np.ndarray, ridge: float = DEFAULT_RIDGE) -> np.ndarray:
    """Optimal Brain Compression saliency w_ij^2 / [H^-1]_jj (the output-error increase of
    pruning one weight alone, up to a factor 1/2); w [M, D], H [D, D] the input's moments."""
    hinv_diag = np.diag(np.linalg.inv(_ridged(H, ridge)))
    return np.asarray(w, np.float64) ** 2 / np.maximum(hinv_diag, 1e-300)[None, :]


def pruning_error_curve(scores: np.ndarray, energy: float, grid: Sequence[float] = SPARSITY_GRID) -> np.ndarray:
    """Relative error estimate for each sparsity of `grid`: the sum of the pruned
    (smallest) scores, divided by `energy` (the layer's output energy or weight norm)."""
    return allocation.pruning_error_curve(scores, energy, grid)


def allocate_sparsity(curves: Sequence[np.ndarray], sizes: Sequence[int], target: float,
                      grid: Sequence[float] = SPARSITY_GRID, max_sparsity: float | None = None) -> list[float]:
    """Per-layer sparsities from `grid` whose weighted mean (by `sizes`, the layers'
    weight counts) reaches `target`, minimising the sum of the layers' error
    estimates (`curves[l][i]` is layer l's error at grid[i]); the Lagrangian of
    `allocation.allocate` with the kept weights as the cost."""
    grid = np.asarray(grid, np.float64)
    allowed = np.ones(len(grid), bool) if max_sparsity is None else grid <= max_sparsity + 1e-12
    sizes = np.asarray(sizes, np.float64)
    if sizes.sum() == 0:
        return [0.0] * len(sizes)
    options = grid[allowed]
    errors = [np.asarray(c, np.float64)[allowed] for c in curves]
    costs = [(1.0 - options) * n for n in sizes]
    choice = allocation.allocate(errors, costs, (1.0 - target) * sizes.sum() + 1e-9 * sizes.sum())
    return [float(options[i]) for i in choice]


# ---------------------------------------------------------------- clustering the survivors

def _nearest(w: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Index of the nearest of sorted `means` for each entry of w (1-D means)."""
    order = np.argsort(means, kind="stable")
    sm = means[order]
    mids = 0.5 * (sm[1:] + sm[:-1])
    return order[np.searchsorted(mids, w)]


def cluster_weights(w: np.ndarray, mask: np.ndarray | None, n_values: int, *, per_channel: bool = False,
                    seed: int = 0, pin_zero: bool = False, max_iter: int = 100,
                    lloyd_iters: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """(labels [M, D], values) for the weights w [M, D].

    mask: kept weights (None: the GMM decides, with pin_zero: weights nearest the
    pinned zero component are pruned). n_values: shared non-zero values (K - 1).
    Each surviving weight goes to the nearest component mean; a value is the mean
    of its weights (the weight-space least-squares value); then up to
    `lloyd_iters` rounds of nearest-value reassignment and re-averaging (1-D
    Lloyd) polish the GMM's solution. Empty clusters keep their GMM mean (they
    cost nothing: no index refers to them).
    """
    w = np.asarray(w, np.float64)
    m, d = w.shape
    if n_values < 1:
        raise ValueError(f"need at least one shared non-zero value, got {n_values}")
    comps = n_values + (1 if pin_zero else 0)
    rows = w if per_channel else w.reshape(1, -1)
    valid = None
    if mask is not None:
        mask = np.asarray(mask, bool)
        valid = mask if per_channel else mask.reshape(1, -1)
    means, _, _ = fit_gmm_1d(rows, comps, pin_zero=pin_zero, valid=valid, seed=seed, max_iter=max_iter)
    labels = np.full((m, d), -1, np.int32)
    vals = np.zeros((rows.shape[0], n_values))
    for i in range(rows.shape[0]):
        mu = means[i]
        lab = _nearest(rows[i], mu)
        if pin_zero:
            lab = lab - 1  # component 0 (mean 0) -> -1, others shift down
        if valid is not None:
            lab = np.where(valid[i], lab, -1)
        free = mu[1:] if pin_zero else mu
        keep = lab >= 0
        for it in range(lloyd_iters + 1):
            for c in range(n_values):
                sel = lab == c
                vals[i, c] = rows[i][sel].mean() if np.any(sel) else free[c]
            if it == lloyd_iters:
                break
            new = np.where(keep, _nearest(rows[i], vals[i]), -1)
            if np.array_equal(new, lab):
                break
            lab = new
        if per_channel:
            labels[i] = lab
        else:
            labels[:] = lab.reshape(m, d)
    return labels, (vals if per_channel else vals[0])


# ---------------------------------------------------------------- least-squares refits

def masked_refit(Hc: np.ndarray, Gc: np.ndarray, mask: np.ndarray | None, ridge: float = DEFAULT_RIDGE) -> np.ndarray:
    """Surviving weights re-fitted by masked ridge least squares (one group): W [Mg, D]."""
    from ..calibration.solve import solve_masked

    if mask is None:
        return solve_masked(Hc, Gc, None, ridge)
    # Many small solves: BLAS threads only add contention (10x slower on a loaded 2-core machine).
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return solve_masked(Hc, Gc, mask, ridge)


def refit_values(groups: Sequence[tuple[np.ndarray, np.ndarray]], labels: np.ndarray, values: np.ndarray,
                 ridge: float = 1e-6, chunk: int = 64) -> np.ndarray:
    """The shared values re-fitted by least squares with the assignments fixed.

    groups: per group (Hc [D, D], Gc [D, Mg]) centred moments (bias solved afterwards).
    labels [M, D]; values [K'] (one codebook: one joint solve over the layer) or
    [M, K'] (per channel: one small solve per channel). Minimises
    sum_o (w_o^T Hc w_o - 2 w_o^T Gc_o) with w_o = E_o c (E_o the one-hot
    assignment matrix), i.e. the layer's output error on the calibration data.
    Values of empty clusters are kept.
    """
    values = np.asarray(values, np.float64)
    per_channel = values.ndim == 2
    kv = values.shape[-1]
    m = labels.shape[0]
    ng = len(groups)
    mg = m // ng
    Q = np.zeros((kv, kv))
    r = np.zeros(kv)
    out = values.copy()
    for g, (H, G) in enumerate(groups):
        H = np.asarray(H, np.float64)
        G = np.asarray(G, np.float64)
        d = H.shape[0]
        for start in range(0, mg, chunk):
            stop = min(mg, start + chunk)
            c = stop - start
            lab = labels[g * mg + start:g * mg + stop]                 # [c, D]
            rr, cc = np.nonzero(lab >= 0)
            # one-hot assignments as a sparse [c*K, D] matrix: row o*K + k
            E = sparse.csr_matrix((np.ones(len(rr)), (rr * kv + lab[rr, cc], cc)), shape=(c * kv, d))
            HE = np.asarray(E @ H)                                     # [c*K, D] = E^T H per channel
            QQ = np.asarray(E @ HE.T)                                  # [c*K, c*K]; blocks on the diagonal
            blocks = QQ.reshape(c, kv, c, kv)[np.arange(c), :, np.arange(c), :]   # [c, K, K]
            Qo = blocks
            RG = np.asarray(E @ G[:, start:stop])                      # [c*K, c]
            ro = RG.reshape(c, kv, c)[np.arange(c), :, np.arange(c)]   # [c, K]
            if per_channel:
                for i in range(stop - start):
                    o = g * mg + start + i
                    used = Qo[i].diagonal() > 0
                    if not np.any(used):
                        continue
                    q = Qo[i][np.ix_(used, used)]
                    lam = ridge * float(np.mean(np.diag(q)))
                    try:
                        sol = np.linalg.solve(q + lam * np.eye(len(q)), ro[i][used])
                    except np.linalg.LinAlgError:
                        sol = np.linalg.lstsq(q, ro[i][used], rcond=None)[0]
                    out[o, used] = sol
            else:
                Q += Qo.sum(0)
                r += ro.sum(0)
    if not per_channel:
        used = Q.diagonal() > 0
        if np.any(used):
            q = Q[np.ix_(used, used)]
            lam = ridge * float(np.mean(np.diag(q)))
            try:
                out[used] = np.linalg.solve(q + lam * np.eye(len(q)), r[used])
            except np.linalg.LinAlgError:
                out[used] = np.linalg.lstsq(q, r[used], rcond=None)[0]
    return out


def _bias_from_means(w: np.ndarray, mean_x: Sequence[np.ndarray], mean_y: Sequence[np.ndarray]) -> np.ndarray:
    ng = len(mean_x)
    mg = w.shape[0] // ng
    return np.concatenate([np.asarray(mean_y[g]) - w[g * mg:(g + 1) * mg].astype(np.float64) @ np.asarray(mean_x[g])
                           for g in range(ng)])


def fit_layer_calibrated(w: np.ndarray, groups: Sequence[tuple[np.ndarray, np.ndarray]],
                         means: Sequence[tuple[np.ndarray, np.ndarray]], *, k: int, sparsity: float | None = None,
                         threshold: float | None = None, per_channel: bool = False, criterion: str = "second-order",
                         ridge: float = DEFAULT_RIDGE, seed: int = 0) -> ClusteredLayer:
    """The calibrated recipe for one layer (sequential: the moments come from the
    layer's input in the model compressed so far and the original's output).

    w [M, D] the original weights; groups: per group (Hc, Gc) centred moments;
    means: per group (mean_x [D], mean_y [Mg]).
    1. choose the pruned weights (second-order: w*^2 / [H^-1]_jj with w* the
       unmasked refit; or magnitude), at `sparsity` (or |w| < threshold);
    2. re-fit the survivors by masked ridge least squares;
    3. cluster them (GMM, K-1 shared values), re-fit the values by least squares
       with the assignments fixed;
    4. bias = mean(Y) - W mean(X): the output mean is corrected.
    """
    w = np.asarray(w, np.float64)
    m, d = w.shape
    ng = len(groups)
    mg = m // ng
    if k < 2:
        raise ValueError(f"K must be >= 2 (the zero cluster and one value), got {k}")
    dense = np.zeros_like(w)
    scores = np.zeros_like(w)
    for g, (H, G) in enumerate(groups):
        sl = slice(g * mg, (g + 1) * mg)
        dense[sl] = masked_refit(H, G, None, ridge)
        if criterion == "second-order":
            scores[sl] = second_order_scores(dense[sl], H, ridge)
        elif criterion == "magnitude":
            scores[sl] = np.abs(w[sl])
        else:
            raise ValueError(f"unknown pruning criterion '{criterion}' (second-order or magnitude)")
    if threshold is not None:
        mask = threshold_mask(w, threshold)
    elif sparsity is not None:
        mask = mask_from_scores(scores, sparsity, per_channel)
    else:
        mask = np.ones_like(w, bool)
    refit = np.zeros_like(w)
    for g, (H, G) in enumerate(groups):
        sl = slice(g * mg, (g + 1) * mg)
        refit[sl] = masked_refit(H, G, mask[sl], ridge)
    labels, values = cluster_weights(refit, mask, k - 1, per_channel=per_channel, seed=seed)
    values = refit_values(groups, labels, values)
    wq = weight_from_labels(labels, values)
    bias = _bias_from_means(wq, [mx for mx, _ in means], [my for _, my in means])
    return ClusteredLayer(labels, np.asarray(values, np.float32), bias.astype(np.float32),
                          info={"sparsity": float(np.mean(~mask)), "criterion": criterion})


def fit_layer_data_free(w: np.ndarray, bias: np.ndarray | None, *, k: int, sparsity: float | None = None,
                        threshold: float | None = None, per_channel: bool = False, seed: int = 0) -> ClusteredLayer:
    """No calibration data: prune by magnitude (`sparsity` or |w| < threshold); with
    neither, the GMM's component pinned at 0 decides what is pruned. The survivors
    are clustered into K-1 shared values (means of their weights); bias unchanged."""
    w = np.asarray(w, np.float64)
    if k < 2:
        raise ValueError(f"K must be >= 2 (the zero cluster and one value), got {k}")
    if threshold is not None:
        mask = threshold_mask(w, threshold)
    elif sparsity is not None:
        mask = magnitude_mask(w, sparsity, per_channel)
    else:
        mask = None
    labels, values = cluster_weights(w, mask, k - 1, per_channel=per_channel, seed=seed, pin_zero=mask is None)
    b = None if bias is None else np.asarray(bias, np.float32)
    return ClusteredLayer(labels, np.asarray(values, np.float32), b,
                          info={"sparsity": float(np.mean(labels < 0)), "criterion": "magnitude" if mask is not None
                                else "gmm-zero-component"})


# ---------------------------------------------------------------- the op's layout

def smallest_uint(max_value: int) -> np.dtype:
    """uint8 / uint16 / int32 (ONNX Runtime custom ops read int32 more widely than uint32)."""
    if max_value < 0:
        raise ValueError("max_value must be >= 0")
    if max_value <= 0xFF:
        return np.dtype(np.uint8)
    if max_value <= 0xFFFF:
        return np.dtype(np.uint16)
    if max_value <= 0x7FFFFFFF:
        return np.dtype(np.int32)
    raise ValueError(f"{max_value} does not fit in int32")


def encode_layout(labels: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, counts, indices) of ClusteredSparseConv (docs/ops.md).

    labels [M, D] (-1 = zero), values [K'] or [M, K'].
    counts [M, K']: how many columns of channel o have value k; indices: for
    o = 0..M-1, k = 0..K'-1, the columns (ascending) of channel o in cluster k,
    concatenated. Clusters no channel uses are dropped (from a shared codebook)
    so that every stored value is used; counts and indices take the smallest
    unsigned type that holds them.
    """
    labels = np.asarray(labels)
    values = np.asarray(values, np.float32)
    m, d = labels.shape
    kv = values.shape[-1]
    if values.ndim == 1:
        used = np.zeros(kv, bool)
        used[np.unique(labels[labels >= 0])] = True
        remap = np.full(kv + 1, -1)
        remap[np.flatnonzero(used)] = np.arange(int(used.sum()))
        labels = np.where(labels >= 0, remap[np.where(labels >= 0, labels, kv)], -1)
        values = values[used]
        kv = len(values)
    kv = max(kv, 1)
    if values.size == 0:
        values = np.zeros((kv,) if values.ndim == 1 else (m, kv), np.float32)
    counts = np.zeros((m, kv), np.int64)
    rows, cols = np.nonzero(labels >= 0)
    lab = labels[rows, cols]
    np.add.at(counts, (rows, lab), 1)
    order = np.lexsort((cols, lab, rows))   # by channel, then cluster, then column
    indices = cols[order]
    counts = counts.astype(smallest_uint(int(counts.max(initial=0))))
    indices = indices.astype(smallest_uint(max(d - 1, 0)))
    return values.astype(np.float32), counts, indices


def decode_layout(values: np.ndarray, counts: np.ndarray, indices: np.ndarray, d: int) -> np.ndarray:
    """The dense [M, D] weights of a layout (the inverse of encode_layout, for checks)."""
    values = np.asarray(values, np.float32)
    counts = np.asarray(counts, np.int64)
    m, kv = counts.shape
    w = np.zeros((m, d), np.float32)
    pos = 0
    idx = np.asarray(indices, np.int64)
    for o in range(m):
        for k in range(kv):
            n = counts[o, k]
            v = values[o, k] if values.ndim == 2 else values[k]
            w[o, idx[pos:pos + n]] = v
            pos += n
    return w
