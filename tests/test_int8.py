"""INT8 as a per-layer part (onnxcompress.int8): chosen Convs quantized by ONNX Runtime's own
quantizer (QDQ, per-channel), the other Convs left in fp32, our ops untouched, outputs
compared with the fp32 model run in ONNX Runtime."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import modelgen
import onnxcompress
from onnxcompress import DOMAIN
from onnxcompress.errors import OnnxCompressError
from onnxcompress.evaluation import compare_models, open_session, run_session
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


# ------------------------------------------------------------------ the stage's speed step (plan/stages.py)

class _Holds:
    """A budget that holds for every model (the speed step is what is under test)."""

    def holds(self, m):
        return True


def _stage_run(relative, model=None):
    from onnxcompress.plan.budget import Evaluator
    from onnxcompress.plan.stages import STAGES, run_stage

    model = model or modelgen.small_resnet()
    feeds = random_feeds(model, 4, seed=0, batch=4)
    evaluator = Evaluator(model, feeds[:2])
    lines = []
    out = run_stage(STAGES["int8"], "original", model, feeds, evaluator, _Holds(), False, lambda m: 1.0,
                    lines.append, relative=relative)
    return model, out, lines


def test_stage_leaves_out_a_layer_that_makes_the_model_slower():
    model = modelgen.small_resnet()
    first = conv_names(model)[0]
    calls = []

    def relative(ref, cand):  # "the model is 5% faster without INT8 on the first Conv"
        calls.append(1)
        return 1.05 if first in int8_convs(ref) and first not in int8_convs(cand) else 1.0

    _, out, lines = _stage_run(relative, model)
    assert out.meets_budget and first not in out.layers and list(out.left_for_speed) == [first]
    assert sorted(out.layers) == sorted(n for n in conv_names(model) if n != first)
    assert first not in int8_convs(out.model) and sorted(int8_convs(out.model)) == sorted(out.layers)
    assert len(calls) == len(conv_names(model)) + 2  # each layer alone, then together, then widened
    assert out.as_dict()["left_for_speed"] == {first: 1.05}
    assert any("left out for speed" in s for s in lines)


def test_stage_keeps_every_layer_when_leaving_them_out_is_not_faster():
    # every layer alone "gains" 3%, but all of them together gain nothing: all are kept
    def relative(ref, cand):
        gone = len(set(int8_convs(ref)) - set(int8_convs(cand)))
        return 1.03 if gone == 1 else 1.0

    model, out, lines = _stage_run(relative)
    assert sorted(out.layers) == sorted(conv_names(model)) and not out.left_for_speed
    assert any("all kept" in s for s in lines)


def test_stage_gains_within_noise_leave_everything_in():
    model, out, _ = _stage_run(lambda ref, cand: 1.015)  # under the 2% margin
    assert sorted(out.layers) == sorted(conv_names(model)) and not out.left_for_speed



# ------------------------------------------------------------------ other ops quantized with the Convs

def _quantized(model, op):
    """Nodes of type `op` that run in INT8 in a QDQ model: their first input is dequantized and
    their output quantized."""
    producer = {o: n for n in model.graph.node for o in n.output}
    readers = {}
    for n in model.graph.node:
        for t in n.input:
            readers.setdefault(t, []).append(n.op_type)
    return [n.name for n in model.graph.node if n.op_type == op and n.input[0] in producer
            and producer[n.input[0]].op_type == "DequantizeLinear"
            and readers.get(n.output[0]) and set(readers[n.output[0]]) == {"QuantizeLinear"}]


def test_other_ops_quantized_with_the_convs():
    model = modelgen.small_resnet()
    feeds = random_feeds(model, 8, seed=0, batch=4)
    convs_only = quantize_convs(model, feeds)
    assert not _quantized(convs_only, "Add") and not _quantized(convs_only, "Gemm")
    q = quantize_convs(model, feeds, other_ops=True)
    assert sorted(int8_convs(q)) == sorted(conv_names(model))
    for op in ("Add", "MaxPool", "GlobalAveragePool", "Gemm"):
        assert len(_quantized(q, op)) == sum(n.op_type == op for n in model.graph.node), op
    assert not any(n.op_type == "Relu" for n in q.graph.node)  # each folded into the range of its producer
    assert _cosine(model, q) > 0.99
    # a Conv left out stays fp32 with its Relu; the other ops are quantized still
    stem = conv_names(model)[0]
    q = quantize_convs(model, feeds, exclude=[stem], other_ops=True)
    assert stem not in int8_convs(q) and len(int8_convs(q)) == len(conv_names(model)) - 1
    assert sum(n.op_type == "Relu" for n in q.graph.node) == 1 and _quantized(q, "Add") and _quantized(q, "Gemm")
    assert _cosine(model, q) > 0.99


def test_other_ops_leave_our_nodes_and_unchosen_convs(rewritten):
    model, (c1, c2, c3, c4), feeds = rewritten
    q = quantize_convs(model, feeds, [c1], other_ops=True)
    assert int8_convs(q) == [c1]
    before = {n.name: n for n in model.graph.node if n.domain == DOMAIN}
    after = {n.name: n for n in q.graph.node if n.domain == DOMAIN}
    assert sorted(after) == sorted(before)
    for name in before:
        assert after[name].attribute == before[name].attribute
        assert list(after[name].input)[1:] == list(before[name].input)[1:]
    assert _quantized(q, "GlobalAveragePool") and _quantized(q, "Gemm")
    assert _cosine(model, q) > 0.98


def test_stage_widens_where_the_model_is_faster():
    def relative(ref, cand):  # "the model is 5% faster with its Add in INT8 too"
        return 1.05 if _quantized(cand, "Add") and not _quantized(ref, "Add") else 1.0

    model, out, lines = _stage_run(relative)
    assert out.widened and out.widen_gain == pytest.approx(1.05) and _quantized(out.model, "Add")
    assert sorted(out.layers) == sorted(conv_names(model)) and out.as_dict()["widened"] is True
    assert any("quantized too: 1.050x, kept" in s for s in lines)


def test_stage_does_not_widen_within_noise():
    model, out, lines = _stage_run(lambda ref, cand: 1.005)
    assert not out.widened and out.widen_gain == pytest.approx(1.005) and not _quantized(out.model, "Add")
    assert sorted(int8_convs(out.model)) == sorted(conv_names(model))


def test_stage_keeps_its_model_when_widening_fails(monkeypatch):
    from onnxcompress.plan import stages

    def broken(model, layers, feeds):
        raise OnnxCompressError("quantize: ONNX Runtime's quantizer failed: no")

    from dataclasses import replace

    monkeypatch.setitem(stages.STAGES, "int8", replace(stages.STAGES["int8"], widen=broken))
    model, out, lines = _stage_run(lambda ref, cand: 1.0)
    assert out.meets_budget and not out.widened and out.widen_gain is None
    assert sorted(int8_convs(out.model)) == sorted(conv_names(model))
    assert any("cannot widen" in s for s in lines)


def _binary_stem(seed: int = 0):
    """A stem Conv (1 input channel, 3x3, 8 maps) of large same-sign weights on binary images, as an
    MNIST stem sees them: a quantized pixel is 255 and a weight near 127, so an int16 sum of two
    adjacent products (ORT's u8 x s8 kernels without VNNI) saturates."""
    b = modelgen.Builder(seed)
    w = b.rng.uniform(0.8, 1.0, (8, 1, 3, 3)).astype(np.float32)
    out = b.name("conv")
    b.nodes.append(onnx.helper.make_node("Conv", ["input", b.const(w, "w")], [out], name=out, pads=[1, 1, 1, 1]))
    model = b.model(["N", 1, 12, 12], [out])
    rng = np.random.default_rng(seed)
    feeds = [{"input": (rng.random((4, 1, 12, 12)) < 0.6).astype(np.float32)} for _ in range(4)]
    return model, out, feeds


def test_saturation_probe_sets_seven_bit_weights_and_keeps_the_stem_exact():
    """The default (reduce_range=None) follows the probe: 7-bit weights where this CPU's u8 x s8
    convolution saturates, and then the stem's INT8 output is the fp32 one within quantization
    error; with 8-bit weights forced on such a CPU it is far off (what the probe protects against,
    and what makes the first assertion one that can fail)."""
    from onnxcompress.int8 import u8s8_saturates

    model, conv, feeds = _binary_stem()
    default = quantize_convs(model, feeds)
    wide = quantize_convs(model, feeds, reduce_range=False)
    narrow = quantize_convs(model, feeds, reduce_range=True)

    def weight_ints(q):
        producer = {o: n for n in q.graph.node for o in n.output}
        node = next(n for n in q.graph.node if n.name == conv)
        return numpy_helper.to_array({t.name: t for t in q.graph.initializer}[producer[node.input[1]].input[0]])

    assert int(np.abs(weight_ints(narrow)).max()) <= 64 < int(np.abs(weight_ints(wide)).max())
    saturates = u8s8_saturates()
    np.testing.assert_array_equal(weight_ints(default), weight_ints(narrow if saturates else wide))

    check = {"input": (np.random.default_rng(7).random((8, 1, 12, 12)) < 0.6).astype(np.float32)}
    ref = run_session(open_session(model), check)[0]

    def rel_error(q):
        return float(np.linalg.norm(run_session(open_session(q), check)[0] - ref) / np.linalg.norm(ref))

    assert rel_error(narrow) < 0.02
    assert rel_error(default) < 0.02
    if saturates:
        assert rel_error(wide) > 0.2
    else:
        assert rel_error(wide) < 0.02


def test_depthwise_convs_keep_eight_bit_weights_where_their_kernel_does_not_saturate():
    """A dense stem then a depthwise Conv (16 channels, multiplier 1), both of large same-sign weights
    on inputs near their range's top. The default gives the depthwise Conv 8-bit weights where ORT's
    depthwise u8 kernel does not saturate (`depthwise_u8s8_saturates()`, measured) while the dense
    one keeps 7 where the probe says it saturates; the INT8 output stays the fp32 one within
    quantization error, and its error is below the all-7-bit model's."""
    from onnxcompress.int8 import depthwise_u8s8_saturates, u8s8_saturates

    b = modelgen.Builder(3)
    stem = b.name("stem")
    b.nodes.append(onnx.helper.make_node("Conv", ["input", b.const(b.rng.uniform(0.2, 1.0, (16, 1, 3, 3)).astype(
        np.float32), "w0")], [stem], name=stem, pads=[1, 1, 1, 1]))
    dw = b.name("dw")
    b.nodes.append(onnx.helper.make_node(
        "Conv", [b.relu(stem), b.const(b.rng.uniform(0.5, 1.0, (16, 1, 3, 3)).astype(np.float32), "w1"),
                 b.const(b.rng.standard_normal(16).astype(np.float32), "b1")], [dw], name=dw, pads=[1, 1, 1, 1],
        group=16))
    model = b.model(["N", 1, 12, 12], [dw])
    rng = np.random.default_rng(1)
    feeds = [{"input": rng.uniform(0.5, 1.0, (4, 1, 12, 12)).astype(np.float32)} for _ in range(4)]
    default = quantize_convs(model, feeds)
    narrow = quantize_convs(model, feeds, reduce_range=True)

    def weight_ints(q, conv):
        producer = {o: n for n in q.graph.node for o in n.output}
        node = next(n for n in q.graph.node if n.name == conv)
        return numpy_helper.to_array({t.name: t for t in q.graph.initializer}[producer[node.input[1]].input[0]])

    eight_bit_dw = u8s8_saturates() and not depthwise_u8s8_saturates()
    assert int(np.abs(weight_ints(narrow, dw)).max()) <= 64
    assert int(np.abs(weight_ints(default, dw)).max()) == (127 if eight_bit_dw or not u8s8_saturates() else 64)
    assert int(np.abs(weight_ints(default, stem)).max()) == (64 if u8s8_saturates() else 127)

    check = {"input": np.random.default_rng(7).uniform(0.5, 1.0, (8, 1, 12, 12)).astype(np.float32)}
    ref = run_session(open_session(model), check)[0]

    def rel_error(q):
        return float(np.linalg.norm(run_session(open_session(q), check)[0] - ref) / np.linalg.norm(ref))

    assert rel_error(default) < 0.01
    if eight_bit_dw:
        assert rel_error(default) < rel_error(narrow)
