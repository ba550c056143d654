"""Lookup-table convolution (TabConv) fitting: product quantisation of a layer's
im2col rows, encoders, and the tables `T[c, k, o]`. Plain numpy / scikit-learn
/ scipy, no graph code.

A layer's (one group's) im2col row x has D columns in (channel, ky, kx) order.
It is split into C codebooks of S = ceil(D / C) consecutive columns (the last
padded with zero columns, so C*S >= D; C itself is reduced so that no codebook
is all padding). A row's encoding is one code per codebook, and the layer's
output is

    y[o] = sum_c T[c, code_c(x), o] + bias[o]

Encoders:

- exhaustive: K prototypes per codebook (k-means on the codebook's columns);
  the code is the nearest prototype (squared distance, ties: lowest index).
  Encoding costs S*K multiply-adds per codebook.
- tree (MADDNESS-style): K = 16; a balanced tree of depth 4 per codebook
  whose level l compares one column `split_dims[c, l]` (shared by the level's
  nodes) with the node's threshold: starting from node 0, at level l the node
  is b (0 <= b < 2^l) and the next is 2b + (x[split_dims[c, l]] > thresholds[c,
  2^l - 1 + b]). Four comparisons per codebook; the leaf is the code. The
  comparisons are done in float32, exactly as the kernel does them.

Tables:

- fit_tables_ridge: with the codes fixed, tables and bias solve the ridge
  least-squares problem min ||onehot(codes) T + b - Y||^2 + lam ||T||^2
  against the layer's target output Y (for a sequential fit: the original
  model's output, with X taken from the model approximated so far), bias free
  (centred), so the output mean is corrected. This is MADDNESS's ridge refit
  done on the output instead of on the prototypes: it sees the layer's weights
  only through Y. fit_tables_ridge_holdout chooses the ridge per layer: fit
  on 80% of the calibration inputs for each ridge of a small grid, keep the
  one with the least error on the other 20%, refit on all rows with it (small
  calibration sets otherwise over-fit the C*K*M table entries).
- tables_from_prototypes: T[c, k, o] = <prototype(c, k), W_c[:, o]>, the
  plain product quantisation table, with the bias corrected to the target's
  output mean (bias_correction); used when C*K is too large for the ridge.
- quantize_tables: 8 bits, T ~ offset[c, o] + scale * q[c, k, o] with q in
  [0, 255], scale per layer (or per output channel) and offset[c, o] = min_k
  T[c, k, o]; the offsets are summed into the bias (they cost nothing at run
  time), so the kernel adds bytes and applies one scale per output.

Everything is deterministic given the seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "TREE_DEPTH", "TREE_K", "codebook_layout", "pad_columns", "fit_kmeans_prototypes", "encode_exhaustive",
    "fit_tree_encoder", "encode_tree", "bucket_prototypes", "fit_tables_ridge", "holdout_split",
    "fit_tables_ridge_holdout", "DEFAULT_RIDGE", "RIDGE_GRID", "tables_from_prototypes",
    "lut_output", "quantize_tables", "dequantize_tables", "bias_correction", "cosine", "LutFit", "fit_lut_layer",
    "lut_costs",
]

TREE_DEPTH = 4
TREE_K = 1 << TREE_DEPTH
# Largest threshold stored for a node that never splits (empty or constant bucket):
# nothing is greater, so every row goes left.
_NO_SPLIT = np.float32(np.finfo(np.float32).max)
# C*K above which the ridge table fit (a dense [C*K, C*K] system) is replaced
# by prototype tables with a bias correction.
MAX_RIDGE_UNKNOWNS = 4096


def codebook_layout(dim: int, codebooks: int) -> tuple[int, int]:
    """(C, S): codebooks actually used and columns per codebook for D = dim columns.

    S = ceil(dim / codebooks), C = ceil(dim / S) <= codebooks, so C*S >= dim and
    every codebook has at least one real column.
    """
    if dim < 1 or codebooks < 1:
        raise ValueError(f"need dim >= 1 and codebooks >= 1, got {dim} and {codebooks}")
    s = -(-dim // min(codebooks, dim))
    return -(-dim // s), s


def pad_columns(x: np.ndarray, c: int, s: int) -> np.ndarray:
    """x [N, D] with zero columns appended up to C*S, as float32."""
    x = np.asarray(x, np.float32)
    extra = c * s - x.shape[1]
    if extra < 0:
        raise ValueError(f"{x.shape[1]} columns do not fit {c} codebooks of {s}")
    return np.pad(x, ((0, 0), (0, extra))) if extra else x


def _subsample(n: int, limit: int | None, rng: np.random.Generator) -> np.ndarray | None:
    if limit is None or n <= limit:
        return None
    return np.sort(rng.choice(n, size=limit, replace=False))


# ---------------------------------------------------------------- exhaustive

def fit_kmeans_prototypes(x: np.ndarray, codebooks: int, k: int, seed: int = 0, max_rows: int | None = 16384,
                          max_iter: int = 25) -> np.ndarray:
    """Prototypes [C, K, S] (float32) by k-means (Lloyd) on each codebook's columns of x [N, D].

    All codebooks are iterated together (vectorised). Initial centres: K distinct
    rows per codebook drawn with the seed; an empty cluster takes the row
    farthest from its centre. The padded columns of the last codebook are zero.
    """
    x = np.asarray(x, np.float32)
    c, s = codebook_layout(x.shape[1], codebooks)
    if not 1 <= k <= 256:
        raise ValueError(f"prototypes K must be in [1, 256], got {k}")
    rng = np.random.default_rng(seed)
    keep = _subsample(len(x), max_rows, rng)
    xs = pad_columns(x if keep is None else x[keep], c, s).reshape(-1, c, s).astype(np.float64)  # [N, C, S]
    n = len(xs)
    if n == 0:
        raise ValueError("no rows to fit prototypes on")
    protos = np.empty((c, k, s))
    for j in range(c):
        distinct = np.unique(xs[:, j], axis=0)
        if len(distinct) <= k:  # fewer distinct vectors than prototypes: take them all
            protos[j, :len(distinct)] = distinct
            protos[j, len(distinct):] = distinct[0]
        else:
            protos[j] = distinct[np.sort(rng.choice(len(distinct), size=k, replace=False))]
    cidx = np.arange(c)
    for _ in range(max_iter):
        dist = np.einsum("cks,cks->ck", protos, protos)[None] - 2.0 * np.einsum("ncs,cks->nck", xs, protos)
        assign = np.argmin(dist, axis=2)  # [N, C]
        flat = (cidx[None, :] * k + assign).ravel()
        counts = np.bincount(flat, minlength=c * k).reshape(c, k)
        sums = np.stack([np.bincount(flat, weights=xs[:, :, q].ravel(), minlength=c * k) for q in range(s)], 1)
        sums = sums.reshape(c, k, s)
        new = np.where(counts[:, :, None] > 0, sums / np.maximum(counts, 1)[:, :, None], protos)
        empty = np.argwhere(counts == 0)
        if len(empty):
            best = np.min(dist, axis=2) + np.einsum("ncs,ncs->nc", xs, xs)  # squared distance to own centre
            for j, q in empty:
                far = int(np.argmax(best[:, j]))
                new[j, q] = xs[far, j]
                best[far, j] = -1.0
        if np.allclose(new, protos, rtol=0, atol=1e-7):
            protos = new
            break
        protos = new
    protos = protos.astype(np.float32)
    real = x.shape[1] - (c - 1) * s
    protos[c - 1, :, real:] = 0.0
    return protos


def encode_exhaustive(x: np.ndarray, prototypes: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Codes [N, C] (uint8) of the nearest prototype per codebook; x [N, D], prototypes [C, K, S].

    Distance = ||p||^2 - 2 <x, p> (the ||x||^2 term is common); ties go to the lowest index.
    """
    protos = np.asarray(prototypes, np.float32)
    c, k, s = protos.shape
    out = np.empty((len(x), c), np.uint8)
    norms = np.einsum("cks,cks->ck", protos, protos)
    for start in range(0, len(x), chunk):
        xs = pad_columns(x[start:start + chunk], c, s).reshape(-1, c, s)
        dist = norms[None] - 2.0 * np.einsum("ncs,cks->nck", xs, protos)
        out[start:start + chunk] = np.argmin(dist, axis=2)
    return out


