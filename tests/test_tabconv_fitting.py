"""TabConv fitting functions (onnxcompress.fitting.tabconv): layouts, encoders, tables."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcompress.fitting import tabconv as tc


def test_codebook_layout_covers_columns():
    for d in range(1, 80):
        for want in (1, 2, 3, 7, 8, 16, 64, 200):
            c, s = tc.codebook_layout(d, want)
            assert c <= want and c * s >= d and (c - 1) * s < d
    assert tc.codebook_layout(576, 64) == (64, 9)
    assert tc.codebook_layout(27, 8) == (7, 4)
    with pytest.raises(ValueError):
        tc.codebook_layout(0, 4)


def test_exhaustive_exact_on_few_distinct_subvectors():
    # Each codebook's sub-vector takes at most 8 distinct values: K=8 prototypes
    # find them all, so prototype tables reproduce x W exactly.
    rng = np.random.default_rng(0)
    c, s = 4, 3
    vocab = rng.standard_normal((c, 8, s)).astype(np.float32)
    picks = rng.integers(0, 8, size=(500, c))
    x = np.concatenate([vocab[j, picks[:, j]] for j in range(c)], axis=1)
    w = rng.standard_normal((5, c * s))
    protos = tc.fit_kmeans_prototypes(x, c, 8, seed=1)
    codes = tc.encode_exhaustive(x, protos)
    y = tc.lut_output(codes, tc.tables_from_prototypes(protos, w))
    np.testing.assert_allclose(y, x.astype(np.float64) @ w.T, rtol=1e-5, atol=1e-5)


def test_tree_encoder_separates_sixteen_levels():
    # One column per codebook with 16 equally spaced, equally frequent values:
    # the best split is always at the median, so the depth-4 tree gives each
    # value its own leaf, and ridge tables then reproduce x W.
    rng = np.random.default_rng(1)
    levels = (np.arange(16) * 0.25 - 1.0).astype(np.float32)
    x = np.stack([rng.permutation(np.repeat(levels, 250)) for _ in range(6)], 1)
    dims, thr = tc.fit_tree_encoder(x, 6, seed=0)
    assert dims.shape == (6, 4) and thr.shape == (6, 15) and thr.dtype == np.float32
    assert np.all(dims == np.arange(6)[:, None])
    codes = tc.encode_tree(x, dims, thr)
    for j in range(6):
        # one code per value, monotone in the value
        pairs = np.unique(np.stack([x[:, j], codes[:, j]], 1), axis=0)
        assert len(pairs) == 16 and np.all(np.diff(pairs[:, 1]) > 0)
    w = rng.standard_normal((3, 6))
    y = x.astype(np.float64) @ w.T
    t, b = tc.fit_tables_ridge(codes, 16, y, ridge=1e-9)
    np.testing.assert_allclose(tc.lut_output(codes, t, b), y, rtol=1e-5, atol=1e-5)


def test_encode_tree_follows_the_definition():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 10)).astype(np.float32)
    dims = rng.integers(0, 10, size=(3, 4))
    thr = rng.standard_normal((3, 15)).astype(np.float32)
    codes = tc.encode_tree(x, dims, thr)
    for r in range(0, 300, 7):
        for c in range(3):
            node = 0
            for level in range(4):
                node = 2 * node + int(x[r, dims[c, level]] > thr[c, (1 << level) - 1 + node])
            assert codes[r, c] == node


def test_ridge_tables_correct_the_mean_and_beat_prototypes():
    rng = np.random.default_rng(3)
    x = np.maximum(rng.standard_normal((6000, 18)), 0).astype(np.float32)
    x[:, 9:] += 0.5 * x[:, :9]  # correlated columns, like real activations
    w = rng.standard_normal((8, 18))
    y = x.astype(np.float64) @ w.T + 0.3
    dims, thr = tc.fit_tree_encoder(x, 2)
    codes = tc.encode_tree(x, dims, thr)
    t, b = tc.fit_tables_ridge(codes, 16, y)
    pred = tc.lut_output(codes, t, b)
    np.testing.assert_allclose(pred.mean(0), y.mean(0), atol=1e-8)
    plain = tc.lut_output(codes, tc.tables_from_prototypes(tc.bucket_prototypes(x, codes, 16, 2), w), 0.3)
    assert np.sum((pred - y) ** 2) < np.sum((plain - y) ** 2)


def test_quantize_tables_round_trip():
    rng = np.random.default_rng(4)
    t = rng.standard_normal((5, 16, 7)) * np.array([1, 2, 3, 4, 5, 6, 7])
    for per_channel in (False, True):
        q, scale, off = tc.quantize_tables(t, per_channel)
        assert q.dtype == np.uint8 and scale.shape == ((7,) if per_channel else (1,))
        codes = rng.integers(0, 16, size=(50, 5)).astype(np.uint8)
        exact = tc.lut_output(codes, t)
        approx = tc.lut_output(codes, tc.dequantize_tables(q, scale), off)
        # each of the 5 entries is off by at most half a step
        assert np.all(np.abs(approx - exact) <= 5 * 0.5 * scale.max() + 1e-9)


@pytest.mark.parametrize("encoder,k", [("tree", 16), ("exhaustive", 16), ("exhaustive", 5)])
@pytest.mark.parametrize("bits", [32, 8])
def test_fit_lut_layer_deterministic_and_useful(encoder, k, bits):
    rng = np.random.default_rng(5)
    base = np.maximum(rng.standard_normal((3000, 4)), 0)
    x = (base @ rng.standard_normal((4, 27)) + 0.05 * rng.standard_normal((3000, 27))).astype(np.float32)
    w = rng.standard_normal((6, 27))
    y = x.astype(np.float64) @ w.T
    a = tc.fit_lut_layer(x, y, w, codebooks=3, k=k, encoder=encoder, table_bits=bits, seed=7)
    b = tc.fit_lut_layer(x, y, w, codebooks=3, k=k, encoder=encoder, table_bits=bits, seed=7)
    assert np.array_equal(a.tables, b.tables) and np.array_equal(a.bias, b.bias)
    assert a.tables.dtype == (np.uint8 if bits == 8 else np.float32)
    assert a.tables.shape == (3, k, 6)
    assert a.stats["fit_cosine"] > 0.9


def test_fit_lut_layer_rejects_bad_settings():
    x = np.zeros((100, 9), np.float32)
    y = np.zeros((100, 2))
    with pytest.raises(ValueError):
        tc.fit_lut_layer(x, y, None, codebooks=3, k=8, encoder="tree")
    with pytest.raises(ValueError):
        tc.fit_lut_layer(x, y, None, codebooks=3, encoder="nearest")
    with pytest.raises(ValueError):
        tc.fit_lut_layer(x, y, None, codebooks=3, table_bits=4)


def test_lut_costs_counts():
    cost = tc.lut_costs(rows=100, d=576, m=64, c=64, s=9, k=16, encoder="tree")
    assert cost["macs_before"] == 100 * 576 * 64
    assert cost["encoder_comparisons"] == 100 * 64 * 4 and cost["encoder_macs"] == 0
    assert cost["lookups"] == 100 * 64 * 64
    ex = tc.lut_costs(rows=100, d=576, m=64, c=64, s=9, k=16, encoder="exhaustive")
    assert ex["encoder_macs"] == 100 * 64 * 9 * 16


def _overfitting_case(seed=11):
    # 400 rows from 40 inputs (groups) for 16 codebooks * 16 entries * 8 outputs of noisy
    # targets: the small fixed ridge fits the noise.
    rng = np.random.default_rng(seed)
    d, m = 64, 8
    mix = rng.standard_normal((8, d))
    w = rng.standard_normal((m, d)) / 8

    def data(n):
        x = (np.maximum(rng.standard_normal((n, 8)), 0) @ mix + 0.3 * rng.standard_normal((n, d))).astype(np.float32)
        return x, x.astype(np.float64) @ w.T + 0.5 * rng.standard_normal((n, m))

    x, y = data(400)
    x_new, y_new = data(5000)
    return x, y, np.repeat(np.arange(40), 10), w, x_new, y_new


def test_holdout_ridge_beats_the_small_fixed_ridge_on_new_rows():
    x, y, groups, w, x_new, y_new = _overfitting_case()
    errors = {}
    for ridge in (1e-3, None):
        f = tc.fit_lut_layer(x, y, w, codebooks=16, table_bits=32, ridge=ridge, groups=groups, seed=3)
        pred = tc.lut_output(tc.encode_tree(x_new, f.split_dims, f.thresholds), f.tables, f.bias)
        errors[ridge] = np.sum((pred - y_new) ** 2) / np.sum((y_new - y_new.mean(0)) ** 2)
        if ridge is None:
            assert f.stats["ridge"] in tc.RIDGE_GRID and f.stats["ridge"] > 1e-3 and "holdout_rel_error" in f.stats
    # measured: 0.43 with ridge 1e-3, 0.25 with the held-out choice (0.3)
    assert errors[None] <= errors[1e-3]
    assert errors[None] < 0.8 * errors[1e-3]


def test_holdout_ridge_deterministic_and_refits_on_all_rows():
    x, y, groups, w, _, _ = _overfitting_case(seed=12)
    dims, thr = tc.fit_tree_encoder(x, 16, seed=0)
    codes = tc.encode_tree(x, dims, thr)
    t1, b1, info1 = tc.fit_tables_ridge_holdout(codes, 16, y, groups=groups, seed=5)
    t2, b2, info2 = tc.fit_tables_ridge_holdout(codes, 16, y, groups=groups, seed=5)
    assert np.array_equal(t1, t2) and np.array_equal(b1, b2) and info1 == info2
    assert set(info1["holdout_rel_error"]) == set(tc.RIDGE_GRID)
    assert info1["holdout_rel_error"][info1["ridge"]] == min(info1["holdout_rel_error"].values())
    # the final tables are the fixed-ridge fit on all rows with the chosen ridge
    t3, b3 = tc.fit_tables_ridge(codes, 16, y, info1["ridge"])
    np.testing.assert_allclose(t1, t3, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(b1, b3, rtol=1e-9, atol=1e-9)


def test_holdout_split_holds_out_whole_groups():
    groups = np.repeat(np.arange(10), 7)
    held = tc.holdout_split(len(groups), 0.2, groups, seed=1)
    assert held.sum() == 2 * 7
    for g in range(10):
        assert len(set(held[groups == g])) == 1  # a group is either all held out or all kept
    assert np.array_equal(held, tc.holdout_split(len(groups), 0.2, groups, seed=1))
    assert not tc.holdout_split(5, 0.2, np.zeros(5), seed=1).any()  # one group: nothing to hold out
    with pytest.raises(ValueError):
        tc.holdout_split(5, 1.5)
    with pytest.raises(ValueError):
        tc.fit_lut_layer(np.zeros((10, 4), np.float32), np.zeros((10, 2)), None, codebooks=2, groups=np.zeros(3))
