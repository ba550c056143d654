"""ai.onnxcompress.QLinearBasisMaps against ONNX Runtime's own QLinearConv: the op's
Y[:, m*C + c] = X[:, c] (*) W[m*C + c] must equal QLinearConv on Concat([X] * d) with
group = M, bit for bit, for every geometry, both layouts (channels first and last), each
instruction set of this CPU, per-channel and per-tensor weight scales, with and without
bias; and malformed nodes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from ophelpers import DOMAIN, ISAS_VNNI, assert_malformed_nodes_fail_cleanly, assert_rejected, conv_attrs, creation_error, session  # noqa: E402

OP = "QLinearBasisMaps"
NAMES = ["X", "x_scale", "x_zero_point", "W", "w_scale", "w_zero_point", "y_scale", "y_zero_point", "B"]


def _model(op, domain, case, params, with_bias, channels_last=0):
    """Our op (domain DOMAIN) on X, or (domain "") ORT's QLinearConv on Concat([X] * d) with group = M."""
    inits = [numpy_helper.from_array(v, k) for k, v in params.items() if k != "X" and (k != "B" or with_bias)]
    names = NAMES if with_bias else NAMES[:8]
    attrs = conv_attrs(case)
    attrs.pop("group", None)
    nodes = []
    if domain:
        if channels_last:
            attrs["channels_last"] = 1
        nodes.append(helper.make_node(op, names, ["Y"], domain=domain, **attrs))
    else:
        m = params["W"].shape[0]
        d = m // case["channels"]
        nodes.append(helper.make_node("Concat", ["X"] * d, ["Xt"], axis=1))
        nodes.append(helper.make_node(op, ["Xt"] + names[1:], ["Y"], group=m, **attrs))
    x = helper.make_tensor_value_info("X", TensorProto.UINT8, ["N", "C", "H", "W"])
    y = helper.make_tensor_value_info("Y", TensorProto.UINT8, None)
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    model.ir_version = 9
    return model