# ---------------------------------------------------------------------- tree

def _best_splits(values: np.ndarray, rows: np.ndarray, bucket: np.ndarray, nb: int):
    """Best split of every bucket on one column: (total loss, thresholds [nb] float32).

    values [n] float32, rows [n, S] float64 (the codebook's columns), bucket [n].
    Loss of a bucket: the summed squared error of its two sides around their
    means over all S columns; threshold t puts values <= t left, > t right.
    A bucket that cannot split (< 2 rows, constant values) keeps its SSE and
    gets _NO_SPLIT. All buckets in one sort and one cumulative sum.
    """
    n = len(values)
    thr = np.full(nb, _NO_SPLIT, np.float32)
    if n == 0:
        return 0.0, thr
    order = np.lexsort((values, bucket))
    v, z, b = values[order], rows[order], bucket[order]
    counts = np.bincount(b, minlength=nb)
    ends = np.cumsum(counts)
    starts = ends - counts
    # c1p[i]: column sums of the first i rows; c2p[i]: their summed squares (all columns)
    c1p = np.concatenate([np.zeros((1, z.shape[1])), np.cumsum(z, axis=0)])
    c2p = np.concatenate([[0.0], np.cumsum(np.einsum("ns,ns->n", z, z))])
    st, en = starts[b], ends[b]
    i = np.arange(n)
    nl = (i - st + 1).astype(np.float64)
    nr = (en - i - 1).astype(np.float64)
    l1, r1 = c1p[i + 1] - c1p[st], c1p[en] - c1p[i + 1]
    # SSE = sum of squares - |sum|^2 / count, left and right
    loss = (c2p[en] - c2p[st]) - np.einsum("ns,ns->n", l1, l1) / nl - np.einsum("ns,ns->n", r1, r1) / np.maximum(nr, 1)
    nxt = np.minimum(i + 1, n - 1)
    valid = (nr >= 1) & (v[nxt] > v)
    loss = np.where(valid, loss, np.inf)
    total = 0.0
    for q in np.flatnonzero(counts):
        seg = slice(starts[q], ends[q])
        j = int(np.argmin(loss[seg])) + starts[q]
        if np.isfinite(loss[j]):
            total += float(loss[j])
            lo, hi = v[j], v[j + 1]
            t = np.float32((np.float64(lo) + np.float64(hi)) / 2.0)
            thr[q] = t if lo <= t < hi else lo
        else:
            tot = c1p[ends[q]] - c1p[starts[q]]
            total += float((c2p[ends[q]] - c2p[starts[q]]) - tot @ tot / counts[q])
    return total, thr


