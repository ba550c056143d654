"""The command line on input a new user gives it: bad calibration data, models whose input
does not fit photos, fixed batch dims, channel-last inputs, unknown shapes, detector outputs.
Error paths run in a subprocess: exit status 2, one `error:` line, no traceback, no output
written, the input untouched."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import modelgen
import onnxcompress

REPO = Path(__file__).resolve().parents[1]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "onnxcompress.cli", *[str(a) for a in args]], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_clean_error(proc, *words):
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    assert "Traceback" not in text
    for w in words:
        assert w in errors[0], errors[0]


def gray_model(batch="N"):
    """1-channel 28x28 input, like the digit models."""
    b = modelgen.Builder(1)
    x = b.relu(b.conv("input", 1, 4, pads=[1, 1, 1, 1]))
    x = b.relu(b.conv(x, 4, 8, pads=[1, 1, 1, 1], strides=[2, 2]))
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])])
    logits = b.op("Gemm", [x, b.const(np.ones((10, 8), np.float32) * 0.1), b.const(np.zeros(10, np.float32))],
                  transB=1)
    return b.model([batch, 1, 28, 28], [logits])


def nhwc_model():
    """Channel-last [N, 32, 32, 3] input, transposed inside (as TF exports do)."""
    b = modelgen.Builder(2)
    x = b.op("Transpose", ["input"], perm=[0, 3, 1, 2])
    x = b.relu(b.conv(x, 3, 8, pads=[1, 1, 1, 1]))
    x = b.relu(b.conv(x, 8, 8, pads=[1, 1, 1, 1]))
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])])
    logits = b.op("Gemm", [x, b.const(np.ones((5, 8), np.float32) * 0.1), b.const(np.zeros(5, np.float32))],
                  transB=1)
    return b.model(["N", 32, 32, 3], [logits])


def detector_model(batch=1):
    """Fixed batch, two outputs: class scores [N, 10] and box regression [N, 4]."""
    b = modelgen.Builder(3)
    x = b.relu(b.conv("input", 3, 8, pads=[1, 1, 1, 1]))
    x = b.relu(b.conv(x, 8, 8, pads=[1, 1, 1, 1]))
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])])
    r = np.random.default_rng(0)
    scores = b.op("Gemm", [x, b.const(r.standard_normal((10, 8)).astype(np.float32)),
                           b.const(np.zeros(10, np.float32))], transB=1)
    boxes = b.op("Gemm", [x, b.const(r.standard_normal((4, 8)).astype(np.float32)),
                          b.const(np.zeros(4, np.float32))], transB=1)
    m = b.model([batch, 3, 16, 16], [scores, boxes])
    m.graph.output[0].name, m.graph.output[1].name = "scores", "boxes"
    for node in m.graph.node:
        node.output[:] = ["scores" if o == scores else "boxes" if o == boxes else o for o in node.output]
    return onnx.shape_inference.infer_shapes(m)


@pytest.fixture()
def gray(tmp_path):
    path = tmp_path / "gray.onnx"
    onnx.save(gray_model(), str(path))
    return path


def gray_x(n=16):
    return np.random.default_rng(0).random((n, 1, 28, 28)).astype(np.float32)


# ---------------------------------------------------------------------------- error paths

def _bad_npz(case, tmp_path):
    x = gray_x()
    path = tmp_path / f"{case}.npz"
    if case == "nan":
        x[3, 0, 5, 5] = np.nan
        np.savez(path, input=x)
    elif case == "inf":
        x[0, 0, 0, 0] = np.inf
        np.savez(path, input=x)
    elif case == "uint8":
        np.savez(path, input=(x * 255).astype(np.uint8))
    elif case == "wrong_key_shape":
        np.savez(path, pixels=x[:, :, :20])
    elif case == "two_wrong_keys":
        np.savez(path, a=x, b=x)
    elif case == "pickled":
        np.savez(path, input=np.array([{"x": 1}] * 4, dtype=object))
    return path


CALIB_WORDS = {
    "nan": ["NaN"], "inf": ["infinite"], "uint8": ["uint8", "normalise"],
    "wrong_key_shape": ["'input'", "'pixels'"], "two_wrong_keys": ["'input'", "'a'", "'b'"],
    "pickled": ["pickled"],
}


@pytest.mark.parametrize("case", sorted(CALIB_WORDS))
def test_bad_calibration_npz_is_refused(case, gray, tmp_path):
    data = _bad_npz(case, tmp_path)
    out = tmp_path / "out.onnx"
    before = digest(gray)
    proc = cli("optimize", gray, "-o", out, "--method", "penni", "--calib", data)
    assert_clean_error(proc, *CALIB_WORDS[case])
    assert not out.exists() and digest(gray) == before
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("spec", ["photos", "folder"])
def test_photos_on_a_gray_model_say_to_give_an_npz(spec, gray, tmp_path):
    from PIL import Image

    if spec == "folder":
        folder = tmp_path / "images"
        folder.mkdir()
        Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(folder / "a.png")
        spec = folder
    out = tmp_path / "out.onnx"
    before = digest(gray)
    proc = cli("optimize", gray, "-o", out, "--method", "cluspa", "--calib", spec)
    assert_clean_error(proc, "RGB", "1 channel", ".npz")
    assert not out.exists() and digest(gray) == before


def test_digits_on_an_rgb_model_say_to_give_an_npz(small_model_path, tmp_path):
    out = tmp_path / "out.onnx"
    proc = cli("optimize", small_model_path, "-o", out, "--method", "cluspa", "--calib", "mnist-test")
    assert_clean_error(proc, "[1, 28, 28]", ".npz")
    assert not out.exists()


def test_eval_on_pickled_npz(gray, tmp_path):
    data = tmp_path / "p.npz"
    np.savez(data, input=np.array([{"x": 1}] * 4, dtype=object), y=np.arange(4))
    assert_clean_error(cli("eval", gray, "--data", data), "pickled")


@pytest.mark.parametrize("args,words", [
    (["--random", "0"], ["--random", ">= 1"]),
    (["--random", "-3"], ["--random"]),
    (["--data", "DATA", "--limit", "0"], ["--limit"]),
    (["--data", "DATA", "--batch", "0"], ["--batch"]),
])
def test_compare_bad_counts(args, words, gray, tmp_path):
    data = tmp_path / "d.npz"
    np.savez(data, input=gray_x())
    args = [str(data) if a == "DATA" else a for a in args]
    assert_clean_error(cli("compare", gray, gray, *args), *words)


def test_mean_without_images_and_bad_input_shape(gray, tmp_path):
    data = tmp_path / "d.npz"
    np.savez(data, input=gray_x())
    out = tmp_path / "o.onnx"
    assert_clean_error(cli("optimize", gray, "-o", out, "--calib", data, "--mean", "0.5,0.5,0.5"), "--mean")
    assert_clean_error(cli("inspect", gray, "--input-shape", "1,28,28"), "--input-shape", "rank 4")
    assert not out.exists()


# ---------------------------------------------------------------------------- accepted, with a warning

def test_single_array_under_another_key_is_used_when_it_fits(gray, tmp_path):
    data = tmp_path / "d.npz"
    np.savez(data, pixels=gray_x())
    out = tmp_path / "o.onnx"
    proc = cli("optimize", gray, "-o", out, "--method", "cluspa", "--calib", data)
    assert proc.returncode == 0, proc.stderr
    assert "using the array 'pixels' for the model input 'input'" in proc.stderr and out.exists()


def test_photos_on_channel_last_model_say_which_preprocessing(tmp_path):
    path = tmp_path / "nhwc.onnx"
    onnx.save(nhwc_model(), str(path))
    out = tmp_path / "o.onnx"
    proc = cli("optimize", path, "-o", out, "--method", "cluspa", "--calib", "photos", "--calib-limit", 8)
    assert proc.returncode == 0, proc.stderr
    assert "NHWC" in proc.stderr and "0.485" in proc.stderr and "--mean" in proc.stderr
    sess = onnxcompress.InferenceSession(onnx.load(str(out)), threads=1)
    assert sess.run(None, {"input": np.zeros((2, 32, 32, 3), np.float32)})[0].shape == (2, 5)

    proc = cli("optimize", path, "-o", tmp_path / "o2.onnx", "--method", "cluspa", "--calib", "photos",
               "--calib-limit", 8, "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5")
    assert proc.returncode == 0, proc.stderr
    assert "(0.5, 0.5, 0.5)" in proc.stderr and "ImageNet" not in proc.stderr


def test_image_inputs_transpose_for_channel_last():
    from onnxcompress.inputs import calibration_feeds

    nchw = modelgen.small_resnet()  # [N, 3, 16, 16]
    a = calibration_feeds(nchw, "photos", limit=4)[0]["input"]
    b = calibration_feeds(channel_last(nchw), "photos", limit=4)[0]["input"]
    assert a.shape == (4, 3, 16, 16) and b.shape == (4, 16, 16, 3)
    np.testing.assert_array_equal(a.transpose(0, 2, 3, 1), b)


def channel_last(model):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.input[0].CopyFrom(helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 16, 16, 3]))
    return m


# ---------------------------------------------------------------------------- fixed batch of 1

@pytest.mark.parametrize("method", ["falcon", "cluspa", "penni", "tabconv"])
def test_fixed_batch_one_model_calibrates(method):
    from onnxcompress.optimizer import optimize

    model = detector_model(batch=1)
    rng = np.random.default_rng(0)
    feeds = [{"input": rng.standard_normal((8, 3, 16, 16)).astype(np.float32)} for _ in range(2)]
    opts = {"select": "all"} if method == "falcon" else {"calib_rows": 2000} if method == "tabconv" else {}
    out, report = optimize(model, method, calib_feeds=feeds, **opts)
    assert report.totals["rewritten"] >= 1
    sess = onnxcompress.InferenceSession(out, threads=1)
    x = feeds[0]["input"][:1]
    got = sess.run(None, {"input": x})
    want = onnxcompress.InferenceSession(model, threads=1).run(None, {"input": x})
    for g, w in zip(got, want):
        assert g.shape == w.shape
        if method == "falcon":
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_compare_on_fixed_batch_detector(tmp_path):
    path = tmp_path / "det.onnx"
    onnx.save(detector_model(batch=1), str(path))
    data = tmp_path / "d.npz"
    np.savez(data, input=np.random.default_rng(0).standard_normal((20, 3, 16, 16)).astype(np.float32))
    proc = cli("compare", path, path, "--data", data, "--batch", 8, "--limit", 13, "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["scores"]["samples"] == 13 and rows["boxes"]["samples"] == 13
    assert rows["scores"]["top1_agreement"] == 1.0 and rows["boxes"]["top1_agreement"] is None
    proc = cli("compare", path, path, "--random", 3, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["samples"] == 3


def test_compare_limit_is_exact(gray, tmp_path):
    data = tmp_path / "d.npz"
    np.savez(data, input=np.random.default_rng(0).random((150, 1, 28, 28)).astype(np.float32))
    proc = cli("compare", gray, gray, "--data", data, "--limit", 100, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["samples"] == 100


def test_compare_thresholds_set_the_exit_status(gray, tmp_path):
    other = tmp_path / "other.onnx"
    m = gray_model()
    for t in m.graph.initializer:  # a different model: negated first conv weights
        if t.name == "w1":
            t.CopyFrom(onnx.numpy_helper.from_array(-onnx.numpy_helper.to_array(t), "w1"))
    onnx.save(m, str(other))
    same = cli("compare", gray, gray, "--random", 4, "--min-cosine", 0.9999, "--min-agreement", 1.0)
    assert same.returncode == 0, same.stderr
    diff = cli("compare", gray, other, "--random", 4, "--min-cosine", 0.9999)
    assert diff.returncode == 1 and "below threshold" in diff.stderr and "Traceback" not in diff.stderr


def test_eval_respects_fixed_batch(tmp_path):
    path = tmp_path / "g1.onnx"
    onnx.save(gray_model(batch=1), str(path))
    data = tmp_path / "d.npz"
    np.savez(data, input=gray_x(5), y=np.arange(5))
    proc = cli("eval", path, "--data", data, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["samples"] == 5


# ---------------------------------------------------------------------------- inspect, help, penni --bases

def test_inspect_unknown_shapes_said_and_inferred(tmp_path):
    m = modelgen.small_resnet()
    m.graph.input[0].CopyFrom(helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"]))
    del m.graph.value_info[:]
    path = tmp_path / "sym.onnx"
    onnx.save(m, str(path))
    proc = cli("inspect", path)
    assert proc.returncode == 0, proc.stderr
    total = next(line for line in proc.stdout.splitlines() if line.startswith("total"))
    assert "unknown" in total and "--input-shape" in proc.stdout
    proc = cli("inspect", path, "--input-shape", "1,3,16,16", "--json")
    data = json.loads(proc.stdout)
    assert data["totals"]["macs"] > 0 and data["totals"]["convs_with_unknown_macs"] == 0
    onnx.save(modelgen.small_resnet(), str(tmp_path / "static.onnx"))
    static = json.loads(cli("inspect", tmp_path / "static.onnx", "--json").stdout)
    assert static["totals"]["macs"] == data["totals"]["macs"]


def test_optimize_help_states_each_default_once():
    proc = cli("optimize", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "[default: None]" not in text
    assert "Which method when" in text and "tabconv" in text
    from onnxcompress.methods import all_options

    for o in all_options().values():
        assert not (o.default is not None and "(default" in o.help), o.name


def test_penni_bases_beyond_kernel_size_does_not_grow_the_model(tmp_path):
    from onnxcompress.analysis import initializer_bytes

    path = tmp_path / "m.onnx"
    model = modelgen.small_resnet(channels=16)
    onnx.save(model, str(path))
    out = tmp_path / "o.onnx"
    proc = cli("optimize", path, "-o", out, "--method", "penni", "--bases", 100, "--report", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    assert "--bases 100" in proc.stderr and "smaller --bases" in proc.stderr
    assert initializer_bytes(onnx.load(str(out))) <= initializer_bytes(model)
    layers = json.loads((tmp_path / "r.json").read_text())["layers"]
    assert all(r["status"] == "skipped" for r in layers if r.get("kernel") == [3, 3])
    assert any("would not shrink" in r["reason"] for r in layers)


def test_mlxtend_is_a_core_dependency():
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("mlxtend") for d in deps)
    assert any(d.replace(" ", "").startswith("onnx>=1.21") for d in deps)


def test_optimize_counts_macs_at_the_calibration_shape():
    from onnxcompress.optimizer import optimize

    static = modelgen.small_resnet()
    m = onnx.ModelProto()
    m.CopyFrom(static)
    m.graph.input[0].CopyFrom(helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"]))
    del m.graph.value_info[:]
    _, free = optimize(m, "falcon", select="all")
    assert free.totals["conv_macs_unknown"] == 6 and free.totals["conv_macs"] == 0
    feeds = [{"input": np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)}]
    _, calibrated = optimize(m, "falcon", select="all", calib_feeds=feeds)
    _, ref = optimize(static, "falcon", select="all")
    assert calibrated.totals["conv_macs_unknown"] == 0
    assert calibrated.totals["conv_macs"] == ref.totals["conv_macs"] > 0
    assert any("calibration input shape [1, 3, 16, 16]" in n for n in calibrated.notes)