def build_case(case_tuple, seed=0, per_channel=True):
    _, n, c, h, w, d, k, extra = case_tuple
    kh, kw = k if isinstance(k, tuple) else (k, k)
    rng = np.random.default_rng(seed)
    m = c * d
    case = {"pads": [kh // 2, kw // 2, kh // 2, kw // 2], **extra, "channels": c}
    params = {
        "x_scale": np.float32(rng.uniform(0.005, 0.05)),
        "x_zero_point": np.uint8(rng.integers(0, 256)),
        "W": rng.integers(-128, 128, (m, 1, kh, kw)).astype(np.int8),
        "w_scale": (rng.uniform(0.001, 0.02, m) if per_channel else rng.uniform(0.001, 0.02, 1)).astype(np.float32),
        "w_zero_point": np.zeros(m if per_channel else 1, np.int8),
        "y_scale": np.float32(rng.uniform(0.02, 0.3)),
        "y_zero_point": np.uint8(rng.integers(0, 256)),
        "B": rng.integers(-3000, 3000, m).astype(np.int32),
    }
    x = rng.integers(0, 256, (n, c, h, w)).astype(np.uint8)
    return case, params, x


# (name, N, C, H, W, d, k, extra attributes)
CASES = [
    ("3x3_d3", 1, 16, 14, 14, 3, 3, {}),
    ("3x3_d1", 1, 8, 9, 11, 1, 3, {}),
    ("3x3_d2_wide", 1, 4, 6, 150, 2, 3, {}),
    ("3x3_d3_stride2", 1, 8, 15, 14, 3, 3, {"strides": [2, 2]}),
    ("3x3_stride_2x1", 2, 5, 9, 9, 2, 3, {"strides": [2, 1]}),
    ("5x5_d4_dil2", 1, 6, 13, 12, 4, 5, {"pads": [4, 4, 4, 4], "dilations": [2, 2]}),
    ("asym_pads", 1, 3, 8, 8, 3, 3, {"pads": [0, 2, 1, 0]}),
    ("valid", 2, 3, 8, 7, 2, 3, {"pads": [0, 0, 0, 0]}),
    ("same_upper_s2", 1, 4, 9, 9, 3, 3, {"pads": None, "auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ("1x1_d5", 1, 7, 5, 5, 5, 1, {}),
    # the VNNI row path's cases: kernel rows of 1-4 taps, kh at run time, dilation, many channels
    ("3x3_d3_c40_dil2", 1, 40, 11, 13, 3, 3, {"pads": [2, 2, 2, 2], "dilations": [2, 2]}),
    ("5x3_d2", 2, 17, 9, 8, 2, (5, 3), {}),
    ("2x4_d6_s2", 1, 33, 10, 12, 6, (2, 4), {"strides": [2, 2], "pads": [1, 2, 0, 1]}),
    ("1x3_d2_c64", 1, 64, 7, 9, 2, (1, 3), {}),
    # the kernel's span (7 rows) taller than the input (4): the row ring holds every input row
    ("3x3_dil3_short", 2, 16, 4, 9, 2, 3, {"pads": [3, 3, 3, 3], "dilations": [3, 3]}),
    # channels last, no column whose kernel lies inside the input (every pixel a border pixel),
    # and a single inner column after three border columns
    ("3x5_wider_than_input", 1, 8, 6, 3, 2, (3, 5), {"pads": [1, 2, 1, 2]}),
    ("3x3_one_inner_column", 1, 9, 5, 5, 3, 3, {"pads": [1, 3, 1, 0], "dilations": [1, 2]}),
]


def _case(t):
    case, params, x = build_case(t)
    if case.get("pads") is None:
        del case["pads"]
    return case, params, x


def _run_both(case, params, x, with_bias, isa=None, threads=2, channels_last=0):
    want = session(_model("QLinearConv", "", case, params, with_bias)).run(None, {"X": x})[0]
    ours = session(_model(OP, DOMAIN, case, params, with_bias, channels_last), isa, threads)
    if channels_last:
        got = ours.run(None, {"X": np.ascontiguousarray(x.transpose(0, 2, 3, 1))})[0].transpose(0, 3, 1, 2)
    else:
        got = ours.run(None, {"X": x})[0]
    return got, want


@pytest.mark.parametrize("channels_last", [0, 1])
@pytest.mark.parametrize("isa", ISAS_VNNI)
@pytest.mark.parametrize("case_tuple", CASES, ids=[c[0] for c in CASES])
def test_matches_ort_qlinearconv_bit_for_bit(case_tuple, isa, channels_last):
    case, params, x = _case(case_tuple)
    for with_bias in (True, False):
        got, want = _run_both(case, params, x, with_bias, isa, channels_last=channels_last)
        assert got.dtype == np.uint8 and got.shape == want.shape
        np.testing.assert_array_equal(got, want, err_msg=f"{case_tuple[0]} {isa} bias={with_bias}")


def test_per_tensor_weight_scale_and_threads():
    case, params, x = build_case(CASES[0], seed=5, per_channel=False)
    for threads in (1, 2, 3):
        for channels_last in (0, 1):
            got, want = _run_both(case, params, x, True, threads=threads, channels_last=channels_last)
            np.testing.assert_array_equal(got, want, err_msg=f"threads={threads} channels_last={channels_last}")


def test_saturates_at_both_ends():
    """Large sums clamp to 0 and 255 exactly as QLinearConv does."""
    case, params, x = build_case(CASES[0], seed=6)
    params["y_scale"] = np.float32(1e-4)
    for channels_last in (0, 1):
        got, want = _run_both(case, params, x, True, channels_last=channels_last)
        assert (got == 0).any() and (got == 255).any()
        np.testing.assert_array_equal(got, want)


def test_output_order_is_basis_major():
    """Output m*C + c is input channel c's m-th map (docs/ops.md)."""
    case, params, x = build_case(("order", 1, 3, 6, 6, 2, 3, {}), seed=7)
    params["W"][:] = 0
    params["W"][4, 0, 1, 1] = 1  # output 4 = 1*C + 1: channel 1's centre tap
    params["B"][:] = 0
    params.update(x_scale=np.float32(1.0), w_scale=np.ones(6, np.float32), y_scale=np.float32(1.0),
                  x_zero_point=np.uint8(0), y_zero_point=np.uint8(0))
    got = session(_model(OP, DOMAIN, case, params, True)).run(None, {"X": x})[0]
    np.testing.assert_array_equal(got[0, 4], x[0, 1])
    assert np.all(got[0, :4] == 0) and np.all(got[0, 5] == 0)


def test_huge_pads_direct_path():
    case, params, x = build_case(("huge", 1, 2, 5, 6, 2, 3, {}), seed=8)
    case.update(pads=[600, 700, 600, 700], strides=[64, 64])
    for channels_last in (0, 1):
        got, want = _run_both(case, params, x, True, channels_last=channels_last)
        np.testing.assert_array_equal(got, want)


def test_channels_last_kernel_too_large_for_float_sums():
    """23x23 = 529 taps: past the exact float sums of the channels-last path (514), through planes."""
    case, params, x = build_case(("big", 1, 3, 30, 27, 2, 23, {}), seed=9)
    got, want = _run_both(case, params, x, True, channels_last=1)
    np.testing.assert_array_equal(got, want)


def test_channels_last_bias_too_large_for_float_sums():
    """A bias past 2^24 would round as a float: channels last must take exact sums (through planes).

    Even outputs: B = 128.5 * 2^17 + 1 and one tap adding 1, so the int32 sum is 128.5 * 2^17 + 2
    (a float exactly); with x_scale = w_scale = 1 and y_scale = 2^17 QLinearConv gives
    round(128.5000153) = 129. Float sums started from float(B) = 128.5 * 2^17 would add the 1 and
    round back to 128.5 * 2^17 (half to even): 128."""
    case, params, x = build_case(CASES[0], seed=10)
    m = params["W"].shape[0]
    big = int(128.5 * 2**17) + 1
    assert big > 2**24 and np.float32(big) == 128.5 * 2**17 and np.float32(big + 1) == big + 1
    w = np.zeros_like(params["W"])
    w[0::2, 0, 1, 1] = 1  # the centre tap of the even outputs
    params.update(W=w, w_scale=np.ones(m, np.float32), x_scale=np.float32(1.0), x_zero_point=np.uint8(0),
                  y_scale=np.float32(2**17), y_zero_point=np.uint8(0),
                  B=np.where(np.arange(m) % 2 == 0, big, 3 * 2**17).astype(np.int32))
    x = np.ones_like(x)
    got, want = _run_both(case, params, x, True, channels_last=1)
    assert np.all(want[:, 0::2] == 129) and np.all(want[:, 1::2] == 3)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("channels_last", [0, 1])
def test_onnx_shape_inference_and_checker(channels_last):
    import onnxcompress.schemas as schemas

    schemas.register_schemas()
    case, params, _ = build_case(CASES[3])
    model = _model(OP, DOMAIN, case, params, True, channels_last)
    x_dims = ["N", 15, 14, 8] if channels_last else ["N", 8, 15, 14]
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("X", TensorProto.UINT8, x_dims))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("Y", TensorProto.UINT8, ["N", "A", "B", "D"]))
    onnx.checker.check_model(model, full_check=True)
    model.graph.output[0].type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    out = inferred.graph.output[0].type.tensor_type
    assert out.elem_type == TensorProto.UINT8
    want = ["N", 8, 7, 24] if channels_last else ["N", 24, 8, 7]
    assert [d.dim_value or d.dim_param for d in out.shape.dim] == want


def test_unknown_isa_is_an_error():
    case, params, _ = build_case(CASES[0])
    with pytest.raises(Exception, match="ONNXCOMPRESS_ISA"):
        session(_model(OP, DOMAIN, case, params, True), isa="sse9")


# ---------------------------------------------------------------- malformed nodes

def _node_model(attrs=None, as_input=None, inputs=None, **overrides):
    params = {
        "x_scale": np.float32(0.02), "x_zero_point": np.uint8(3),
        "W": np.ones((6, 1, 3, 3), np.int8), "w_scale": np.full(6, 0.01, np.float32),
        "w_zero_point": np.zeros(6, np.int8), "y_scale": np.float32(0.1), "y_zero_point": np.uint8(7),
        "B": np.zeros(6, np.int32),
    }
    params.update(overrides)
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in params.items() if k != as_input]
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.UINT8, ["N", "C", "H", "W"])]
    if as_input:
        v = np.asarray(params[as_input])
        graph_inputs.append(helper.make_tensor_value_info(as_input, helper.np_dtype_to_tensor_dtype(v.dtype),
                                                          list(v.shape)))
    node = helper.make_node(OP, inputs or NAMES, ["Y"], domain=DOMAIN, **{"pads": [1, 1, 1, 1], **(attrs or {})})
    y = helper.make_tensor_value_info("Y", TensorProto.UINT8, None)
    graph = helper.make_graph([node], "g", graph_inputs, [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    model.ir_version = 9
    return model


MALFORMED = {
    "w_not_initializer": dict(as_input="W"),
    "x_scale_not_initializer": dict(as_input="x_scale"),
    "w_rank3": dict(W=np.ones((6, 3, 3), np.int8)),
    "w_not_depthwise": dict(W=np.ones((6, 2, 3, 3), np.int8)),
    "w_uint8": dict(W=np.ones((6, 1, 3, 3), np.uint8)),
    "w_empty": dict(W=np.ones((0, 1, 3, 3), np.int8), w_scale=np.ones(0, np.float32),
                    w_zero_point=np.zeros(0, np.int8), B=np.zeros(0, np.int32)),
    "group_given": dict(attrs={"group": 3}),
    "channels_last_2": dict(attrs={"channels_last": 2}),
    "w_scale_count": dict(w_scale=np.full(5, 0.01, np.float32)),
    "w_scale_zero": dict(w_scale=np.zeros(6, np.float32)),
    "w_scale_nan": dict(w_scale=np.full(6, np.nan, np.float32)),
    "x_scale_negative": dict(x_scale=np.float32(-1.0)),
    "x_scale_two": dict(x_scale=np.ones(2, np.float32)),
    "y_scale_inf": dict(y_scale=np.float32(np.inf)),
    "scale_overflow": dict(x_scale=np.float32(3e38), y_scale=np.float32(1e-30)),
    "w_zero_point_nonzero": dict(w_zero_point=np.ones(6, np.int8)),
    "w_zero_point_count": dict(w_zero_point=np.zeros(4, np.int8)),
    "x_zero_point_int8": dict(x_zero_point=np.int8(0)),
    "b_wrong_shape": dict(B=np.zeros(5, np.int32)),
    "b_float": dict(B=np.zeros(6, np.float32)),
    "b_huge": dict(B=np.full(6, 2**30 + 5, np.int32)),
    "huge_kernel": dict(W=np.ones((3, 1, 200, 200), np.int8), w_scale=np.full(3, 0.01, np.float32),
                        w_zero_point=np.zeros(3, np.int8), B=np.zeros(3, np.int32)),
    "pads_count": dict(attrs={"pads": [1, 1]}),
    "negative_pads": dict(attrs={"pads": [-1, 0, 0, 0]}),
    "stride0": dict(attrs={"strides": [0, 1]}),
    "kernel_shape_mismatch": dict(attrs={"kernel_shape": [5, 5]}),
    "unknown_auto_pad": dict(attrs={"auto_pad": "FULL"}),
    "fused_activation": dict(attrs={"activation": "Relu"}),
    "too_few_inputs": dict(inputs=NAMES[:6]),
    "too_many_inputs": dict(inputs=NAMES + ["B"]),
}
# Caught by ONNX Runtime's own graph check (input count or element type the op declares)
# before our kernel sees the node; every other case must fail in our validation.
REJECTED_BY_ORT = {"w_uint8", "x_zero_point_int8", "b_float", "too_few_inputs", "too_many_inputs"}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_node_is_a_validation_error_at_session_creation(name):
    model = _node_model(**dict(MALFORMED[name]))  # the bad node itself must build
    assert_rejected(creation_error(model), OP, name in REJECTED_BY_ORT)


@pytest.mark.parametrize("x_shape", [(1, 4, 6, 6), (1, 7, 6, 6), (1, 3, 6), (0, 3, 6, 6)])
def test_bad_runtime_input(x_shape):
    """X's channels must divide W's 6 outputs."""
    s = session(_node_model())
    x = np.ones(x_shape, np.uint8)
    if x_shape[0] == 0:  # an empty batch is fine
        assert s.run(None, {"X": x})[0].shape == (0, 6, 6, 6)
        return
    with pytest.raises(Exception, match=f"{OP}|Invalid rank for input: X"):
        s.run(None, {"X": x})


def test_malformed_nodes_do_not_crash_the_process():
    """Every malformed node in a fresh interpreter: a crash (not an exception) would show as an exit code."""
    assert_malformed_nodes_fail_cleanly("test_qlinear_basis_maps_op")


@pytest.mark.parametrize("channels_last", [0, 1])
def test_ort_shape_inference_keeps_symbolic_dims(channels_last):
    """ORT's own view of the output: the batch dim keeps its name, an uncomputable one gets a fresh
    name (never a -1 size, never a lost shape: ORT's layout transformers need the rank)."""
    case, params, x = build_case(CASES[0])
    model = _model(OP, DOMAIN, case, params, True, channels_last)
    dims = ["N", "H", 14, 16] if channels_last else ["N", 16, "H", 14]
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("X", TensorProto.UINT8, dims))
    shape = session(model).get_outputs()[0].shape
    if channels_last:
        assert shape[0] == "N" and isinstance(shape[1], str) and shape[1] != "H" and shape[2:] == [14, 48]
    else:
        assert shape[0] == "N" and shape[1] == 48 and isinstance(shape[2], str) and shape[3] == 14


def test_symbolic_batch_survives_for_the_float_ops_too():
    import test_penni_op as penni

    c, bases, coefs, b, _ = penni.build_case(penni.CASES[0])
    model = penni.ours_model(c, bases, coefs, b)
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 16, 20, 22]))
    assert session(model).get_outputs()[0].shape == ["batch", 24, 20, 22]
