"""ai.onnxcompress.BasisConv against ONNX Runtime's own Conv on the equivalent dense weights
W[o, c] = sum_b Coefs[o, c*d + b] * Bases[b], for every geometry, both execution modes
(fused: many tiles; two-phase: few), each instruction set of this CPU, and malformed nodes."""

from __future__ import annotations


import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from ophelpers import DOMAIN, ISAS, assert_rejected, creation_error, act_attrs, assert_malformed_nodes_fail_cleanly, conv_attrs, make_model, reference_model, session  # noqa: E402

def compose(bases, coefs):
    d, kh, kw = bases.shape
    m = coefs.shape[0]
    return np.einsum("ocb,bk->ock", coefs.reshape(m, -1, d).astype(np.float64),
                     bases.reshape(d, -1).astype(np.float64)).reshape(m, -1, kh, kw).astype(np.float32)


def ours_model(case, bases, coefs, b, **extra) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(bases, "Bases"), numpy_helper.from_array(coefs, "Coefs")]
    inputs = ["X", "Bases", "Coefs"]
    if b is not None:
        inits.append(numpy_helper.from_array(b, "B"))
        inputs.append("B")
    node = helper.make_node("BasisConv", inputs, ["Y"], domain=DOMAIN, **conv_attrs(case), **act_attrs(case),
                            **extra)
    return make_model([node], inits)


