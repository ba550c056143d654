"""The residual input Z of our float ops (Y = activation(conv + Z)) and the pass that fuses a
residual Add into them (passes/fuse_residual.py).

The op: SparseInputConv, exact, against ONNX Runtime's Conv -> Add -> activation on every
instruction set of this CPU, its dense, sparse and fallback paths. Every technique: a small
ResNet rewritten with and without the fusion gives the same outputs in ONNX Runtime (so each
op reads Z at the index its schema gives it), and falcon's exact rewrite the original's.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from ophelpers import DOMAIN, ISAS, assert_close, conv_attrs, make_model, session

import modelgen
import onnxcompress
from onnxcompress import optimizer
from onnxcompress.passes import EliminateDeadCode, FuseActivation, PassContext, fusions
from onnxcompress.schemas import residual_index

FLOAT_OPS = {"SparseInputConv": 3, "BasisConv": 4, "ClusteredSparseConv": 5, "LutConv": 7}


def test_the_schemas_put_z_last():
    # The kernels read Z at these indices (custom_ops/src/*.cc: Epilogue::FromNode(info, i)).
    assert {op: residual_index(op) for op in FLOAT_OPS} == FLOAT_OPS
    assert residual_index("QLinearBasisMaps") is None  # u8 output: no residual


def _pair(case, w, b, z_shape, activation=""):
    """Our node with Z, and ONNX Runtime's Conv -> Add(Z) [-> activation]."""
    inits = [numpy_helper.from_array(w, "W")]
    if b is not None:
        inits.append(numpy_helper.from_array(b, "B"))
    act = {"activation": activation} if activation else {}
    if activation == "Clip":
        act.update(clip_min=-0.3, clip_max=0.4)
    z = helper.make_tensor_value_info("Z", onnx.TensorProto.FLOAT, list(z_shape))
    ours = make_model([helper.make_node("SparseInputConv", ["X", "W", "B" if b is not None else "", "Z"], ["Y"],
                                        domain=DOMAIN, **conv_attrs(case), **act, **case.get("extra", {}))], inits)
    ours.graph.input.append(z)
    nodes = [helper.make_node("Conv", ["X", "W"] + (["B"] if b is not None else []), ["C"], **conv_attrs(case)),
             helper.make_node("Add", ["C", "Z"], ["S" if activation else "Y"])]
    ref_inits = list(inits)
    if activation == "Relu":
        nodes.append(helper.make_node("Relu", ["S"], ["Y"]))
    elif activation == "Clip":
        ref_inits += [numpy_helper.from_array(np.float32(-0.3), "lo"), numpy_helper.from_array(np.float32(0.4), "hi")]
        nodes.append(helper.make_node("Clip", ["S", "lo", "hi"], ["Y"]))
    ref = make_model(nodes, ref_inits)
    ref.graph.input.append(z)
    return ours, ref


CASES = {
    "3x3": dict(pads=[1, 1, 1, 1]),
    "stride2": dict(pads=[1, 1, 1, 1], strides=[2, 2]),
    "1x1": dict(),
    "fallback": dict(pads=[600, 700, 600, 700], strides=[64, 64]),  # ORT's Conv inside, then the epilogue
}


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("activation", ["", "Relu", "Clip"])
@pytest.mark.parametrize("case_name", list(CASES))
@pytest.mark.parametrize("path", ["dense", "sparse"])
@pytest.mark.parametrize("bias", [True, False])
def test_sparse_input_conv_adds_z_before_the_activation(isa, activation, case_name, path, bias):
    case = dict(CASES[case_name])
    case["extra"] = {"dense_below_zero_fraction": 1.01 if path == "dense" else 0.0}
    rng = np.random.default_rng(7)
    c, m = 12, 20
    w = rng.standard_normal((m, c, 1 if case_name == "1x1" else 3, 1 if case_name == "1x1" else 3)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32) if bias else None
    x = np.maximum(rng.standard_normal((2, c, 9, 10)), 0).astype(np.float32)  # half zeros
    ours, ref = _pair(case, w, b, ["N", m, "OH", "OW"], activation)
    y_shape = session(make_model([helper.make_node("Conv", ["X", "W"], ["Y"], **conv_attrs(case))],
                                 [numpy_helper.from_array(w, "W")])).run(None, {"X": x})[0].shape
    z = rng.standard_normal(y_shape).astype(np.float32)
    want = session(ref).run(None, {"X": x, "Z": z})[0]
    got = session(ours, isa=isa).run(None, {"X": x, "Z": z})[0]
    assert_close(got, want, f"{case_name} {path} {activation or 'no activation'} bias={bias} on {isa}")


