"""Small synthetic models with the structures of the real exports in
bench/realmodels.py, so that what the real models showed is tested without
them: a PP-OCR-style (Paddle) detector head with every weight in a Constant
node, symbolic batch, height and width, a depthwise Conv, BatchNorm, HardSwish
and a ConvTranspose upsampling; every method runs on it."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import onnxcompress
from modelgen import Builder
from onnxcompress.schemas import register_schemas


def paddle_like_detector(seed: int = 0) -> onnx.ModelProto:
    b = Builder(seed)
    x = b.op("HardSwish", [b.bn(b.conv("input", 3, 8, pads=[1, 1, 1, 1], strides=[2, 2], bias=False,
                                       weight_node=True), 8)])
    x = b.relu(b.conv(x, 8, 8, pads=[1, 1, 1, 1], group=8, weight_node=True))          # depthwise
    x = b.relu(b.conv(x, 8, 16, k=1, weight_node=True))
    x = b.relu(b.conv(x, 16, 16, pads=[1, 1, 1, 1], weight_node=True))
    w = (b.rng.standard_normal((16, 4, 2, 2)) * 0.2).astype(np.float32)
    up = b.op("ConvTranspose", [x, b.const(w, "wt", as_node=True), b.const(np.zeros(4, np.float32), "bt")],
              strides=[2, 2], kernel_shape=[2, 2])
    prob = b.op("Sigmoid", [b.conv(up, 4, 1, k=1, weight_node=True)])
    model = b.model(["N", 3, "H", "W"], [prob], opset=14)
    model.graph.output[0].CopyFrom(onnx.helper.make_tensor_value_info(prob, onnx.TensorProto.FLOAT,
                                                                      ["N", 1, None, None]))
    return model


def _run(model, x):
    sess = onnxcompress.InferenceSession(model.SerializeToString())
    return sess.run(None, {"input": x})[0]


def _calib():
    rng = np.random.default_rng(1)
    return [{"input": rng.standard_normal((4, 3, 16, 16)).astype(np.float32)} for _ in range(2)]


@pytest.mark.parametrize("method,options", [
    ("falcon", {"select": "all"}),
    ("cluspa", {}),
    ("penni", {"bases": 3}),
    ("tabconv", {"calib_rows": 2000}),
])
def test_every_method_on_a_paddle_like_detector(method, options):
    model = paddle_like_detector()
    calib = _calib() if method == "tabconv" else None
    out, report = onnxcompress.optimize(model, method, verify=True, calib_feeds=calib, **options)
    register_schemas()
    onnx.checker.check_model(out, full_check=True)
    assert report.totals["conv_layers"] == 5
    # the ConvTranspose is kept as it was, and the report says so
    ct = [n for n in out.graph.node if n.op_type == "ConvTranspose"]
    assert len(ct) == 1
    assert any("1 ConvTranspose node(s) left as they are" in n for n in report.notes), report.notes
    # symbolic H/W: the rewritten model runs at sizes other than the calibration's
    rng = np.random.default_rng(2)
    ref_sess = ort.InferenceSession(model.SerializeToString())
    for shape in [(1, 3, 16, 16), (2, 3, 24, 40)]:
        x = rng.standard_normal(shape).astype(np.float32)
        ref, got = ref_sess.run(None, {"input": x})[0], _run(out, x)
        assert got.shape == ref.shape == (shape[0], 1, shape[2], shape[3])
        if method == "falcon":
            np.testing.assert_allclose(got, ref, atol=1e-5)
        else:
            assert np.isfinite(got).all()


def test_convtranspose_weights_untouched():
    model = paddle_like_detector()
    out, _ = onnxcompress.optimize(model, "cluspa")
    consts = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    ct = next(n for n in out.graph.node if n.op_type == "ConvTranspose")
    src = next(n for n in model.graph.node if n.op_type == "Constant" and n.output[0].startswith("wt"))
    np.testing.assert_array_equal(consts[ct.input[1]], numpy_helper.to_array(src.attribute[0].t))
