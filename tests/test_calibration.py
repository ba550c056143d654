"""Calibration engine: capture (against ONNX Runtime's own intermediate outputs),
im2col (against ONNX Runtime's Conv), streaming moments, masked ridge solves
(against numpy.linalg.lstsq) and the per-layer refit."""

import resource
import tracemalloc

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import modelgen
import onnxcompress
from onnxcompress.calibration import (
    ConvMoments, LayerCapture, MomentAccumulator, bias_for_means, conv2d_im2col, conv_geometry, conv_io_batches,
    conv_names, corrected_bias, im2col, kernel_basis_matrix, kernel_basis_moments, basis_moments, output_rows,
    refit_conv_layer, ridge_lambda, solve_masked, solve_masked_basis,
)
from onnxcompress.calibration.moments import UnfoldedMean
from onnxcompress.calibration import solve as solve_module
from onnxcompress.errors import OnnxCompressError
from onnxcompress.model_io import prepare_for_runtime
from onnxcompress.passes import PassManager, canonicalize


def plain_session(model):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def ort_intermediates(model, names, feed, ours=False):
    """ONNX Runtime's own values of named tensors: the full model with them added as outputs."""
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    existing = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in existing)
    prepare_for_runtime(probe)
    sess = onnxcompress.InferenceSession(probe, threads=1) if ours else plain_session(probe)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))


def rng(seed=0):
    return np.random.default_rng(seed)


@pytest.fixture(scope="module")
def canonical():
    model, _ = PassManager(canonicalize()).run(modelgen.small_resnet())
    return model


@pytest.fixture(scope="module")
def feeds():
    r = rng(5)
    return [{"input": r.standard_normal((n, 3, 16, 16)).astype(np.float32)} for n in (2, 3, 1)]


# ---------------------------------------------------------------- solve

def lstsq_masked(X, Y, mask):
    W = np.zeros((Y.shape[1], X.shape[1]))
    for o in range(Y.shape[1]):
        k = np.flatnonzero(mask[o])
        if len(k):
            W[o, k] = np.linalg.lstsq(X[:, k], Y[:, o], rcond=None)[0]
    return W


