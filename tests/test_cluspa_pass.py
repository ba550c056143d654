"""The cluspa method end to end: pass, report, portable output, CLI, and the
bundled digit classifier (accuracy with calibration)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

import modelgen
import onnxcompress
from onnxcompress.cli import main
from onnxcompress.errors import OnnxCompressError
from onnxcompress.model_io import prepare_for_runtime

REPO = Path(__file__).resolve().parents[1]


def run(model, x, threads=1):
    sess = onnxcompress.InferenceSession(prepare_for_runtime(model), threads=threads)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def small():
    return modelgen.small_resnet(seed=1, channels=16)


@pytest.fixture(scope="module")
def feeds():
    r = np.random.default_rng(0)
    return [{"input": r.standard_normal((8, 3, 16, 16)).astype(np.float32)} for _ in range(2)]


def ops(model):
    return [(n.domain, n.op_type) for n in model.graph.node]


def test_data_free_rewrites_every_conv_and_equals_portable(small):
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    out, rep = onnxcompress.optimize(small, "cluspa", sparsity=0.6, clusters=8, verify=True)
    portable, _ = onnxcompress.optimize(small, "cluspa", sparsity=0.6, clusters=8, portable=True)
    n_conv = sum(1 for n in small.graph.node if n.op_type == "Conv")
    assert ops(out).count((onnxcompress.DOMAIN, "ClusteredSparseConv")) == n_conv
    assert ("", "Conv") not in ops(out)
    assert ops(portable).count(("", "Conv")) == n_conv and onnxcompress.DOMAIN not in {d for d, _ in ops(portable)}
    # the op computes exactly what Conv computes with the clustered weights
    np.testing.assert_allclose(run(out, x), run(portable, x), rtol=1e-4, atol=1e-4)
    rows = [r for r in rep.layers if r["status"] == "rewritten"]
    assert len(rows) == n_conv
    nnz = sum(r["nonzero_weights"] for r in rows)
    weights = sum(r["macs_per_pixel_before"] for r in rows)   # M * C/group * kh * kw
    assert nnz <= 0.45 * weights
    for r in rows:
        assert r["shared_values"] <= 7 and r["bytes_after"] < r["bytes_before"]
        assert r["adds_after"] == r["adds_per_pixel"] * r["macs_before"] // r["macs_per_pixel_before"]
    assert any("cluspa totals" in n for n in rep.notes)
    from onnxcompress.analysis import analyse_convs   # inspect reads the dense shape from weight_shape

    assert sorted(c.macs for c in analyse_convs(out)) == sorted(c.macs for c in analyse_convs(small))
    # the portable model really holds at most K distinct values per layer (0 included)
    for t in portable.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.ndim == 4:
            assert len(np.unique(a)) <= 8


def test_calibrated_is_closer_than_data_free_and_deterministic(small, feeds):
    x = np.random.default_rng(2).standard_normal((8, 3, 16, 16)).astype(np.float32)
    want = run(small, x)
    opts = dict(sparsity=0.7, clusters=8, calib_rows=2000)
    cal, rep = onnxcompress.optimize(small, "cluspa", calib_feeds=feeds, **opts)
    free, _ = onnxcompress.optimize(small, "cluspa", calib_feeds=feeds, data_free=True, **opts)
    err = lambda m: float(np.mean((run(m, x) - want) ** 2))  # noqa: E731
    print(f"\n[cluspa] small model, 70% pruned, K=8: output MSE calibrated {err(cal):.4f}, data-free {err(free):.4f}")
    assert err(cal) < 0.5 * err(free)
    rows = [r for r in rep.layers if r["status"] == "rewritten"]
    assert all(0.0 < r["output_cosine"] <= 1.0 + 1e-9 for r in rows)
    again, _ = onnxcompress.optimize(small, "cluspa", calib_feeds=feeds, **opts)
    assert cal.SerializeToString() == again.SerializeToString()
    # per-channel values and the magnitude criterion also run
    pc, rep_pc = onnxcompress.optimize(small, "cluspa", calib_feeds=feeds, per_channel=True, criterion="magnitude",
                                       **opts)
    assert all(r["per_channel"] for r in rep_pc.layers if r["status"] == "rewritten")
    assert np.isfinite(run(pc, x)).all()


def test_threshold_and_gmm_zero_cluster(small):
    out, rep = onnxcompress.optimize(small, "cluspa", weight_threshold=0.2, clusters=4)
    for r in rep.layers:
        assert r["status"] == "rewritten" and r["shared_values"] <= 3
    out, rep = onnxcompress.optimize(small, "cluspa", clusters=5)   # the GMM's zero component decides
    assert all(0.0 <= r["sparsity"] < 1.0 for r in rep.layers)


@pytest.mark.parametrize("bad", [dict(clusters=1), dict(clusters=65), dict(sparsity=1.0),
                                 dict(sparsity=0.5, weight_threshold=0.1), dict(weight_threshold=-1.0)])
def test_bad_options_are_errors(small, bad):
    with pytest.raises(OnnxCompressError):
        onnxcompress.optimize(small, "cluspa", **bad)


def test_cli(tmp_path, small):
    src = tmp_path / "m.onnx"
    onnx.save(small, str(src))
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(3).standard_normal((16, 3, 16, 16)).astype(np.float32))
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    r = CliRunner().invoke(main, ["optimize", str(src), "-o", str(out), "--method", "cluspa", "--clusters", "8",
                                  "--sparsity", "0.5", "--per-channel", "--calib", str(tmp_path / "calib.npz"),
                                  "--calib-rows", "2000", "--report", str(report)])
    assert r.exit_code == 0, r.output
    rep = json.loads(report.read_text())
    assert rep["method"] == "cluspa" and all(l_["status"] == "rewritten" for l_ in rep["layers"])
    r = CliRunner().invoke(main, ["optimize", str(src), "-o", str(tmp_path / "p.onnx"), "--method", "falcon",
                                  "--clusters", "8"])
    assert r.exit_code != 0


@pytest.mark.skipif(not (REPO / "models" / "digits_cnn.onnx").exists(), reason="models/digits_cnn.onnx not built")
def test_digits_cnn_keeps_accuracy_with_calibration():
    from onnxcompress.data import load_mnist_train
    from onnxcompress.evaluation import evaluate_accuracy
    from onnxcompress.inputs import dataset_arrays

    model = onnx.load(str(REPO / "models" / "digits_cnn.onnx"))
    x_train, _ = load_mnist_train()
    x_test, y_test = dataset_arrays("mnist-test", 600, seed=0)  # seeded class-balanced: the set is sorted by class
    name = model.graph.input[0].name
    calib = x_train[np.random.default_rng(0).permutation(len(x_train))[:32]]
    feeds = [{name: calib[i:i + 32]} for i in range(0, len(calib), 32)]
    out, rep = onnxcompress.optimize(model, "cluspa", calib_feeds=feeds, sparsity=0.6, clusters=16, calib_rows=4000)
    base = evaluate_accuracy(prepare_for_runtime(model).SerializeToString(), x_test, y_test).top1
    ours = evaluate_accuracy(prepare_for_runtime(out).SerializeToString(), x_test, y_test).top1
    rows = [r for r in rep.layers if r["status"] == "rewritten"]
    sparsity = 1 - sum(r["nonzero_weights"] for r in rows) / sum(r["macs_per_pixel_before"] for r in rows)
    print(f"\n[cluspa] digits_cnn: top-1 {base:.4f} -> {ours:.4f} at {sparsity:.3f} weight sparsity, K=16")
    assert len(rows) == 15
    assert sparsity >= 0.59
    assert ours >= base - 0.02