def fit_tree_encoder(x: np.ndarray, codebooks: int, seed: int = 0, max_rows: int | None = 4096,
                     candidates: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(split_dims [C, 4] int64 (column indices in [0, D)), thresholds [C, 15] float32).

    Greedy, level by level (MADDNESS): at each level every candidate column of
    the codebook is tried; each bucket is split at its best threshold on that
    column (least summed squared error of the codebook's columns); the column
    with the least total error is the level's. Candidates: the `candidates`
    columns with the largest within-bucket variance (all when S is small).
    """
    x = np.asarray(x, np.float32)
    d = x.shape[1]
    c, s = codebook_layout(d, codebooks)
    rng = np.random.default_rng(seed)
    keep = _subsample(len(x), max_rows, rng)
    xs = x if keep is None else x[keep]
    dims = np.zeros((c, TREE_DEPTH), np.int64)
    thresholds = np.full((c, TREE_K - 1), _NO_SPLIT, np.float32)
    for j in range(c):
        cols = np.arange(j * s, min((j + 1) * s, d))
        sub = xs[:, cols]
        sub64 = sub.astype(np.float64)
        bucket = np.zeros(len(sub), np.int64)
        for level in range(TREE_DEPTH):
            nb = 1 << level
            counts = np.bincount(bucket, minlength=nb).astype(np.float64)
            sums = np.stack([np.bincount(bucket, weights=sub64[:, q], minlength=nb) for q in range(len(cols))], 1)
            sq = np.stack([np.bincount(bucket, weights=sub64[:, q] ** 2, minlength=nb) for q in range(len(cols))], 1)
            spread = (sq - sums ** 2 / np.maximum(counts, 1)[:, None]).sum(axis=0)
            cand = np.argsort(-spread, kind="stable")[:candidates]
            best = (np.inf, 0, None)
            for q in cand:
                total, thrs = _best_splits(sub[:, q], sub64, bucket, nb)
                if total < best[0]:
                    best = (total, int(q), thrs)
            _, q, thrs = best
            dims[j, level] = cols[q]
            thresholds[j, nb - 1:2 * nb - 1] = thrs
            bucket = 2 * bucket + (sub[:, q] > thrs[bucket])
    return dims, thresholds


def encode_tree(x: np.ndarray, split_dims: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Codes [N, C] (uint8, < 16) of the tree encoder, comparisons in float32 as the kernel does."""
    x = np.asarray(x, np.float32)
    c = split_dims.shape[0]
    thresholds = np.asarray(thresholds, np.float32)
    node = np.zeros((len(x), c), np.int64)
    cidx = np.arange(c)[None, :]
    for level in range(TREE_DEPTH):
        vals = x[:, split_dims[:, level]]  # [N, C]
        thr = thresholds[cidx, (1 << level) - 1 + node]
        node = 2 * node + (vals > thr)
    return node.astype(np.uint8)


def bucket_prototypes(x: np.ndarray, codes: np.ndarray, k: int, codebooks: int) -> np.ndarray:
    """Prototypes [C, K, S] (float32): the mean of each bucket's rows on the codebook's columns (0 if empty)."""
    x = np.asarray(x, np.float64)
    c, s = codebook_layout(x.shape[1], codebooks)
    xs = pad_columns(x, c, s).astype(np.float64)
    protos = np.zeros((c, k, s))
    for j in range(c):
        counts = np.bincount(codes[:, j], minlength=k)[:k].astype(np.float64)
        for q in range(s):
            protos[j, :, q] = np.bincount(codes[:, j], weights=xs[:, j * s + q], minlength=k)[:k]
        protos[j] /= np.maximum(counts, 1)[:, None]
    return protos.astype(np.float32)


# -------------------------------------------------------------------- tables

def _onehot(codes: np.ndarray, k: int):
    from scipy import sparse

    n, c = codes.shape
    cols = (np.arange(c)[None, :] * k + codes.astype(np.int64)).ravel()
    rows = np.repeat(np.arange(n), c)
    return sparse.csr_matrix((np.ones(n * c), (rows, cols)), shape=(n, c * k))


def _ridge_moments(codes: np.ndarray, k: int, y: np.ndarray) -> tuple:
    """Uncentred moments of the one-hot design: (G^T G dense, G^T y, column sums of G, sum of y, rows)."""
    g = _onehot(codes, k)
    return ((g.T @ g).toarray(), np.asarray(g.T @ y), np.asarray(g.sum(axis=0)).ravel(), y.sum(axis=0), len(codes))


def _add_moments(a: tuple, b: tuple) -> tuple:
    return tuple(u + v for u, v in zip(a, b))


def _solve_ridge(moments: tuple, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """(T [C*K, M], bias [M]) of the centred ridge problem given by the uncentred moments."""
    gtg, gty, gsum, ysum, n = moments
    n = max(n, 1)
    mu, my = gsum / n, ysum / n
    gram = gtg - n * np.outer(mu, mu)
    rhs = gty - n * np.outer(mu, my)
    lam = ridge * float(np.mean(np.diag(gram)))
    lam = lam if lam > 0 else 1e-12
    a = gram + lam * np.eye(len(gram))
    try:
        from scipy.linalg import solve

        t = solve(a, rhs, assume_a="pos", check_finite=False)  # Cholesky: the matrix is SPD
    except Exception:
        t = np.linalg.lstsq(a, rhs, rcond=None)[0]
    return t, my - mu @ t


def fit_tables_ridge(codes: np.ndarray, k: int, y: np.ndarray, ridge: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """(T [C, K, M], bias [M]) float64 minimising ||onehot(codes) T + bias - y||^2 + lam ||T||^2.

    The bias is free (the fit is on centred moments), so the fitted output's mean
    equals y's on these rows. lam = ridge * mean(diag) of the centred Gram matrix.
    """
    codes = np.asarray(codes)
    t, bias = _solve_ridge(_ridge_moments(codes, k, np.asarray(y, np.float64)), ridge)
    return t.reshape(codes.shape[1], k, -1), bias


def holdout_split(n: int, holdout: float, groups: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """Boolean mask [n] of the held-out rows: a `holdout` fraction of the groups (rows of one
    calibration input share a group; without groups every row is its own), drawn with the seed.
    At least one group is held out and one kept; all False when there are fewer than 2 groups."""
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    ids = np.arange(n) if groups is None else np.asarray(groups)
    if len(ids) != n:
        raise ValueError(f"{len(ids)} group ids for {n} rows")
    uniq = np.unique(ids)
    if len(uniq) < 2:
        return np.zeros(n, bool)
    count = min(max(1, int(round(holdout * len(uniq)))), len(uniq) - 1)
    held = np.random.default_rng(seed).choice(uniq, size=count, replace=False)
    return np.isin(ids, held)


DEFAULT_RIDGE = 1e-3
# Relative ridges tried when the ridge is chosen on held-out rows.
RIDGE_GRID = (1e-4, 1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


def fit_tables_ridge_holdout(codes: np.ndarray, k: int, y: np.ndarray, grid=RIDGE_GRID, holdout: float = 0.2,
                             groups: np.ndarray | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """Ridge tables with the ridge chosen on held-out rows: fit on the kept rows for every
    ridge of `grid`, take the one with the least squared error on the held-out rows (ties: the
    first), refit on all rows with it. Returns (T [C, K, M], bias [M], info) with info = {"ridge":
    chosen, "holdout_rel_error": {ridge: relative error}}. Fewer than 2 groups: the grid's
    default ridge (1e-3), no selection."""
    codes = np.asarray(codes)
    y = np.asarray(y, np.float64)
    c = codes.shape[1]
    if not grid:
        raise ValueError("the ridge grid is empty")
    held = holdout_split(len(codes), holdout, groups, seed)
    if not held.any():
        t, b = fit_tables_ridge(codes, k, y, DEFAULT_RIDGE)
        return t, b, {"ridge": DEFAULT_RIDGE, "holdout_rel_error": {}}
    train = _ridge_moments(codes[~held], k, y[~held])
    test = _ridge_moments(codes[held], k, y[held])
    g_test = _onehot(codes[held], k)
    y_test = y[held]
    norm = max(float(np.sum((y_test - y_test.mean(axis=0)) ** 2)), 1e-300)
    errors = {}
    for r in grid:
        t, b = _solve_ridge(train, r)
        errors[float(r)] = float(np.sum((np.asarray(g_test @ t) + b - y_test) ** 2)) / norm
    best = min(errors, key=errors.get)
    t, b = _solve_ridge(_add_moments(train, test), best)
    return t.reshape(c, k, -1), b, {"ridge": best, "holdout_rel_error": errors}


def tables_from_prototypes(prototypes: np.ndarray, weight_rows: np.ndarray) -> np.ndarray:
    """T [C, K, M] (float64): T[c, k, o] = <prototype(c, k), W[o, c*S:(c+1)*S]>; weight_rows [M, D]."""
    protos = np.asarray(prototypes, np.float64)
    c, k, s = protos.shape
    w = np.asarray(weight_rows, np.float64)
    w = np.pad(w, ((0, 0), (0, c * s - w.shape[1]))).reshape(-1, c, s)  # [M, C, S]
    return np.einsum("cks,mcs->ckm", protos, w)


def lut_output(codes: np.ndarray, tables: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """y [N, M] (float64) = sum_c tables[c, codes[:, c]] + bias."""
    tables = np.asarray(tables, np.float64)
    c = tables.shape[0]
    y = np.zeros((len(codes), tables.shape[2]))
    for j in range(c):
        y += tables[j, codes[:, j]]
    if bias is not None:
        y += np.asarray(bias, np.float64)
    return y


def bias_correction(codes: np.ndarray, tables: np.ndarray, bias: np.ndarray | None, y: np.ndarray) -> np.ndarray:
    """The bias that makes the mean of lut_output(codes, tables, bias) equal to y's mean."""
    base = np.zeros(tables.shape[2]) if bias is None else np.asarray(bias, np.float64)
    return base + (np.asarray(y, np.float64).mean(axis=0) - lut_output(codes, tables, base).mean(axis=0))


def quantize_tables(tables: np.ndarray, per_channel: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q uint8 [C, K, M], scale float32 [1] (or [M] per channel), offset_sum float64 [M]).

    T[c, k, o] ~ offset[c, o] + scale[o] * q[c, k, o] with offset[c, o] = min_k T;
    offset_sum[o] = sum_c offset[c, o] goes into the bias.
    """
    t = np.asarray(tables, np.float64)
    off = t.min(axis=1)  # [C, M]
    span = t.max(axis=1) - off
    scale = span.max(axis=0) / 255.0 if per_channel else np.array([span.max() / 255.0])
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint((t - off[:, None, :]) / scale.astype(np.float64)), 0, 255).astype(np.uint8)
    return q, scale, off.sum(axis=0)


def dequantize_tables(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """scale * q as float64 [C, K, M] (without the offsets, which live in the bias)."""
    return np.asarray(q, np.float64) * np.asarray(scale, np.float64)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    den = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / den) if den > 0 else float(np.array_equal(a, b))


# ------------------------------------------------------------------ one layer

@dataclass
class LutFit:
    """A fitted layer (one group): what the op needs plus the fit's own measurements."""

    encoder: str                      # "tree" or "exhaustive"
    codebooks: int                    # C actually used
    subspace: int                     # S
    prototypes_k: int                 # K
    split_dims: np.ndarray | None     # [C, 4] int64 (tree)
    thresholds: np.ndarray | None     # [C, 15] float32 (tree)
    prototypes: np.ndarray | None     # [C, K, S] float32 (exhaustive)
    tables: np.ndarray                # [C, K, M] float32, or uint8 with table_bits 8
    scale: np.ndarray | None          # [1] or [M] float32 (8-bit tables)
    bias: np.ndarray                  # [M] float32
    table_fit: str                    # "ridge" or "prototypes"
    stats: dict = field(default_factory=dict)


def fit_lut_layer(x: np.ndarray, y: np.ndarray, weight_rows: np.ndarray | None, bias: np.ndarray | None = None, *,
                  codebooks: int, k: int = 16, encoder: str = "tree", table_bits: int = 8,
                  ridge: float | None = DEFAULT_RIDGE, groups: np.ndarray | None = None, ridge_grid=RIDGE_GRID,
                  holdout: float = 0.2, per_channel_scale: bool = False, seed: int = 0,
                  encoder_rows: int | None = 4096, table_rows: int | None = 65536) -> LutFit:
    """Fits one group of a layer: x [N, D] its im2col rows (as computed by the model
    approximated so far), y [N, M] the target output (the original model's), weight_rows
    [M, D] the exact weights (used for prototype tables when C*K is too large).

    ridge: the tables' relative ridge, or None to choose it from ridge_grid on a held-out
    `holdout` fraction of the rows (fit_tables_ridge_holdout; groups [N]: which calibration
    input each row comes from, so that whole inputs are held out, not neighbouring pixels
    of a kept one). The encoder is fitted on all rows either way.
    """
    if encoder not in ("tree", "exhaustive"):
        raise ValueError(f"encoder must be 'tree' or 'exhaustive', got {encoder!r}")
    if table_bits not in (8, 32):
        raise ValueError(f"table_bits must be 8 or 32, got {table_bits}")
    if encoder == "tree" and k != TREE_K:
        raise ValueError(f"the tree encoder has K = {TREE_K} prototypes, got K = {k}")
    if ridge is not None and ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.float64)
    if groups is not None and len(groups) != len(x):
        raise ValueError(f"{len(groups)} group ids for {len(x)} rows")
    c, s = codebook_layout(x.shape[1], codebooks)
    rng = np.random.default_rng(seed)
    keep = _subsample(len(x), table_rows, rng)
    xt, yt = (x, y) if keep is None else (x[keep], y[keep])
    gt = None if groups is None else (np.asarray(groups) if keep is None else np.asarray(groups)[keep])
    dims = thr = protos = None
    if encoder == "tree":
        dims, thr = fit_tree_encoder(xt, c, seed=seed, max_rows=encoder_rows)
        codes = encode_tree(xt, dims, thr)
    else:
        protos = fit_kmeans_prototypes(xt, c, k, seed=seed, max_rows=encoder_rows)
        codes = encode_exhaustive(xt, protos)
    info: dict = {"ridge": None}
    if c * k <= MAX_RIDGE_UNKNOWNS:
        if ridge is None:
            tables, b, info = fit_tables_ridge_holdout(codes, k, yt, ridge_grid, holdout, gt, seed)
        else:
            tables, b = fit_tables_ridge(codes, k, yt, ridge)
            info = {"ridge": float(ridge)}
        table_fit = "ridge"
    else:
        if weight_rows is None:
            raise ValueError(f"C*K = {c * k} is too large for the ridge table fit; give the weights")
        p = protos if protos is not None else bucket_prototypes(xt, codes, k, c)
        tables = tables_from_prototypes(p, weight_rows)
        b = bias_correction(codes, tables, bias, yt)
        table_fit = "prototypes"
    scale = None
    if table_bits == 8:
        q, scale, off = quantize_tables(tables, per_channel_scale)
        deq = dequantize_tables(q, scale)
        b = bias_correction(codes, deq, b + off, yt)  # re-centre after rounding
        tables, used = q, deq
    else:
        tables = tables.astype(np.float32)
        used = tables
    pred = lut_output(codes, used, b)
    stats = {
        "rows": int(len(xt)),
        "fit_cosine": cosine(pred, yt),
        "fit_rel_error": float(np.linalg.norm(pred - yt) / max(np.linalg.norm(yt), 1e-30)),
        "codes_used": float(np.mean([len(np.unique(codes[:, j])) for j in range(c)])),
        "ridge": info["ridge"],
    }
    if info.get("holdout_rel_error"):
        stats["holdout_rel_error"] = info["holdout_rel_error"][info["ridge"]]
    return LutFit(encoder, c, s, k, dims, thr, protos, tables, scale, b.astype(np.float32), table_fit, stats)


def lut_costs(rows: int, d: int, m: int, c: int, s: int, k: int, encoder: str, group: int = 1) -> dict:
    """Work of one LutConv evaluation (all groups): rows output positions, per group
    D = d columns, M = m outputs, C codebooks of S columns, K prototypes.

    encoder comparisons (tree: 4 per codebook) or multiply-adds (exhaustive:
    S*K per codebook, distances), table lookups (one per codebook and output),
    additions (lookups - 1 per output plus the bias) and the exact layer's MACs.
    """
    enc_cmp = rows * group * c * TREE_DEPTH if encoder == "tree" else 0
    enc_macs = rows * group * c * s * k if encoder == "exhaustive" else 0
    lookups = rows * group * c * m
    return {
        "macs_before": rows * group * d * m,
        "encoder_comparisons": enc_cmp,
        "encoder_macs": enc_macs,
        "lookups": lookups,
        "additions": lookups,  # C-1 adds of looked-up entries + 1 bias add per output
        "dequant_mults": rows * group * m,
    }
