"""--method penni end to end: eligibility (1x1 and depthwise left alone with the reason),
data-free and calibrated fits, BasisConv and the portable form (standard ONNX, compared
with BasisConv on the same fit), fused activations, report, and the bundled digit model."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import modelgen
import onnxcompress
from onnxcompress.errors import OnnxCompressError
from onnxcompress.optimizer import optimize
from onnxcompress.passes import PassManager, canonicalize

REPO = Path(__file__).resolve().parents[1]


def run(model, x, ours=True):
    if ours:
        sess = onnxcompress.InferenceSession(model, threads=1)
    else:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def depthwise_model():
    b = modelgen.Builder(3)
    x = b.relu(b.conv("input", 3, 8, pads=[1, 1, 1, 1]))
    x = b.relu(b.conv(x, 8, 8, group=8, pads=[1, 1, 1, 1]))           # depthwise: left alone
    x = b.relu(b.conv(x, 8, 16, pads=[1, 1, 1, 1], strides=[2, 2]))
    x = b.clip6(b.conv(x, 16, 16, pads=[1, 1, 1, 1]))
    return b.model(["N", 3, 12, 12], [x])


@pytest.fixture(scope="module")
def feeds():
    r = np.random.default_rng(0)
    return [{"input": r.standard_normal((4, 3, 16, 16)).astype(np.float32)} for _ in range(4)]


def test_eligibility_and_reasons():
    _, report = optimize(modelgen.small_resnet(), "penni", bases=4)
    by_status = {r["name"]: r for r in report.layers}
    skipped = [r for r in report.layers if r["status"] == "skipped"]
    assert any("1x1" in r["reason"] for r in skipped)
    assert all(r["op"] == "BasisConv" for r in report.layers if r["status"] == "rewritten")
    assert len(by_status) == len(report.layers) == report.totals["conv_layers"]
    _, report = optimize(depthwise_model(), "penni", bases=4)
    dw = [r for r in report.layers if r.get("group") == 8]
    assert dw and dw[0]["status"] == "skipped" and "depthwise" in dw[0]["reason"]


@pytest.mark.parametrize("model_fn", [modelgen.small_resnet, depthwise_model])
def test_portable_form_matches_basis_conv(model_fn):
    """Same fit, two encodings: the grouped Conv + 1x1 Conv written for any runtime, and our op.
    Also pins the (channel, basis) order: the portable form is plain ONNX Conv semantics."""
    model = model_fn()
    ours, rep = optimize(model, "penni", bases=3, coef_sparsity=0.5, verify=True)
    portable, rep_p = optimize(model, "penni", bases=3, coef_sparsity=0.5, portable=True, verify=True)
    assert not any(n.domain for n in portable.graph.node)
    assert any(n.op_type == "BasisConv" for n in ours.graph.node)
    # group-1 layers: d depthwise Convs of channel multiplier 1 and a Concat (ORT's depthwise paths)
    rewritten_g1 = [r for r in rep_p.layers if r["status"] == "rewritten" and r.get("group", 1) == 1]
    assert sum(n.op_type == "Concat" for n in portable.graph.node) >= len(rewritten_g1)
    for n in portable.graph.node:
        if n.op_type == "Conv" and (".basis" in n.name or n.name.endswith(".bases")):
            w = next(t for t in portable.graph.initializer if t.name == n.input[1])
            group = next(a.i for a in n.attribute if a.name == "group")
            multiplier = 3 if n.name.endswith(".bases") else 1  # grouped layers keep one Conv of multiplier d
            assert w.dims[1] == 1 and w.dims[0] == group * multiplier, n.name
    x = np.random.default_rng(1).standard_normal([2] + [d.dim_value for d in
                                                       model.graph.input[0].type.tensor_type.shape.dim][1:])
    x = x.astype(np.float32)
    a, b = run(ours, x), run(portable, x, ours=False)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * (np.abs(b).max() + 1))
    rewritten = [r for r in rep.layers if r["status"] == "rewritten"]
    assert rewritten and all(0.45 <= r["coef_sparsity"] <= 0.55 for r in rewritten)
    assert all(r["macs_per_position_basis_stage"] + r["macs_per_position_coef_stage"]
               == round(r["macs_ratio"] * r["macs_per_position_before"]) for r in rewritten)


def test_full_rank_unpruned_is_exact(feeds):
    """d = kh*kw and no pruning: the basis form is the original layer (to float rounding)."""
    model = modelgen.small_resnet()
    out, _ = optimize(model, "penni", bases=9, coef_sparsity=0.0)
    canonical, _ = PassManager(canonicalize()).run(model)
    x = feeds[0]["input"]
    want = run(canonical, x, ours=False)
    np.testing.assert_allclose(run(out, x), want, rtol=1e-4, atol=1e-4 * (np.abs(want).max() + 1))


def test_calibrated_beats_data_free_and_reports(feeds):
    model = modelgen.small_resnet()
    canonical, _ = PassManager(canonicalize()).run(model)
    free, _ = optimize(model, "penni", bases=2, coef_sparsity=0.6)
    cal, report = optimize(model, "penni", bases=2, coef_sparsity=0.6, calib_feeds=feeds)
    cal_obs_alt, _ = optimize(model, "penni", bases=2, coef_sparsity=0.6, calib_feeds=feeds, basis_iterations=1)
    test = np.random.default_rng(9).standard_normal((16, 3, 16, 16)).astype(np.float32)
    want = run(canonical, test, ours=False)
    err = {k: float(np.mean((run(m, test) - want) ** 2)) for k, m in
           [("free", free), ("cal", cal), ("alt", cal_obs_alt)]}
    print("\n[penni pass] output MSE", err)
    assert err["cal"] < 0.5 * err["free"]
    assert err["alt"] < 0.5 * err["free"]
    rewritten = [r for r in report.layers if r["status"] == "rewritten"]
    for r in rewritten:
        assert r["calibrated"] and r["criterion"] == "second-order"
        assert 0 < r["output_cosine"] <= 1.0 + 1e-9 and 0 < r["retained_energy"] <= 1
        assert r["bytes_after"] < r["bytes_before"]
    # deterministic
    again, _ = optimize(model, "penni", bases=2, coef_sparsity=0.6, calib_feeds=feeds)
    np.testing.assert_array_equal(run(again, test), run(cal, test))


def test_fused_activation_and_energy_option():
    model = depthwise_model()
    out, report = optimize(model, "penni", energy=0.9, coef_sparsity=0.3)
    acts = {n.name: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}.get("activation")
            for n in out.graph.node if n.op_type == "BasisConv"}
    assert set(acts.values()) >= {b"Relu", b"Clip"} or set(acts.values()) >= {"Relu", "Clip"}
    assert all(r["bases"] <= 9 for r in report.layers if r["status"] == "rewritten")


def test_bad_options():
    with pytest.raises(OnnxCompressError):
        optimize(modelgen.small_resnet(), "penni", bases=4, energy=0.9)
    with pytest.raises(OnnxCompressError):
        optimize(modelgen.small_resnet(), "penni", coef_sparsity=1.0)
    with pytest.raises(OnnxCompressError):
        optimize(modelgen.small_resnet(), "penni", threshold=0.1)   # falcon's option


def test_digits_cnn_calibrated_keeps_accuracy():
    path = REPO / "models" / "digits_cnn.onnx"
    if not path.exists():
        pytest.skip("models/digits_cnn.onnx is not built")
    from onnxcompress.evaluation import evaluate_accuracy
    from onnxcompress.inputs import dataset_arrays

    model = onnx.load(str(path))
    name = model.graph.input[0].name
    # seeded class-balanced samples: both sets are stored sorted by class
    x_train, _ = dataset_arrays("mnist-train", 128, seed=0)
    x_test, y_test = dataset_arrays("mnist-test", 1000, seed=0)
    calib = [{name: x_train[i:i + 32]} for i in range(0, 128, 32)]
    out, report = optimize(model, "penni", bases=5, coef_sparsity=0.7, calib_feeds=calib, calib_rows=8000)
    base = evaluate_accuracy(model, x_test, y_test).top1
    got = evaluate_accuracy(out, x_test, y_test).top1
    macs = sum(r.get("macs") or 0 for r in report.layers)
    after = sum((r.get("macs") or 0) * r.get("macs_ratio", 1.0) for r in report.layers)
    print(f"\n[penni digits] top-1 {base:.3f} -> {got:.3f}, Conv MACs -{1 - after / macs:.1%}")
    assert got >= base - 0.01
    assert after < 0.5 * macs


def conv_mac_reduction(report):
    """Fraction of the model's Conv MACs removed, basis stage included (batch 1)."""
    before = after = 0
    for r in report.layers:
        before += r["macs"]
        if r["status"] == "rewritten":
            after += r["macs"] * r["macs_ratio"]
        else:
            after += r["macs"]
    return 1 - after / before