def test_solve_unmasked_matches_lstsq():
    r = rng(1)
    X, Y = r.standard_normal((300, 20)), r.standard_normal((300, 6))
    W = solve_masked(X.T @ X, X.T @ Y, ridge=0)
    np.testing.assert_allclose(W, np.linalg.lstsq(X, Y, rcond=None)[0].T, rtol=1e-8, atol=1e-10)
    W_tiny = solve_masked(X.T @ X, X.T @ Y, np.ones((6, 20), bool), ridge=1e-12)
    np.testing.assert_allclose(W_tiny, W, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("chunk_bytes", [None, 200])
def test_solve_masked_matches_lstsq(monkeypatch, chunk_bytes):
    if chunk_bytes:  # forces one pattern per batched solve
        monkeypatch.setattr(solve_module, "MAX_BATCH_BYTES", chunk_bytes)
    r = rng(2)
    X, Y = r.standard_normal((400, 24)), r.standard_normal((400, 10))
    mask = r.random((10, 24)) < 0.4
    mask[3] = mask[7] = mask[1]            # shared pattern: one solve, several right-hand sides
    mask[5] = False                        # nothing kept: zero row
    mask[8] = True                         # all kept
    W = solve_masked(X.T @ X, X.T @ Y, mask, ridge=0)
    np.testing.assert_allclose(W, lstsq_masked(X, Y, mask), rtol=1e-8, atol=1e-10)
    assert np.all(W[~mask] == 0)


def test_ridge_is_relative_to_mean_diagonal():
    r = rng(3)
    X, Y = r.standard_normal((50, 8)) * 7, r.standard_normal((50, 3))
    H, G = X.T @ X, X.T @ Y
    lam = ridge_lambda(H, 1e-2)
    assert lam == pytest.approx(1e-2 * np.mean(np.diag(H)))
    np.testing.assert_allclose(solve_masked(H, G, ridge=1e-2), np.linalg.solve(H + lam * np.eye(8), G).T)
    # a dead input column (all zeros) stays solvable with the default ridge
    X[:, 2] = 0
    W = solve_masked(X.T @ X, X.T @ Y)
    assert np.all(np.isfinite(W)) and np.allclose(W[:, 2], 0)


def test_basis_solve_matches_lstsq_on_design_matrix():
    r = rng(4)
    cin, k, rank, m = 3, 9, 4, 5
    X, Y = r.standard_normal((500, cin * k)), r.standard_normal((500, m))
    kernels = r.standard_normal((rank, k))
    B = kernel_basis_matrix(kernels, cin)                       # [27, 12]
    assert B.shape == (cin * k, cin * rank)
    H, G = X.T @ X, X.T @ Y
    for got, want in zip(kernel_basis_moments(H, G, kernels, cin), basis_moments(H, G, B)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-8)
    mask = r.random((m, cin * rank)) < 0.5
    C = solve_masked_basis(H, G, B, mask, ridge=0)
    np.testing.assert_allclose(C, lstsq_masked(X @ B, Y, mask), rtol=1e-7, atol=1e-9)
    # the weights W = C B^T: coefficient c*r+j scales kernel j at input channel c
    W = C @ B.T
    np.testing.assert_allclose(W.reshape(m, cin, k), np.einsum("mcj,jk->mck", C.reshape(m, cin, rank), kernels))


def test_bias_correction_matches_means():
    r = rng(6)
    X = r.standard_normal((1000, 12)) + r.standard_normal(12)   # non-zero input means
    W0, b0 = r.standard_normal((4, 12)), r.standard_normal(4)
    Y = X @ W0.T + b0
    Wp = np.where(np.abs(W0) > 0.8, W0, 0)                      # pruned: output mean drifts
    b = bias_for_means(Wp, X.mean(0), Y.mean(0))
    np.testing.assert_allclose((X @ Wp.T + b).mean(0), Y.mean(0), atol=1e-10)
    b2 = corrected_bias(b0, (X @ Wp.T + b0).mean(0), Y.mean(0))
    np.testing.assert_allclose(b2, b, atol=1e-10)


# ---------------------------------------------------------------- im2col

def single_conv(x_shape, w, b, **attrs):
    inits = [numpy_helper.from_array(w, "w")] + ([numpy_helper.from_array(b, "b")] if b is not None else [])
    node = helper.make_node("Conv", ["x", "w"] + (["b"] if b is not None else []), ["y"], name="conv", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


CONV_CASES = [
    dict(),
    dict(strides=[2, 2]),
    dict(strides=[2, 3], pads=[1, 0, 2, 1]),
    dict(pads=[0, 2, 1, 0], dilations=[2, 1]),
    dict(strides=[3, 2], dilations=[2, 3], pads=[2, 1, 0, 3]),
    dict(group=2, pads=[1, 1, 1, 1]),
    dict(group=4, strides=[2, 2], pads=[1, 2, 0, 1]),      # depthwise-like (4 channels in 4 groups)
    dict(auto_pad="SAME_UPPER", strides=[2, 2]),
    dict(auto_pad="SAME_LOWER", strides=[2, 3]),
    dict(auto_pad="SAME_UPPER", group=2),
    dict(auto_pad="VALID", strides=[2, 1]),
]


@pytest.mark.parametrize("kernel", [(3, 3), (1, 1), (2, 3)])
@pytest.mark.parametrize("attrs", CONV_CASES, ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()) or "plain")
def test_im2col_matches_ort_conv(attrs, kernel):
    r = rng(7)
    cin, m, group = 4, 6 if attrs.get("group", 1) != 4 else 8, attrs.get("group", 1)
    x = r.standard_normal((2, cin, 11, 10)).astype(np.float32)
    w = r.standard_normal((m, cin // group, *kernel)).astype(np.float32)
    b = r.standard_normal(m).astype(np.float32)
    want = plain_session(single_conv(x.shape, w, b, **attrs)).run(None, {"x": x})[0]
    geo = conv_geometry(attrs, x.shape, w.shape)
    cols = im2col(x, geo)
    assert len(cols) == group and cols[0].shape == (2 * geo.out_hw[0] * geo.out_hw[1], geo.cols)
    got = conv2d_im2col(x, w, b, attrs)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # the per-group product and the output rows line up
    mg = m // group
    ys = output_rows(want - b[None, :, None, None], group)
    for g in range(group):
        np.testing.assert_allclose(cols[g] @ w[g * mg:(g + 1) * mg].reshape(mg, -1).T, ys[g], rtol=1e-4, atol=1e-4)
    # gathering a subset of rows equals taking those rows of the full matrix
    rows = np.sort(r.choice(cols[0].shape[0], size=7, replace=False))
    for full, part in zip(cols, im2col(x, geo, rows)):
        np.testing.assert_array_equal(part, full[rows])
    for full, part in zip(ys, output_rows(want - b[None, :, None, None], group, rows, geo)):
        np.testing.assert_array_equal(part, full[rows])


def test_same_padding_with_dilation():
    """ONNX Runtime refuses auto_pad SAME with dilations; the ONNX rule counts the dilated extent,
    so the resolved pads must give the same output as ORT's Conv with those pads written out."""
    r = rng(8)
    x = r.standard_normal((1, 2, 9, 10)).astype(np.float32)
    w = r.standard_normal((3, 2, 3, 2)).astype(np.float32)
    for auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        attrs = dict(auto_pad=auto_pad, strides=[2, 1], dilations=[2, 3])
        geo = conv_geometry(attrs, x.shape, w.shape)
        assert geo.out_hw == (5, 10)                       # ceil(in / stride)
        # extent 5 and 4: total pads 4 and 3, the odd one at the end (UPPER) or beginning (LOWER)
        assert geo.pads == ((2, 1, 2, 2) if auto_pad == "SAME_UPPER" else (2, 2, 2, 1))
        explicit = dict(strides=[2, 1], dilations=[2, 3], pads=list(geo.pads))
        want = plain_session(single_conv(x.shape, w, None, **explicit)).run(None, {"x": x})[0]
        np.testing.assert_allclose(conv2d_im2col(x, w, None, attrs), want, rtol=1e-4, atol=1e-4)


def test_geometry_rejects_bad_attributes():
    with pytest.raises(ValueError):
        conv_geometry({"group": 3}, (1, 4, 8, 8), (6, 1, 3, 3))
    with pytest.raises(ValueError):
        conv_geometry({"pads": [1, 1]}, (1, 4, 8, 8), (6, 4, 3, 3))
    with pytest.raises(ValueError):
        conv_geometry({}, (1, 4, 2, 2), (6, 4, 3, 3))


# ---------------------------------------------------------------- capture

def test_capture_matches_ort_intermediate_outputs(canonical, feeds):
    cap = LayerCapture(canonical)
    convs = conv_names(canonical)
    assert len(convs) == 6
    io = {c: cap.node_io(c) for c in convs}
    names = sorted({t for pair in io.values() for t in pair})
    assert "input" in names                                # a graph input is taken from the feed
    batches = list(cap.stream(feeds, names))
    assert len(batches) == len(feeds)
    for feed, got in zip(feeds, batches):
        want = ort_intermediates(canonical, [n for n in names if n != "input"], feed)
        for n in names:
            expected = feed[n] if n == "input" else want[n]
            np.testing.assert_allclose(got[n], expected, rtol=1e-5, atol=1e-5)
    # one layer at a time: the probe stops at the requested tensor
    first = convs[1]
    probe = cap.probe([io[first][1]])
    assert len(probe.graph.node) < len(canonical.graph.node)
    for (x, y), feed in zip(cap.conv_batches(first, feeds), feeds):
        want = ort_intermediates(canonical, list(io[first]), feed)
        np.testing.assert_allclose(x, want[io[first][0]], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(y, want[io[first][1]], rtol=1e-5, atol=1e-5)
    with pytest.raises(OnnxCompressError):
        cap.node_io("no-such-node")


def perturbed(model, conv, scale=0.3, seed=9):
    """A copy whose node `conv` uses a perturbed copy of its weight."""
    out = onnx.ModelProto.FromString(model.SerializeToString())
    node = next(n for n in out.graph.node if n.name == conv)
    init = next(t for t in out.graph.initializer if t.name == node.input[1])
    w = numpy_helper.to_array(init)
    w = w + scale * rng(seed).standard_normal(w.shape).astype(np.float32) * np.abs(w).mean()
    init.CopyFrom(numpy_helper.from_array(w.astype(np.float32), init.name))
    return out


def test_sequential_capture_takes_input_from_rewritten_model(canonical, feeds):
    convs = conv_names(canonical)
    current = perturbed(canonical, convs[1])
    layer = convs[3]                                       # downstream of the perturbed layer
    x_in, y_out = LayerCapture(canonical).node_io(layer)
    pairs = list(conv_io_batches(canonical, layer, feeds, current=current))
    assert len(pairs) == len(feeds)
    for (x, y), feed in zip(pairs, feeds):
        want_cur = ort_intermediates(current, [x_in], feed)
        want_orig = ort_intermediates(canonical, [x_in, y_out], feed)
        np.testing.assert_allclose(x, want_cur[x_in], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(y, want_orig[y_out], rtol=1e-5, atol=1e-5)
        assert not np.allclose(x, want_orig[x_in], atol=1e-3)   # the perturbation did reach it


def test_sequential_capture_runs_our_ops(canonical, feeds):
    rewritten, _ = onnxcompress.optimize(canonical, "falcon")
    assert any(n.domain == onnxcompress.DOMAIN for n in rewritten.graph.node)
    layer = conv_names(canonical)[-1]
    x_name = LayerCapture(rewritten).node_io(layer)[0]
    for (x, y), feed in zip(conv_io_batches(canonical, layer, feeds, current=rewritten), feeds):
        want = ort_intermediates(rewritten, [x_name], feed, ours=True)
        np.testing.assert_allclose(x, want[x_name], rtol=1e-5, atol=1e-5)
        assert y.shape[0] == feed["input"].shape[0]


# ---------------------------------------------------------------- moments

def test_moments_accumulate_like_one_shot():
    r = rng(10)
    batches = [(r.standard_normal((n, 9)).astype(np.float32), r.standard_normal((n, 3)).astype(np.float32))
               for n in (5, 40, 17)]
    acc = MomentAccumulator(9, 3)
    for x, y in batches:
        acc.update(x, y)
    X = np.concatenate([b[0] for b in batches]).astype(np.float64)
    Y = np.concatenate([b[1] for b in batches]).astype(np.float64)
    np.testing.assert_allclose(acc.H, X.T @ X, rtol=1e-12)
    np.testing.assert_allclose(acc.G, X.T @ Y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(acc.mean_x, X.mean(0))
    np.testing.assert_allclose(acc.mean_y, Y.mean(0))
    assert acc.rows_used == acc.rows_seen == 62
    hc, gc = acc.centered()
    np.testing.assert_allclose(hc, np.cov(X.T, bias=True), atol=1e-12)


def test_conv_moments_per_group_like_one_shot():
    r = rng(11)
    attrs = dict(group=2, strides=[2, 1], pads=[1, 0, 0, 1])
    w_shape = (6, 2, 3, 3)
    xs = [r.standard_normal((n, 4, 9, 8)).astype(np.float32) for n in (1, 3)]
    ys = [conv2d_im2col(x, np.ones(w_shape, np.float32), None, attrs) for x in xs]
    mom = ConvMoments(w_shape, attrs)
    for x, y in zip(xs, ys):
        mom.update(x, y)
    geo = conv_geometry(attrs, (4, 4, 9, 8), w_shape)
    X = im2col(np.concatenate(xs), geo)
    Y = output_rows(np.concatenate(ys), 2)
    for g in range(2):
        np.testing.assert_allclose(mom.groups[g].H, X[g].astype(np.float64).T @ X[g], rtol=1e-10)
        np.testing.assert_allclose(mom.groups[g].G, X[g].astype(np.float64).T @ Y[g], rtol=1e-9, atol=1e-9)
    assert mom.rows_used == X[0].shape[0]


@pytest.mark.parametrize("attrs", CONV_CASES, ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()) or "plain")
def test_unfolded_mean_is_the_mean_of_every_im2col_row(attrs):
    """Batches of two input sizes; the mean of all their im2col rows, zero padding included."""
    r = rng(13)
    group = attrs.get("group", 1)
    w_shape = (8, 4 // group, 3, 2)
    mean = UnfoldedMean(w_shape, attrs)
    rows = [[] for _ in range(group)]
    for shape in ((3, 4, 11, 10), (1, 4, 8, 9), (2, 4, 11, 10)):
        x = (r.standard_normal(shape) + 0.7).astype(np.float32)
        mean.update(x)
        for g, cols in enumerate(im2col(x, conv_geometry(attrs, x.shape, w_shape))):
            rows[g].append(cols.astype(np.float64))
    assert len(mean.means) == group
    for g in range(group):
        np.testing.assert_allclose(mean.means[g], np.concatenate(rows[g]).mean(0), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError):
        mean.update(np.zeros((1, 3, 11, 10), np.float32))  # not the Conv's channels
    with pytest.raises(ValueError, match="no batch"):
        _ = UnfoldedMean(w_shape, attrs).means


def test_subsampling_is_deterministic_for_a_seed():
    r = rng(12)
    xs = [r.standard_normal((n, 3, 10, 10)).astype(np.float32) for n in (2, 2, 1)]
    w_shape = (4, 3, 3, 3)

    def run(seed, budget=30):
        mom = ConvMoments(w_shape, {"pads": [1, 1, 1, 1]}, with_targets=False, row_budget=budget, seed=seed)
        for x in xs:
            mom.update(x)
        return mom

    a, b, c = run(0), run(0), run(1)
    np.testing.assert_array_equal(a.groups[0].H, b.groups[0].H)
    assert not np.array_equal(a.groups[0].H, c.groups[0].H)
    assert a.rows_used == 90 and a.rows_seen == 500
    assert run(0, budget=1000).rows_used == 500            # under the budget: every row
    # the plain accumulator samples rows of x and y together
    acc = MomentAccumulator(2, 1, row_budget=3, seed=4)
    x = np.arange(20.0).reshape(10, 2)
    acc.update(x, x[:, :1] * 2)
    assert acc.rows_used == 3 and acc.rows_seen == 10
    np.testing.assert_allclose(acc.G[:, 0], 2 * acc.H[:, 0])    # y = 2 * x[:, 0] on the same rows


# ---------------------------------------------------------------- refit

def test_refit_recovers_layer_and_beats_pruning():
    r = rng(13)
    attrs = dict(strides=[2, 2], pads=[1, 0, 1, 2], group=2)
    w = r.standard_normal((8, 3, 3, 3)).astype(np.float32)
    b = r.standard_normal(8).astype(np.float32)
    xs = [np.maximum(r.standard_normal((n, 6, 12, 12)), 0).astype(np.float32) + 0.2 for n in (3, 2)]
    ys = [conv2d_im2col(x, w, b, attrs) for x in xs]
    w2, b2 = refit_conv_layer(w * 0, None, attrs, zip(xs, ys), ridge=1e-10)
    np.testing.assert_allclose(w2, w, atol=1e-3)
    np.testing.assert_allclose(b2, b, atol=1e-3)

    mask = np.abs(w) > np.quantile(np.abs(w), 0.6)
    pruned = conv2d_im2col(xs[0], w * mask, b, attrs)
    w3, b3 = refit_conv_layer(w, b, attrs, zip(xs, ys), mask)
    assert np.all(w3[~mask] == 0)
    refit = conv2d_im2col(xs[0], w3, b3, attrs)
    err = lambda y: float(np.mean((y - ys[0]) ** 2))   # noqa: E731
    assert err(refit) < 0.7 * err(pruned)
    np.testing.assert_allclose(np.concatenate([conv2d_im2col(x, w3, b3, attrs) for x in xs]).mean((0, 2, 3)),
                               np.concatenate(ys).mean((0, 2, 3)), atol=1e-4)   # output means match
    w4, b4 = refit_conv_layer(w, b, attrs, zip(xs, ys), mask, fit_bias=False)
    np.testing.assert_array_equal(b4, b)
    assert err(conv2d_im2col(xs[0], w4, b4, attrs)) < err(pruned)


def test_refit_on_captured_layer(canonical, feeds):
    """The sequential step end to end: capture, refit a pruned layer, and the layer's error drops."""
    layer = conv_names(canonical)[2]
    node = next(n for n in canonical.graph.node if n.name == layer)
    inits = {t.name: numpy_helper.to_array(t) for t in canonical.graph.initializer}
    w, b = inits[node.input[1]], inits[node.input[2]]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    mask = np.abs(w) > np.quantile(np.abs(w), 0.5)
    w2, b2 = refit_conv_layer(w, b, attrs, conv_io_batches(canonical, layer, feeds))
    x, y = next(LayerCapture(canonical).conv_batches(layer, feeds[:1]))
    np.testing.assert_allclose(conv2d_im2col(x, w2, b2, attrs), y, atol=1e-3)
    w3, b3 = refit_conv_layer(w, b, attrs, conv_io_batches(canonical, layer, feeds), mask)
    assert np.mean((conv2d_im2col(x, w3, b3, attrs) - y) ** 2) < np.mean((conv2d_im2col(x, w * mask, b, attrs) - y) ** 2)


# ---------------------------------------------------------------- memory

def test_streaming_memory_is_bounded(capsys):
    """A larger synthetic layer streamed with a row budget: peak traced memory stays near one batch."""
    r = rng(14)
    cin, cout, hw, n, batches = 32, 32, 48, 8, 12
    w = (r.standard_normal((cout, cin, 3, 3)) / 17).astype(np.float32)
    model = single_conv([n, cin, hw, hw], w, None, pads=[1, 1, 1, 1])
    relu = onnx.ModelProto.FromString(model.SerializeToString())
    relu.graph.node.append(helper.make_node("Relu", ["y"], ["z"], name="relu"))
    relu.graph.output[0].name = "z"
    gen = ({"x": r.standard_normal((n, cin, hw, hw)).astype(np.float32)} for _ in range(batches))
    batch_bytes = n * cin * hw * hw * 4
    tracemalloc.start()
    mom = ConvMoments(w.shape, {"pads": [1, 1, 1, 1]}, row_budget=4096, seed=0)
    for x, y in conv_io_batches(relu, "conv", gen):
        mom.update(x, y)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    total = batches * batch_bytes * 2
    with capsys.disabled():
        print(f"\n[calibration memory] {batches} batches of {batch_bytes / 2**20:.1f} MiB input "
              f"(+ same output), {total / 2**20:.0f} MiB streamed; traced peak {peak / 2**20:.1f} MiB; "
              f"process max RSS {maxrss:.0f} MiB; rows used {mom.rows_used} of {mom.rows_seen}")
    assert mom.rows_used == batches * 4096
    assert peak < total / 2                                # generous: never everything at once


def with_conv_weights(model, conv, w, b):
    """A copy of `model` whose Conv `conv` has weight w and bias b (both initializers already)."""
    out = onnx.ModelProto.FromString(model.SerializeToString())
    node = next(n for n in out.graph.node if n.name == conv)
    for init in out.graph.initializer:
        if init.name == node.input[1]:
            init.CopyFrom(numpy_helper.from_array(w, init.name))
        elif len(node.input) > 2 and init.name == node.input[2]:
            init.CopyFrom(numpy_helper.from_array(b, init.name))
    return out


def test_sequential_refit_loop_beats_data_free(canonical):
    """The loop every technique runs: for each Conv in order, prune it, refit it on its input
    in the model compressed so far against the original's output, and move on."""
    r = rng(15)
    calib = [{"input": r.standard_normal((4, 3, 16, 16)).astype(np.float32)} for _ in range(4)]
    test = {"input": r.standard_normal((8, 3, 16, 16)).astype(np.float32)}
    inits = {t.name: numpy_helper.to_array(t) for t in canonical.graph.initializer}
    original = LayerCapture(canonical)
    pruned = refitted = canonical
    for conv in conv_names(canonical):
        node = next(n for n in canonical.graph.node if n.name == conv)
        w, b = inits[node.input[1]], inits[node.input[2]]
        mask = np.abs(w) > np.quantile(np.abs(w), 0.6)
        pruned = with_conv_weights(pruned, conv, w * mask, b)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        w2, b2 = refit_conv_layer(w, b, attrs, conv_io_batches(original, conv, calib, current=refitted), mask)
        refitted = with_conv_weights(refitted, conv, w2, b2)
    want = plain_session(canonical).run(None, test)[0]
    err = lambda m: float(np.mean((plain_session(m).run(None, test)[0] - want) ** 2))  # noqa: E731
    print(f"\n[calibration] 60% pruned per layer: output MSE data-free {err(pruned):.4f}, refit {err(refitted):.4f}")
    assert err(refitted) < 0.5 * err(pruned)
