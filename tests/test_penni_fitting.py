"""PENNI fitting functions (onnxcompress.fitting.penni): SVD basis, channel order,
pruning, masked refit, basis refit, determinism. Plain numpy, no ONNX."""

import numpy as np
import pytest

from onnxcompress.calibration import MomentAccumulator, kernel_basis_matrix
from onnxcompress.fitting import penni


def rng(seed=0):
    return np.random.default_rng(seed)


def test_full_rank_basis_reconstructs_exactly():
    w = rng(1).standard_normal((6, 4, 3, 3))
    fit = penni.kernel_basis(w, bases=9)
    assert fit.bases.shape == (9, 3, 3) and fit.coefs.shape == (6, 4 * 9)
    np.testing.assert_allclose(penni.compose_weight(fit.bases, fit.coefs), w, atol=1e-10)
    flat = fit.bases.reshape(9, 9)
    np.testing.assert_allclose(flat @ flat.T, np.eye(9), atol=1e-10)  # orthonormal
    assert fit.energy == pytest.approx(1.0)


def test_truncation_is_the_best_rank_d_projection_and_energy_rule():
    r = rng(2)
    # kernels that live in a 3-dim subspace plus a little noise
    true_bases = r.standard_normal((3, 9))
    w = (r.standard_normal((8, 5, 3)) @ true_bases).reshape(8, 5, 3, 3) + 1e-3 * r.standard_normal((8, 5, 3, 3))
    fit = penni.kernel_basis(w, bases=3)
    assert fit.energy > 0.9999
    assert penni.kernel_basis(w, energy=0.999).rank == 3
    assert penni.kernel_basis(w, energy=1.0).rank == 9
    s = np.linalg.svd(w.reshape(-1, 9), compute_uv=False)
    assert penni.choose_rank(s, energy=float(np.sum(s[:2] ** 2) / np.sum(s ** 2))) == 2
    err = np.linalg.norm(penni.compose_weight(fit.bases, fit.coefs) - w)
    assert err == pytest.approx(np.sqrt(np.sum(s[3:] ** 2)), rel=1e-8)  # Eckart-Young


def test_signs_fixed_and_deterministic():
    w = rng(3).standard_normal((4, 3, 3, 3))
    a, b = penni.kernel_basis(w, bases=4), penni.kernel_basis(-w, bases=4)
    for k in a.bases.reshape(4, -1):
        assert k[np.argmax(np.abs(k))] > 0
    np.testing.assert_allclose(a.bases, b.bases)          # same basis for W and -W
    np.testing.assert_allclose(a.coefs, -b.coefs)


def test_coefficient_column_order_is_channel_major():
    """Column c*d + b of the coefficients scales basis b at input channel c: the order of
    calibration.kernel_basis_matrix, of the op's intermediate maps and of the portable form."""
    w = rng(4).standard_normal((5, 3, 3, 3))
    fit = penni.kernel_basis(w, bases=4)
    d, cin = 4, 3
    W = fit.coefs @ kernel_basis_matrix(fit.bases.reshape(d, -1), cin).T
    np.testing.assert_allclose(W.reshape(w.shape), penni.compose_weight(fit.bases, fit.coefs))
    o, c, b = 2, 1, 3
    single = np.zeros_like(fit.coefs)
    single[o, c * d + b] = 1.0
    want = np.zeros(w.shape)
    want[o, c] = fit.bases[b]
    np.testing.assert_allclose(penni.compose_weight(fit.bases, single), want)


def test_prune_mask_keeps_exact_fraction_by_saliency():
    sal = rng(5).random((10, 20))
    mask = penni.prune_mask(sal, 0.7)
    assert mask.sum() == 60
    assert sal[mask].min() >= sal[~mask].max()
    assert penni.prune_mask(np.ones((4, 5)), 0.5).sum() == 10  # ties: deterministic count
    with pytest.raises(ValueError):
        penni.prune_mask(sal, 1.0)


def layer_data(seed=6, m=8, cin=6, k=9, rows=3000, group=1):
    """im2col rows X of correlated inputs, a layer W0 with kernels near a low-rank basis, Y = X W0^T + b0."""
    r = rng(seed)
    cg = cin // group
    mix = r.standard_normal((cin * k, cin * k)) * 0.3 + np.eye(cin * k)
    X = r.standard_normal((rows, cin * k)) @ mix + 0.5
    bases = r.standard_normal((4, k))
    w = (r.standard_normal((m, cg, 4)) @ bases + 0.3 * r.standard_normal((m, cg, k))).reshape(m, cg, 3, 3)
    b0 = r.standard_normal(m)
    mg = m // group
    moments, Ys = [], []
    for g in range(group):
        Xg = X[:, g * cg * k:(g + 1) * cg * k]
        Y = Xg @ w[g * mg:(g + 1) * mg].reshape(mg, -1).T + b0[g * mg:(g + 1) * mg]
        acc = MomentAccumulator(cg * k, mg)
        acc.update(Xg, Y)
        moments.append(acc)
        Ys.append(Y)
    return X, w, b0, penni.group_moments(moments)


def output_mse(X, w, b, w0, b0, group=1):
    m = w.shape[0]
    k = int(np.prod(w.shape[1:]))
    mg = m // group
    err = 0.0
    for g in range(group):
        Xg = X[:, g * k:(g + 1) * k]
        sl = slice(g * mg, (g + 1) * mg)
        err += np.sum((Xg @ (w[sl].reshape(mg, -1) - w0[sl].reshape(mg, -1)).T + b[sl] - b0[sl]) ** 2)
    return err / (X.shape[0] * m)