@pytest.mark.parametrize("calibrated", [False, True])
def test_mac_reduction_allocates_settings_per_layer(feeds, calibrated):
    model = modelgen.small_resnet()
    kw = {"calib_feeds": feeds} if calibrated else {}
    out, report = optimize(model, "penni", mac_reduction=0.6, bases=4, **kw)
    rewritten = [r for r in report.layers if r["status"] == "rewritten"]
    assert rewritten and all("allocated" in r for r in rewritten)
    assert all(1 <= r["allocated"]["bases"] <= 4 and r["bases"] == r["allocated"]["bases"] for r in rewritten)
    assert conv_mac_reduction(report) >= 0.6 - 1e-6
    assert any("--mac-reduction 0.600" in n for n in report.notes)
    test = np.random.default_rng(9).standard_normal((4, 3, 16, 16)).astype(np.float32)
    canonical, _ = PassManager(canonicalize()).run(model)
    want = run(canonical, test, ours=False)
    got = run(out, test)
    cos = float(np.sum(got * want) / np.sqrt(np.sum(got ** 2) * np.sum(want ** 2)))
    assert cos > (0.9 if calibrated else 0.5)


def test_mac_reduction_bad_combinations():
    with pytest.raises(OnnxCompressError, match="mac-reduction"):
        optimize(modelgen.small_resnet(), "penni", mac_reduction=0.9, coef_sparsity=0.5)
    with pytest.raises(OnnxCompressError, match="mac-reduction"):
        optimize(modelgen.small_resnet(), "penni", mac_reduction=1.5)


