"""Streaming second moments for least-squares refits.

`MomentAccumulator` sums, over batches of rows, H = X^T X, G = X^T Y and the
column sums of X and Y in float64, so a refit needs D*D + D*M numbers however
many calibration rows there are. `RowSampler` bounds the rows taken from each
batch: a batch with more rows than the budget contributes a uniform sample
(without replacement) drawn from a seeded generator, so the same seed and the
same batches give the same moments. `ConvMoments` does both for a Conv layer:
it samples output positions first and unfolds only those (im2col), per group.
`UnfoldedMean` is the first moment alone, exact over every output position: the
mean of a Conv's unfolded input that a bias correction needs.
"""

from __future__ import annotations

import numpy as np

from .im2col import ConvGeometry, column_sums, conv_geometry, im2col, output_rows

__all__ = ["RowSampler", "MomentAccumulator", "ConvMoments", "UnfoldedMean"]

# Rows converted to float64 at a time inside update(): bounds the temporary copy.
CHUNK_ROWS = 8192


class RowSampler:
    """Chooses which rows of each batch to keep: all of them, or `budget` rows at random.

    budget: rows kept per batch at most (None: no limit). seed: the generator's seed;
    the draws depend only on the seed and the sequence of batch sizes. The budget is
    per batch, so with batches of uneven size a row of a small batch weighs more;
    feed batches of equal size when that matters.
    """

    def __init__(self, budget: int | None = None, seed: int = 0):
        if budget is not None and budget < 1:
            raise ValueError(f"row budget must be >= 1, got {budget}")
        self.budget = budget
        self.rng = np.random.default_rng(seed)
        self.rows_seen = 0
        self.rows_used = 0

    def sample(self, n: int) -> np.ndarray | None:
        """Sorted indices of the rows to keep out of `n`, or None for all of them."""
        self.rows_seen += n
        if self.budget is None or n <= self.budget:
            self.rows_used += n
            return None
        self.rows_used += self.budget
        return np.sort(self.rng.choice(n, size=self.budget, replace=False))