# (name, N, C, H, W, M, kh, kw, d, extra attributes)
CASES = [
    ("3x3_pad1_fused", 1, 16, 20, 22, 24, 3, 3, 5, {"pads": [1, 1, 1, 1]}),
    ("3x3_pad1_twophase", 1, 16, 7, 7, 24, 3, 3, 5, {"pads": [1, 1, 1, 1]}),
    ("3x3_stride2", 1, 8, 21, 19, 16, 3, 3, 4, {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    ("3x3_stride2_small", 1, 8, 10, 9, 16, 3, 3, 4, {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    ("3x3_asym_pads", 1, 8, 9, 9, 12, 3, 3, 3, {"pads": [0, 1, 2, 1]}),
    ("same_upper_s2", 1, 6, 8, 8, 10, 3, 3, 4, {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ("same_lower_s2", 1, 6, 8, 8, 10, 3, 3, 4, {"auto_pad": "SAME_LOWER", "strides": [2, 2]}),
    ("same_upper_4x4", 1, 6, 7, 9, 10, 4, 4, 6, {"auto_pad": "SAME_UPPER"}),
    ("same_lower_4x4", 1, 6, 7, 9, 10, 4, 4, 6, {"auto_pad": "SAME_LOWER"}),
    ("valid", 1, 5, 9, 9, 7, 3, 3, 2, {"auto_pad": "VALID"}),
    ("dilation2", 1, 8, 12, 12, 8, 3, 3, 5, {"pads": [2, 2, 2, 2], "dilations": [2, 2]}),
    ("group2", 1, 8, 9, 9, 12, 3, 3, 4, {"pads": [1, 1, 1, 1], "group": 2}),
    ("group2_fused", 1, 8, 24, 24, 12, 3, 3, 4, {"pads": [1, 1, 1, 1], "group": 2}),
    ("depthwise", 1, 16, 9, 9, 16, 3, 3, 2, {"pads": [1, 1, 1, 1], "group": 16}),
    ("depthwise_x2_s2", 1, 16, 8, 8, 32, 3, 3, 3, {"pads": [1, 1, 1, 1], "group": 16, "strides": [2, 2]}),
    ("no_bias", 1, 8, 7, 7, 8, 3, 3, 4, {"pads": [1, 1, 1, 1], "no_bias": True}),
    ("1x1", 1, 32, 7, 7, 48, 1, 1, 1, {}),
    ("5x5", 1, 8, 11, 11, 12, 5, 5, 6, {"pads": [2, 2, 2, 2]}),
    ("1x3", 1, 8, 6, 10, 8, 1, 3, 2, {"pads": [0, 1, 0, 1]}),
    ("2x3_mixed", 1, 7, 13, 12, 9, 2, 3, 3, {"pads": [1, 0, 0, 2], "strides": [2, 1], "dilations": [2, 3]}),
    ("stride3_dil2", 1, 5, 17, 16, 6, 3, 3, 4, {"pads": [2, 1, 0, 2], "strides": [3, 2], "dilations": [2, 1]}),
    ("batch3", 3, 16, 8, 8, 20, 3, 3, 5, {"pads": [1, 1, 1, 1]}),
    ("many_blocks", 1, 150, 5, 5, 130, 3, 3, 5, {"pads": [1, 1, 1, 1]}),
    ("many_blocks_fused", 1, 100, 20, 20, 33, 3, 3, 5, {"pads": [1, 1, 1, 1]}),
    ("d9_full", 1, 6, 9, 9, 5, 3, 3, 9, {"pads": [1, 1, 1, 1]}),
    ("relu", 1, 16, 8, 8, 16, 3, 3, 4, {"pads": [1, 1, 1, 1], "activation": "Relu"}),
    ("clip", 1, 16, 16, 16, 16, 3, 3, 4, {"pads": [1, 1, 1, 1], "activation": "Clip", "clip_min": -0.5,
                                          "clip_max": 0.7}),
]


def build_case(case_tuple, seed=0, sparsity=0.7):
    name, n, c, h, w_, m, kh, kw, d, extra = case_tuple
    rng = np.random.default_rng(seed)
    case = dict(extra)
    group = case.get("group", 1)
    cg = c // group
    bases = rng.standard_normal((d, kh, kw)).astype(np.float32)
    coefs = (rng.standard_normal((m, cg * d)) / np.sqrt(cg * d)).astype(np.float32)
    coefs[rng.random(coefs.shape) < sparsity] = 0.0
    coefs[m // 2] = 0.0                       # an output channel with no coefficient: bias only
    if cg > 2:
        coefs[:, d:2 * d] = 0.0               # an input channel no output reads
    b = None if case.pop("no_bias", False) else rng.standard_normal(m).astype(np.float32)
    x = rng.standard_normal((n, c, h, w_)).astype(np.float32)
    return case, bases, coefs, b, x


def assert_close(got, want, what):
    scale = float(np.abs(want).max(initial=0.0)) + 1.0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale, err_msg=what)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case_tuple", CASES, ids=[c[0] for c in CASES])
def test_matches_ort_conv(case_tuple, isa):
    case, bases, coefs, b, x = build_case(case_tuple)
    want = session(reference_model(case, compose(bases, coefs), b)).run(None, {"X": x})[0]
    got = session(ours_model(case, bases, coefs, b), isa).run(None, {"X": x})[0]
    assert got.shape == want.shape
    assert_close(got, want, f"{case_tuple[0]} {isa}")


def test_dense_coefficients_and_threads():
    case, bases, coefs, b, x = build_case(CASES[0], seed=1, sparsity=0.0)
    want = session(reference_model(case, compose(bases, coefs), b)).run(None, {"X": x})[0]
    for threads in (1, 2, 3):
        assert_close(session(ours_model(case, bases, coefs, b), threads=threads).run(None, {"X": x})[0], want,
                     f"threads={threads}")


def test_all_coefficients_zero_gives_bias():
    case, bases, coefs, b, x = build_case(CASES[0], seed=2)
    coefs[:] = 0
    got = session(ours_model(case, bases, coefs, b)).run(None, {"X": x})[0]
    np.testing.assert_array_equal(got, np.broadcast_to(b[None, :, None, None], got.shape))


def test_channel_order_is_channel_major():
    """Coefficient column c*d + b multiplies input channel c convolved with basis b (docs/ops.md)."""
    rng = np.random.default_rng(3)
    c, m, d = 3, 2, 4
    bases = rng.standard_normal((d, 3, 3)).astype(np.float32)
    x = rng.standard_normal((1, c, 6, 6)).astype(np.float32)
    coefs = np.zeros((m, c * d), np.float32)
    coefs[1, 2 * d + 3] = 1.0  # output 1 = channel 2 (*) basis 3
    got = session(ours_model({"pads": [1, 1, 1, 1]}, bases, coefs, None)).run(None, {"X": x})[0]
    w = np.zeros((1, 1, 3, 3), np.float32)
    w[0, 0] = bases[3]
    single = make_model([helper.make_node("Conv", ["X", "W"], ["Y"], pads=[1, 1, 1, 1])],
                        [numpy_helper.from_array(w, "W")])
    want = session(single).run(None, {"X": x[:, 2:3]})[0][:, 0]
    assert_close(got[:, 1], want, "channel order")
    assert np.all(got[:, 0] == 0)


def test_huge_pads_fallback():
    case = {"pads": [600, 700, 600, 700], "strides": [64, 64], "activation": "Relu"}
    case_tuple = ("huge", 1, 3, 5, 6, 4, 3, 3, 3, case)
    case, bases, coefs, b, x = build_case(case_tuple, seed=4)
    want = session(reference_model(case, compose(bases, coefs), b)).run(None, {"X": x})[0]
    got = session(ours_model(case, bases, coefs, b)).run(None, {"X": x})[0]
    assert_close(got, want, "huge pads")


def test_onnx_shape_inference_and_checker():
    import onnxcompress.schemas as schemas

    schemas.register_schemas()
    case, bases, coefs, b, _ = build_case(CASES[2])
    model = ours_model(case, bases, coefs, b)
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 8, 21, 19]))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", "M", "OH", "OW"]))
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    y = next(v for v in list(inferred.graph.value_info) + list(inferred.graph.output) if v.name == "Y")
    model.graph.output[0].type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    dims = [d.dim_value or d.dim_param for d in inferred.graph.output[0].type.tensor_type.shape.dim]
    assert dims == ["N", 16, 11, 10], (dims, y)


def test_unknown_isa_is_an_error():
    case, bases, coefs, b, _ = build_case(CASES[0])
    with pytest.raises(Exception, match="ONNXCOMPRESS_ISA"):
        session(ours_model(case, bases, coefs, b), isa="sse9")


# ---------------------------------------------------------------- malformed nodes

def _node_model(attrs=None, bases=None, coefs=None, b=None, as_input=False, inputs=None):
    bases = np.ones((2, 3, 3), np.float32) if bases is None else bases
    coefs = np.ones((4, 3 * 2), np.float32) if coefs is None else coefs
    inits = [numpy_helper.from_array(coefs, "Coefs")]
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", "C", "H", "W"])]
    if as_input:
        graph_inputs.append(helper.make_tensor_value_info("Bases", TensorProto.FLOAT, list(bases.shape)))
    else:
        inits.append(numpy_helper.from_array(bases, "Bases"))
    names = ["X", "Bases", "Coefs"]
    if b is not None:
        inits.append(numpy_helper.from_array(b, "B"))
        names.append("B")
    node = helper.make_node("BasisConv", inputs or names, ["Y"], domain=DOMAIN, **(attrs or {}))
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "g", graph_inputs, [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    model.ir_version = 9
    return model


MALFORMED = {
    "bases_not_initializer": dict(as_input=True),
    "bases_rank2": dict(bases=np.ones((2, 9), np.float32)),
    "bases_rank4": dict(bases=np.ones((2, 1, 3, 3), np.float32)),
    "bases_empty": dict(bases=np.ones((0, 3, 3), np.float32), coefs=np.ones((4, 0), np.float32)),
    "bases_int": dict(bases=np.ones((2, 3, 3), np.int32)),
    "coefs_rank3": dict(coefs=np.ones((4, 3, 2), np.float32)),
    "coefs_not_multiple_of_d": dict(coefs=np.ones((4, 7), np.float32)),
    "coefs_no_output": dict(coefs=np.ones((0, 6), np.float32)),
    "coefs_double": dict(coefs=np.ones((4, 6), np.float64)),
    "b_wrong_shape": dict(b=np.ones(5, np.float32)),
    "b_rank2": dict(b=np.ones((4, 1), np.float32)),
    "group_not_dividing": dict(attrs={"group": 3}),
    "pads_count": dict(attrs={"pads": [1, 1]}),
    "negative_pads": dict(attrs={"pads": [-1, 0, 0, 0]}),
    "huge_pads": dict(attrs={"pads": [1 << 20, 0, 0, 0]}),
    "stride0": dict(attrs={"strides": [0, 1]}),
    "negative_dilation": dict(attrs={"dilations": [1, -2]}),
    "kernel_shape_mismatch": dict(attrs={"kernel_shape": [5, 5]}),
    "unknown_activation": dict(attrs={"activation": "Gelu"}),
    "clip_min_above_max": dict(attrs={"activation": "Clip", "clip_min": 2.0, "clip_max": 1.0}),
    "unknown_auto_pad": dict(attrs={"auto_pad": "FULL"}),
    "pads_with_auto_pad": dict(attrs={"auto_pad": "SAME_UPPER", "pads": [1, 1, 1, 1]}),
    "too_many_inputs": dict(inputs=["X", "Bases", "Coefs", "Coefs", "Coefs", "Coefs"]),  # one past Z
    "too_few_inputs": dict(inputs=["X", "Bases"]),
}


OP = "BasisConv"
# Caught by ONNX Runtime's own graph check (input count or element type the op declares)
# before our kernel sees the node; every other case must fail in our validation.
REJECTED_BY_ORT = {'bases_int', 'coefs_double', 'too_few_inputs', 'too_many_inputs'}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_node_is_a_validation_error_at_session_creation(name):
    model = _node_model(**dict(MALFORMED[name]))  # the bad node itself must build
    assert_rejected(creation_error(model), OP, name in REJECTED_BY_ORT)


@pytest.mark.parametrize("x_shape", [(1, 5, 6, 6), (1, 3, 2, 2), (1, 3, 6), (0, 3, 6, 6)])
def test_bad_runtime_input(x_shape):
    s = session(_node_model())
    x = np.ones(x_shape, np.float32)
    if x_shape[0] == 0:  # an empty batch is fine
        assert s.run(None, {"X": x})[0].shape == (0, 4, 4, 4)
        return
    with pytest.raises(Exception, match=f"{OP}|Invalid rank for input: X"):  # our kernel's error, or ORT's rank check
        s.run(None, {"X": x})


def test_malformed_nodes_do_not_crash_the_process():
    """Every malformed node in a fresh interpreter: a crash (not an exception) would show as an exit code."""
    assert_malformed_nodes_fail_cleanly("test_penni_op")