def chain_with_unread_channels(residual: bool):
    """conv(3->12) -> Relu -> conv(12->8) whose weights for input channels 2, 5, 7 are zero
    (PENNI's coefficients for them are exactly zero); with `residual`, the first conv's output
    is also read by an Add, so its channels must stay."""
    b = modelgen.Builder(4)
    h = b.relu(b.conv("input", 3, 12, pads=[1, 1, 1, 1]))
    y = b.conv(h, 12, 8, pads=[1, 1, 1, 1])
    w = next(i for i in b.inits if i.name == b.nodes[-1].input[1])
    arr = onnx.numpy_helper.to_array(w).copy()
    arr[:, [2, 5, 7]] = 0
    w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
    outs = [y, b.op("Add", [h, b.conv(h, 12, 12, k=1)])] if residual else [y]
    return b.model(["N", 3, 10, 10], outs)


@pytest.mark.parametrize("residual", [False, True])
def test_channels_no_consumer_reads_are_removed(residual):
    from onnxcompress.passes.penni import PenniRewrite

    model = chain_with_unread_channels(residual)
    x = np.random.default_rng(3).standard_normal((2, 3, 10, 10)).astype(np.float32)
    kept, _ = PassManager(canonicalize() + [PenniRewrite(bases=4, coef_sparsity=0.2)]).run(model)
    out, report = optimize(model, "penni", bases=4, coef_sparsity=0.2)
    first = next(r for r in report.layers if r["in_channels"] == 3)
    coefs = {n.name: onnx.numpy_helper.to_array(next(i for i in out.graph.initializer if i.name == n.input[2]))
             for n in out.graph.node if n.op_type == "BasisConv"}
    if residual:
        assert "removed_output_channels" not in first
        assert coefs[first["name"]].shape[0] == 12
    else:
        assert first["removed_output_channels"] == 3 and coefs[first["name"]].shape == (9, 3 * 4)
        assert first["coef_nnz"] == np.count_nonzero(coefs[first["name"]])
        assert any("3 output channels" in n for n in report.notes)
    # the removed channels were read by nobody: the outputs do not change
    for got, want in zip(onnxcompress.InferenceSession(out, threads=1).run(None, {"input": x}),
                         onnxcompress.InferenceSession(kept, threads=1).run(None, {"input": x})):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
