"""INT8 as a per-layer part (onnxcompress.int8): chosen Convs quantized by ONNX Runtime's own
quantizer (QDQ, per-channel), the other Convs left in fp32, our ops untouched, outputs
compared with the fp32 model run in ONNX Runtime."""

import numpy as np
import pytest
from onnx import numpy_helper

import modelgen
import onnxcompress
from onnxcompress import DOMAIN
from onnxcompress.errors import OnnxCompressError
from onnxcompress.evaluation import compare_models
from onnxcompress.inputs import random_feeds
from onnxcompress.int8 import conv_names, int8_convs, quantize_convs


def mixed_chain(seed: int = 0):
    """input -> Conv c1 -> Conv c2 (fed by a Conv, so falcon leaves both) -> Relu -> Conv c3 -> Relu
    -> Conv c4 -> Relu -> GAP -> Gemm: after falcon --select all, c1 and c2 are ORT Convs and c3, c4
    are SparseInputConv."""
    b = modelgen.Builder(seed)
    c1 = b.conv("input", 3, 8, pads=[1, 1, 1, 1])
    c2 = b.conv(c1, 8, 8, pads=[1, 1, 1, 1])
    c3 = b.conv(b.relu(c2), 8, 8, pads=[1, 1, 1, 1])
    c4 = b.conv(b.relu(c3), 8, 16, pads=[1, 1, 1, 1], strides=[2, 2])
    x = b.op("Flatten", [b.op("GlobalAveragePool", [b.relu(c4)])])
    w = b.const((b.rng.standard_normal((10, 16)) * 0.3).astype(np.float32))
    logits = b.op("Gemm", [x, w, b.const(np.zeros(10, np.float32))], transB=1)
    return b.model(["N", 3, 16, 16], [logits]), (c1, c2, c3, c4)


@pytest.fixture(scope="module")
def rewritten():
    model, names = mixed_chain()
    feeds = random_feeds(model, 8, seed=0, batch=4)
    out, _ = onnxcompress.optimize(model, "falcon", calib_feeds=feeds, select="all")
    assert conv_names(out) == list(names[:2])
    assert [n.name for n in out.graph.node if n.domain == DOMAIN] == list(names[2:])
    return out, names, feeds


def _weight(model, node):
    inits = {t.name: t for t in model.graph.initializer}
    return numpy_helper.to_array(inits[node.input[1]])


def _cosine(model_a, model_b, seed=5):
    feeds = random_feeds(model_a, 4, seed=seed, batch=4)
    return compare_models(model_a, model_b, feeds)[0].cosine


def test_chosen_conv_becomes_qdq_others_stay_fp32_and_ours_untouched(rewritten):
    model, (c1, c2, c3, c4), feeds = rewritten
    q = quantize_convs(model, feeds, [c1])
    assert int8_convs(q) == [c1]
    nodes = {n.name: n for n in q.graph.node}
    producer = {o: n for n in q.graph.node for o in n.output}
    # c1 reads a DequantizeLinear'd weight (s8, one scale per output channel) and input
    w_dq = producer[nodes[c1].input[1]]
    assert w_dq.op_type == "DequantizeLinear"
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    assert inits[w_dq.input[0]].dtype == np.int8
    assert inits[w_dq.input[1]].shape == (8,)
    assert producer[nodes[c1].input[0]].op_type == "DequantizeLinear"
    # c2 keeps its fp32 weight initializer
    assert nodes[c2].input[1] not in producer
    np.testing.assert_array_equal(_weight(q, nodes[c2]), _weight(model, {n.name: n for n in model.graph.node}[c2]))
    # our nodes: same op, attributes, inputs and initializer values
    before = {n.name: n for n in model.graph.node if n.domain == DOMAIN}
    for name in (c3, c4):
        assert nodes[name].domain == DOMAIN and nodes[name].op_type == before[name].op_type
        assert nodes[name].attribute == before[name].attribute
        assert list(nodes[name].input)[1:] == list(before[name].input)[1:]
        for t in before[name].input[1:]:
            if t:
                np.testing.assert_array_equal(inits[t], numpy_helper.to_array(
                    next(i for i in model.graph.initializer if i.name == t)))
    assert _cosine(model, q) > 0.99


def test_quantize_second_conv_and_exclude(rewritten):
    model, (c1, c2, c3, c4), feeds = rewritten
    q = quantize_convs(model, feeds, exclude=[c1])
    assert int8_convs(q) == [c2]
    # the Relu after c2 is folded into c2's output quantization by ORT's quantizer
    assert sum(n.op_type == "Relu" for n in q.graph.node) == sum(n.op_type == "Relu" for n in model.graph.node) - 1
    assert _cosine(model, q) > 0.99
    kept = quantize_convs(model, feeds, exclude=[c1], fold_activations=False)
    assert int8_convs(kept) == [c2]
    assert sum(n.op_type == "Relu" for n in kept.graph.node) == sum(n.op_type == "Relu" for n in model.graph.node)


def test_every_conv_of_a_plain_model_close_to_fp32():
    model = modelgen.small_resnet()
    feeds = random_feeds(model, 8, seed=0, batch=4)
    q = quantize_convs(model, feeds)
    assert sorted(int8_convs(q)) == sorted(conv_names(model))
    assert _cosine(model, q) > 0.99


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_calibration_methods(rewritten, method):
    model, (c1, c2, c3, c4), feeds = rewritten
    q = quantize_convs(model, feeds, [c1, c2], calibrate_method=method)
    assert sorted(int8_convs(q)) == sorted([c1, c2])
    assert _cosine(model, q) > 0.98


def test_nothing_chosen_returns_a_copy(rewritten):
    model, (c1, c2, c3, c4), feeds = rewritten
    q = quantize_convs(model, feeds, [c1], exclude=[c1])
    assert q.SerializeToString() == model.SerializeToString() and q is not model


def test_errors(rewritten):
    model, (c1, c2, c3, c4), feeds = rewritten
    snapshot = model.SerializeToString()
    with pytest.raises(OnnxCompressError, match="no Conv node named 'nope'"):
        quantize_convs(model, feeds, ["nope"])
    with pytest.raises(OnnxCompressError, match="exclude: the model has no Conv node named 'gone'"):
        quantize_convs(model, feeds, exclude=["gone"])
    with pytest.raises(OnnxCompressError, match=f"'{c3}' is an onnxcompress SparseInputConv, not a Conv"):
        quantize_convs(model, feeds, [c1, c3])
    with pytest.raises(OnnxCompressError, match="needs calibration inputs"):
        quantize_convs(model, [], [c1])
    with pytest.raises(OnnxCompressError, match="unknown calibration method 'median'"):
        quantize_convs(model, feeds, [c1], calibrate_method="median")
    with pytest.raises(OnnxCompressError, match="must be strings"):
        quantize_convs(model, feeds, [3])
    quantize_convs(model, feeds, [c1])
    assert model.SerializeToString() == snapshot  # the input model is never changed