@pytest.mark.parametrize("z_shape", [(1, 20, 9, 9), (1, 20, 9, 10, 1), (1, 1, 9, 10)])
def test_a_z_of_another_shape_is_a_clear_error(z_shape):
    # ONNX's Add would broadcast the last one; Z does not.
    rng = np.random.default_rng(0)
    w = rng.standard_normal((20, 12, 3, 3)).astype(np.float32)
    ours, _ = _pair(CASES["3x3"], w, None, [None] * len(z_shape), "Relu")
    x = rng.standard_normal((1, 12, 9, 10)).astype(np.float32)
    with pytest.raises(Exception, match=r"Z must have the output's shape \[1, 20, 9, 10\]"):
        session(ours).run(None, {"X": x, "Z": np.zeros(z_shape, np.float32)})


def test_a_z_of_another_shape_is_an_error_when_the_output_is_empty_too():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((20, 12, 3, 3)).astype(np.float32)
    ours, _ = _pair(CASES["3x3"], w, None, [None] * 4, "Relu")
    x = np.zeros((0, 12, 9, 10), np.float32)
    with pytest.raises(Exception, match=r"Z must have the output's shape \[0, 20, 9, 10\]"):
        session(ours).run(None, {"X": x, "Z": np.zeros((1, 20, 9, 10), np.float32)})
    got = session(ours).run(None, {"X": x, "Z": np.zeros((0, 20, 9, 10), np.float32)})[0]
    assert got.shape == (0, 20, 9, 10)


# ------------------------------------------------------------------ the pass, on every technique

OPS = {"falcon": "SparseInputConv", "penni": "BasisConv", "cluspa": "ClusteredSparseConv", "tabconv": "LutConv"}
TECHNIQUES = {
    "falcon": dict(select="all"),
    "penni": dict(bases=2),
    "cluspa": dict(),
    "tabconv": dict(),
}


def _run(model, x):
    from onnxcompress.model_io import prepare_for_runtime

    return onnxcompress.InferenceSession(prepare_for_runtime(model)).run(None, {"input": x})[0]


@pytest.mark.parametrize("method", list(TECHNIQUES))
def test_every_technique_fuses_the_residual_adds_and_computes_the_same(method, monkeypatch):
    model, _ = modelgen.two_block_resnet(seed=2, channels=16)
    rng = np.random.default_rng(4)
    feeds = [{"input": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(8)]
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    fused, _ = onnxcompress.optimize(model, method, calib_feeds=feeds, **TECHNIQUES[method])
    monkeypatch.setattr(optimizer, "fusions", lambda: [FuseActivation()])
    plain, _ = onnxcompress.optimize(model, method, calib_feeds=feeds, **TECHNIQUES[method])

    ours = [n for n in fused.graph.node if n.domain == DOMAIN]
    with_z = [n for n in ours if len(n.input) > residual_index(n.op_type) and n.input[residual_index(n.op_type)]]
    assert [n.op_type for n in fused.graph.node].count("Add") == 0 and len(with_z) == 2, \
        [(n.op_type, list(n.input)) for n in fused.graph.node]
    assert [n.op_type for n in plain.graph.node].count("Add") == 2
    # the Relu after each Add went in with it, as the activation applied after Z
    assert all(onnx.helper.get_attribute_value(a) == b"Relu" for n in with_z for a in n.attribute
               if a.name == "activation")
    assert_close(_run(fused, x), _run(plain, x), f"{method}: fused against unfused")
    if method == "falcon":
        import onnxruntime as ort

        want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"input": x})[0]
        assert_close(_run(fused, x), want, "falcon's exact rewrite with Z against the original in ORT")


GEOMETRIES = {  # (C, M, H, W, Conv attributes)
    "3x3": (16, 24, 12, 13, dict(kernel=3, pads=[1, 1, 1, 1])),
    "1x1": (16, 24, 12, 16, dict(kernel=1)),  # cluspa's direct rows: the output grid is the wide grid
    "stride2": (8, 16, 11, 11, dict(kernel=3, pads=[1, 1, 1, 1], strides=[2, 2])),
    "large": (8, 8, 40, 40, dict(kernel=3, pads=[1, 1, 1, 1])),  # many pixel blocks
}