def test_refit_beats_data_free_and_second_order_beats_magnitude():
    X, w0, b0, moms = layer_data()
    free = penni.fit_layer(w0, b0, bases=3, sparsity=0.6)
    refit = penni.fit_layer(w0, b0, bases=3, sparsity=0.6, moments=moms)
    obs = penni.fit_layer(w0, b0, bases=3, sparsity=0.6, moments=moms, criterion="second_order")
    alt = penni.fit_layer(w0, b0, bases=3, sparsity=0.6, moments=moms, criterion="second_order",
                          basis_iterations=2)
    errs = {n: output_mse(X, f.weight().astype(np.float64), f.bias, w0, b0)
            for n, f in [("free", free), ("refit", refit), ("obs", obs), ("alt", alt)]}
    print("\n[penni fitting] output MSE", {k: round(v, 4) for k, v in errs.items()})
    assert errs["refit"] < 0.9 * errs["free"]
    assert errs["obs"] <= errs["refit"] * 1.0001
    assert errs["alt"] <= errs["obs"] * 1.0001
    for f in (free, refit, obs, alt):
        assert f.sparsity == pytest.approx(0.6, abs=0.01)
        assert f.coefs.dtype == np.float32 and f.bases.dtype == np.float32
    # the reported relative error is the measured one
    y2 = np.mean((X @ w0.reshape(8, -1).T + b0) ** 2)
    assert obs.stats["rel_error"] == pytest.approx(errs["obs"] / y2, rel=1e-3)
    assert 0.9 < obs.stats["output_cosine"] <= 1.0 + 1e-9


def test_refit_matches_output_mean():
    X, w0, b0, moms = layer_data(seed=7)
    fit = penni.fit_layer(w0, b0, bases=2, sparsity=0.8, moments=moms)
    y0 = X @ w0.reshape(8, -1).T + b0
    y = X @ fit.weight().astype(np.float64).reshape(8, -1).T + fit.bias
    np.testing.assert_allclose(y.mean(0), y0.mean(0), atol=1e-4 * np.abs(y0).max())


def test_grouped_layer_and_determinism():
    X, w0, b0, moms = layer_data(seed=8, m=8, cin=6, group=2)
    a = penni.fit_layer(w0, b0, group=2, bases=3, sparsity=0.5, moments=moms, criterion="second_order",
                        basis_iterations=1)
    b = penni.fit_layer(w0, b0, group=2, bases=3, sparsity=0.5, moments=moms, criterion="second_order",
                        basis_iterations=1)
    assert a.coefs.shape == (8, 3 * 3)
    np.testing.assert_array_equal(a.coefs, b.coefs)
    np.testing.assert_array_equal(a.bases, b.bases)
    free = penni.fit_layer(w0, b0, group=2, bases=3, sparsity=0.5)
    assert output_mse(X, a.weight().astype(np.float64), a.bias, w0, b0, 2) < \
        output_mse(X, free.weight().astype(np.float64), free.bias, w0, b0, 2)


def test_dead_channels_are_counted():
    w = rng(9).standard_normal((4, 3, 3, 3))
    w[:, 1] = 0   # input channel 1 unused
    w[2] = 0      # output channel 2 empty
    fit = penni.fit_layer(w, None, bases=3)
    assert fit.stats["dead_input_channels"] == 1 and fit.stats["dead_output_channels"] == 1
    assert fit.stats["active_basis_maps"] == 2 * 3
    costs = penni.layer_costs(3, 4, 1, (3, 3), 10, fit.stats["active_basis_maps"], fit.stats["nnz"], 3)
    assert costs["macs_basis_stage"] == 6 * 9 * 10 and costs["macs_original"] == 4 * 3 * 9 * 10


def test_bad_arguments():
    w = np.ones((2, 2, 3, 3))
    with pytest.raises(ValueError):
        penni.fit_layer(w, None, bases=2, criterion="second_order")
    with pytest.raises(ValueError):
        penni.kernel_basis(w)
    with pytest.raises(ValueError):
        penni.kernel_basis(w, energy=1.5)


def test_option_errors_match_the_fit_at_anchors_and_costs_count_every_map():
    """The calibrated estimate is the error fit_layer reaches (all rows sampled, an anchor
    sparsity); the data-free one is the weight-space error; both grow with sparsity."""
    X, w0, b0, moms = layer_data()
    grid = (0.0, 0.7, 0.8, 0.9)
    est = penni.option_errors(w0, b0, moms, [2, 3], grid, max_rows=8)
    assert est.shape == (2, 4) and np.all(np.diff(est, axis=1) >= -1e-12)
    for i, d in enumerate([2, 3]):
        for j, s in enumerate(grid):
            f = penni.fit_layer(w0, b0, bases=d, sparsity=s, moments=moms, criterion="second_order")
            assert est[i, j] == pytest.approx(f.stats["rel_error"], rel=2e-3, abs=1e-9)
    assert np.all(est[1] <= est[0] + 1e-12)   # more bases, less error
    free = penni.option_errors(w0, b0, None, [9], (0.0,))
    assert free[0, 0] == pytest.approx(0.0, abs=1e-12)   # full rank, unpruned: exact
    cost = penni.option_costs(6, 8, 1, (3, 3), 10, [2], (0.0, 0.5))
    np.testing.assert_allclose(cost[0], [10 * (6 * 2 * 9 + 8 * 6 * 2), 10 * (6 * 2 * 9 + 4 * 6 * 2)])