class MomentAccumulator:
    """Accumulates H = X^T X [D, D], optionally G = X^T Y [D, M], and the column sums.

    dim: D, the columns of X. out_dim: M, the columns of Y (None: no targets).
    row_budget, seed: see RowSampler (used when update() is given whole batches).
    """

    def __init__(self, dim: int, out_dim: int | None = None, row_budget: int | None = None, seed: int = 0):
        self.dim, self.out_dim = dim, out_dim
        self.sampler = RowSampler(row_budget, seed)
        self.H = np.zeros((dim, dim))
        self.G = np.zeros((dim, out_dim)) if out_dim is not None else None
        self.sum_x = np.zeros(dim)
        self.sum_y = np.zeros(out_dim) if out_dim is not None else None
        self.rows = 0

    @property
    def rows_used(self) -> int:
        return self.rows

    @property
    def rows_seen(self) -> int:
        return max(self.sampler.rows_seen, self.rows)

    def update(self, x: np.ndarray, y: np.ndarray | None = None, *, presampled: bool = False) -> int:
        """Adds the rows of x [n, D] (and y [n, M]); returns the rows used.

        Unless presampled (the caller already chose the rows, e.g. with its own
        RowSampler), a batch over the row budget is subsampled here, the same
        rows of x and y.
        """
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be [rows, {self.dim}], got {list(x.shape)}")
        if (y is None) != (self.out_dim is None):
            raise ValueError("give y exactly when the accumulator was made with out_dim")
        if y is not None:
            y = np.asarray(y)
            if y.shape != (x.shape[0], self.out_dim):
                raise ValueError(f"y must be [{x.shape[0]}, {self.out_dim}], got {list(y.shape)}")
        if not presampled:
            keep = self.sampler.sample(x.shape[0])
            if keep is not None:
                x = x[keep]
                y = y[keep] if y is not None else None
        for start in range(0, x.shape[0], CHUNK_ROWS):
            xc = x[start:start + CHUNK_ROWS].astype(np.float64)
            self.H += xc.T @ xc
            self.sum_x += xc.sum(axis=0)
            if y is not None:
                yc = y[start:start + CHUNK_ROWS].astype(np.float64)
                self.G += xc.T @ yc
                self.sum_y += yc.sum(axis=0)
        self.rows += x.shape[0]
        return x.shape[0]

    @property
    def mean_x(self) -> np.ndarray:
        return self.sum_x / max(self.rows, 1)

    @property
    def mean_y(self) -> np.ndarray | None:
        return None if self.sum_y is None else self.sum_y / max(self.rows, 1)

    def centered(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Per-row covariance-like moments (H/n - mx mx^T, G/n - mx my^T), for fits with a free bias."""
        n = max(self.rows, 1)
        mx = self.mean_x
        hc = self.H / n - np.outer(mx, mx)
        gc = None if self.G is None else self.G / n - np.outer(mx, self.mean_y)
        return hc, gc


class ConvMoments:
    """Per-group moments of a 2-D Conv's unfolded input (and target output).

    weight_shape: [M, Cin/group, kh, kw]; attrs: the Conv's attributes (auto_pad is
    resolved for each batch's input size). One RowSampler picks the output
    positions of each batch; every group uses the same positions.
    """

    def __init__(self, weight_shape, attrs, with_targets: bool = True, row_budget: int | None = None, seed: int = 0):
        self.weight_shape = tuple(int(v) for v in weight_shape)
        self.attrs = dict(attrs)
        self.group = int(self.attrs.get("group", 1))
        m, cin_g, kh, kw = self.weight_shape
        self.sampler = RowSampler(row_budget, seed)
        self.groups = [MomentAccumulator(cin_g * kh * kw, m // self.group if with_targets else None)
                       for _ in range(self.group)]
        self.geometry: ConvGeometry | None = None

    @property
    def rows_used(self) -> int:
        return self.sampler.rows_used

    @property
    def rows_seen(self) -> int:
        return self.sampler.rows_seen

    def update(self, x: np.ndarray, y: np.ndarray | None = None) -> int:
        """Adds one batch: x [N, Cin, H, W] the Conv's input, y [N, M, OH, OW] its target output."""
        geo = conv_geometry(self.attrs, x.shape, self.weight_shape)
        if y is not None and tuple(y.shape) != (x.shape[0], geo.out_channels, *geo.out_hw):
            raise ValueError(f"target shape {list(y.shape)} is not the Conv's output "
                             f"{[x.shape[0], geo.out_channels, *geo.out_hw]}")
        self.geometry = geo
        rows = self.sampler.sample(x.shape[0] * geo.out_hw[0] * geo.out_hw[1])
        cols = im2col(x, geo, rows)
        targets = output_rows(y, geo.group, rows, geo) if y is not None else [None] * geo.group
        for acc, c, t in zip(self.groups, cols, targets):
            acc.update(c, t, presampled=True)
        return cols[0].shape[0]


class UnfoldedMean:
    """The mean of a Conv's unfolded input over every output position of every batch (zero
    padding included), per group: E[x] of the columns of im2col, in W.reshape(M, -1)'s order.

    The batches are summed as they come (one sum per input size), and unfolded once at the end,
    so a batch costs one addition of its input; nothing is sampled.
    weight_shape: [M, Cin/group, kh, kw]; attrs: the Conv's attributes.
    """

    def __init__(self, weight_shape, attrs):
        self.weight_shape = tuple(int(v) for v in weight_shape)
        self.attrs = dict(attrs)
        self._sums: dict[tuple[int, ...], list] = {}  # input [C, H, W] -> [sum over the batch, images]

    def update(self, x: np.ndarray) -> None:
        """Adds one batch x [N, Cin, H, W] of the Conv's input."""
        x = np.asarray(x)
        conv_geometry(self.attrs, x.shape, self.weight_shape)  # the batch must fit the Conv
        entry = self._sums.setdefault(tuple(x.shape[1:]), [np.zeros(x.shape[1:]), 0])
        entry[0] += x.sum(axis=0, dtype=np.float64)
        entry[1] += x.shape[0]

    @property
    def means(self) -> list[np.ndarray]:
        """Per group, the mean of the unfolded input's columns [Cin_g*kh*kw] (float64)."""
        if not self._sums:
            raise ValueError("no batch was added")
        totals, positions = None, 0
        for shape, (summed, images) in self._sums.items():
            geo = conv_geometry(self.attrs, (1, *shape), self.weight_shape)
            sums = column_sums(summed[None], geo)
            totals = sums if totals is None else [t + s for t, s in zip(totals, sums)]
            positions += images * geo.out_hw[0] * geo.out_hw[1]
        return [t / positions for t in totals]