def _layer_with_residual(c, m, h, w, attrs, seed=0):
    """input -> Relu -> Conv -> Add(Z, a second graph input) -> Relu."""
    from onnx import TensorProto

    rng = np.random.default_rng(seed)
    k = attrs.pop("kernel")
    wt = (rng.standard_normal((m, c, k, k)) / np.sqrt(c * k * k)).astype(np.float32)
    inits = [numpy_helper.from_array(wt, "W"), numpy_helper.from_array(rng.standard_normal(m).astype(np.float32), "B")]
    nodes = [helper.make_node("Relu", ["input"], ["r"]), helper.make_node("Conv", ["r", "W", "B"], ["c"], name="conv",
                                                                          **attrs),
             helper.make_node("Add", ["c", "Z"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    s = attrs.get("strides", [1, 1])[0]
    pad = attrs.get("pads", [0] * 4)
    oh, ow = (h + pad[0] + pad[2] - k) // s + 1, (w + pad[1] + pad[3] - k) // s + 1
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, c, h, w]),
                                               helper.make_tensor_value_info("Z", TensorProto.FLOAT, [1, m, oh, ow])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    feed = lambda n: {"input": rng.standard_normal((1, c, h, w)).astype(np.float32),  # noqa: E731
                      "Z": rng.standard_normal((1, m, oh, ow)).astype(np.float32)}
    return model, feed


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("method", list(TECHNIQUES))
def test_each_op_adds_z_in_its_kernels(method, geometry, isa, monkeypatch):
    """One layer, fused (the op's kernels add Z as they store) against unfused (ORT's Add and Relu
    after the op), on every instruction set of this CPU."""
    if method == "penni" and geometry == "1x1":
        pytest.skip("penni's bases are spatial kernels: it leaves a 1x1 Conv alone")
    c, m, h, w, attrs = GEOMETRIES[geometry]
    model, feed = _layer_with_residual(c, m, h, w, dict(attrs))
    feeds = [feed(i) for i in range(8)]
    fused, _ = onnxcompress.optimize(model, method, calib_feeds=feeds, **TECHNIQUES[method])
    monkeypatch.setattr(optimizer, "fusions", lambda: [FuseActivation()])
    plain, _ = onnxcompress.optimize(model, method, calib_feeds=feeds, **TECHNIQUES[method])
    assert [n.op_type for n in fused.graph.node] == ["Relu", OPS[method]]
    assert [n.op_type for n in plain.graph.node] == ["Relu", OPS[method], "Add", "Relu"]
    from onnxcompress.model_io import prepare_for_runtime

    x = feed(1)
    got = session(prepare_for_runtime(fused), isa=isa).run(None, x)[0]
    want = session(prepare_for_runtime(plain), isa=isa).run(None, x)[0]
    assert_close(got, want, f"{method} {geometry} on {isa}: fused against unfused")
    assert (got == 0).any() and (got > 0).any()  # the Relu after Z does something


def _falcon_all(model):
    out, _ = onnxcompress.optimize(model, "falcon", select="all")
    return out


def _unfused(model):
    """falcon on every Conv, nothing fused yet."""
    from onnxcompress.passes import PassManager, canonicalize
    from onnxcompress.passes.falcon import FalconRewrite

    out, _ = PassManager(canonicalize() + [FalconRewrite(select="all")]).run(model, PassContext())
    return out


def _fuse(model):
    from onnxcompress.passes import PassManager
    from onnxcompress.passes.base import CONV_REWRITTEN

    out, _ = PassManager(fusions() + [EliminateDeadCode()], provided=frozenset({CONV_REWRITTEN})).run(
        model, PassContext())
    return out


def _adds(model):
    return [n for n in model.graph.node if n.op_type == "Add"]


def test_an_activation_already_fused_blocks_the_residual():
    # conv -> Relu -> Add: relu(conv) + z is not relu(conv + z)
    b = modelgen.Builder(0)
    x = b.relu(b.conv("input", 3, 8, pads=[1, 1, 1, 1]))
    y = b.relu(b.conv(x, 8, 8, pads=[1, 1, 1, 1]))
    model = b.model(["N", 3, 8, 8], [b.op("Add", [x, y])])
    out = _fuse(_unfused(model))
    assert len(_adds(out)) == 1
    assert all(len(n.input) <= 3 for n in out.graph.node if n.domain == DOMAIN)


def test_a_constant_or_broadcast_addend_is_left_alone():
    b = modelgen.Builder(0)
    x = b.relu(b.conv("input", 3, 8, pads=[1, 1, 1, 1]))
    y1 = b.op("Add", [b.conv(x, 8, 8, pads=[1, 1, 1, 1]), b.const(np.ones((1, 8, 1, 1), np.float32))])
    small = b.op("GlobalAveragePool", [x])  # [N, 8, 1, 1]: Add broadcasts it
    y2 = b.op("Add", [b.conv(x, 8, 8, pads=[1, 1, 1, 1]), small])
    model = b.model(["N", 3, 8, 8], [y1, y2])
    out = _fuse(_unfused(model))
    assert len(_adds(out)) == 2


def test_an_output_read_twice_is_left_alone():
    b = modelgen.Builder(0)
    x = b.relu(b.conv("input", 3, 8, pads=[1, 1, 1, 1]))
    c = b.conv(x, 8, 8, pads=[1, 1, 1, 1])
    model = b.model(["N", 3, 8, 8], [b.op("Add", [c, x]), b.op("Relu", [c])])
    out = _fuse(_unfused(model))
    assert len(_adds(out)) == 1


def test_fused_model_passes_the_checker_and_runs():
    model = modelgen.small_resnet(seed=1)
    out = _falcon_all(model)
    onnx.checker.check_model(out)
    x = np.random.default_rng(2).standard_normal((2, 3, 16, 16)).astype(np.float32)
    import onnxruntime as ort

    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0]
    assert_close(_run(out, x), want, "small_resnet, falcon on every Conv, residual fused")
    assert not _adds(out)
