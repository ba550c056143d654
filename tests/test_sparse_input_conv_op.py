"""ai.onnxcompress.SparseInputConv against ONNX Runtime's own Conv.

Every geometry runs both paths (dense_below_zero_fraction 0.0 = always
sparse, 1.01 = always dense), dense / 70 %-sparse / all-zero inputs, and each
instruction set of this CPU (ONNXCOMPRESS_ISA is read at session creation).
"""

from __future__ import annotations


import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from ophelpers import DOMAIN, ISAS, assert_rejected, creation_error, act_attrs, assert_close, assert_malformed_nodes_fail_cleanly, conv_attrs, make_model, reference_model, session  # noqa: E402

def ours_model(case, w, b, **extra) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(w, "W")]
    inputs = ["X", "W"]
    if b is not None:
        inits.append(numpy_helper.from_array(b, "B"))
        inputs.append("B")
    attrs = conv_attrs(case)
    attrs.update(extra)
    node = helper.make_node("SparseInputConv", inputs, ["Y"], domain=DOMAIN, **attrs)
    return make_model([node], inits)


# (name, N, C, H, W, M, kh, kw, extra attributes)
CASES = [
    ("3x3_pad1", 1, 16, 9, 11, 24, 3, 3, {"pads": [1, 1, 1, 1]}),
    ("3x3_stride2", 1, 8, 10, 9, 16, 3, 3, {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    ("3x3_asym_pads", 1, 8, 9, 9, 12, 3, 3, {"pads": [0, 1, 2, 1]}),
    ("same_upper_s2", 1, 6, 8, 8, 10, 3, 3, {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ("same_lower_s2", 1, 6, 8, 8, 10, 3, 3, {"auto_pad": "SAME_LOWER", "strides": [2, 2]}),
    ("same_upper_4x4", 1, 6, 7, 9, 10, 4, 4, {"auto_pad": "SAME_UPPER"}),
    ("same_lower_4x4", 1, 6, 7, 9, 10, 4, 4, {"auto_pad": "SAME_LOWER"}),
    ("valid", 1, 5, 9, 9, 7, 3, 3, {"auto_pad": "VALID"}),
    ("dilation2", 1, 8, 12, 12, 8, 3, 3, {"pads": [2, 2, 2, 2], "dilations": [2, 2]}),
    ("group2", 1, 8, 9, 9, 12, 3, 3, {"pads": [1, 1, 1, 1], "group": 2}),
    ("depthwise", 1, 16, 9, 9, 16, 3, 3, {"pads": [1, 1, 1, 1], "group": 16}),
    ("depthwise_x2", 1, 16, 8, 8, 32, 3, 3, {"pads": [1, 1, 1, 1], "group": 16, "strides": [2, 2]}),
    ("no_bias", 1, 8, 7, 7, 8, 3, 3, {"pads": [1, 1, 1, 1], "no_bias": True}),
    ("1x1", 1, 32, 7, 7, 48, 1, 1, {}),
    ("1x1_stride2", 1, 16, 9, 9, 24, 1, 1, {"strides": [2, 2]}),
    ("5x5", 1, 8, 11, 11, 12, 5, 5, {"pads": [2, 2, 2, 2]}),
    ("1x3", 1, 8, 6, 10, 8, 1, 3, {"pads": [0, 1, 0, 1]}),
    ("2x3_mixed", 1, 7, 13, 12, 9, 2, 3, {"pads": [1, 0, 0, 2], "strides": [2, 1], "dilations": [2, 3]}),
    ("batch2", 2, 16, 8, 8, 20, 3, 3, {"pads": [1, 1, 1, 1]}),
    ("3to5", 1, 3, 10, 10, 5, 3, 3, {"pads": [1, 1, 1, 1]}),
    ("17to33", 1, 17, 9, 9, 33, 3, 3, {"pads": [1, 1, 1, 1]}),
    ("many_blocks", 1, 150, 5, 5, 130, 3, 3, {"pads": [1, 1, 1, 1]}),
    ("many_pixels", 1, 8, 20, 23, 8, 3, 3, {"pads": [1, 1, 1, 1]}),
    ("relu", 1, 16, 8, 8, 16, 3, 3, {"pads": [1, 1, 1, 1], "activation": "Relu"}),
    ("clip", 1, 16, 8, 8, 16, 3, 3, {"pads": [1, 1, 1, 1], "activation": "Clip", "clip_min": -0.5,
                                      "clip_max": 0.7}),
]


def build_case(case_tuple, seed=0):
    name, n, c, h, w_, m, kh, kw, extra = case_tuple
    rng = np.random.default_rng(seed)
    case = dict(extra)
    group = case.get("group", 1)
    w = (rng.standard_normal((m, c // group, kh, kw)) / np.sqrt(c // group * kh * kw)).astype(np.float32)
    b = None if case.pop("no_bias", False) else rng.standard_normal(m).astype(np.float32)
    dense = rng.standard_normal((n, c, h, w_)).astype(np.float32)
    sparse = rng.standard_normal((n, c, h, w_)).astype(np.float32)
    sparse[rng.random(sparse.shape) < 0.7] = 0.0
    inputs = {"dense": dense, "sparse70": sparse, "zeros": np.zeros_like(dense)}
    return case, w, b, inputs


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case_tuple", CASES, ids=[c[0] for c in CASES])
def test_matches_ort_conv(case_tuple, isa):
    case, w, b, inputs = build_case(case_tuple)
    ref = session(reference_model(case, w, b))
    refs = {k: ref.run(None, {"X": x})[0] for k, x in inputs.items()}
    for path, frac in (("sparse", 0.0), ("dense", 1.01)):
        ours = session(ours_model(case, w, b, dense_below_zero_fraction=frac, **act_attrs(case)), isa)
        for kind, x in inputs.items():
            got = ours.run(None, {"X": x})[0]
            assert got.shape == refs[kind].shape
            assert_close(got, refs[kind], f"{case_tuple[0]} {isa} {path} {kind}")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case_tuple", [CASES[0], CASES[1], CASES[9], CASES[17]], ids=lambda c: c[0])
def test_threshold(case_tuple, isa):
    case, w, b, inputs = build_case(case_tuple, seed=1)
    thr = 0.4
    ref = session(reference_model(case, w, b))
    for frac in (0.0, 1.01, 0.3):
        ours = session(ours_model(case, w, b, threshold=thr, dense_below_zero_fraction=frac), isa)
        for kind, x in inputs.items():
            want = ref.run(None, {"X": np.where(np.abs(x) < thr, 0.0, x).astype(np.float32)})[0]
            assert_close(ours.run(None, {"X": x})[0], want, f"threshold {case_tuple[0]} {isa} {frac} {kind}")


def test_automatic_choice_and_threads():
    case, w, b, inputs = build_case(CASES[0], seed=2)
    ref = session(reference_model(case, w, b))
    for threads in (1, 2):
        ours = session(ours_model(case, w, b), threads=threads)  # default dense_below_zero_fraction
        for x in inputs.values():
            assert_close(ours.run(None, {"X": x})[0], ref.run(None, {"X": x})[0], f"auto threads={threads}")


def test_huge_pads_fallback():
    # The padded copy would be far larger than the input: ORT's Conv fallback.
    case = {"pads": [600, 700, 600, 700], "strides": [64, 64]}
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    x = rng.standard_normal((1, 3, 5, 6)).astype(np.float32)
    want = session(reference_model(case, w, b)).run(None, {"X": x})[0]
    got = session(ours_model(case, w, b, threshold=0.0)).run(None, {"X": x})[0]
    assert_close(got, want, "huge pads")
    xt = np.where(np.abs(x) < 0.5, 0.0, x).astype(np.float32)
    want = session(reference_model(case, w, b)).run(None, {"X": xt})[0]
    got = session(ours_model(case, w, b, threshold=0.5)).run(None, {"X": x})[0]
    assert_close(got, want, "huge pads, threshold")


def test_unknown_isa_is_an_error():
    case, w, b, _ = build_case(CASES[0])
    with pytest.raises(Exception, match="ONNXCOMPRESS_ISA"):
        session(ours_model(case, w, b), isa="sse9")


# ---------------------------------------------------------------- malformed nodes

def _w(m=4, c=3, kh=3, kw=3):
    return np.ones((m, c, kh, kw), np.float32)


def _node_model(attrs=None, w=None, b=None, w_as_input=False, inputs=None):
    w = _w() if w is None else w
    inits = [] if w_as_input else [numpy_helper.from_array(w, "W")]
    names = ["X", "W"]
    if b is not None:
        inits.append(numpy_helper.from_array(b, "B"))
        names.append("B")
    node = helper.make_node("SparseInputConv", inputs or names, ["Y"], domain=DOMAIN, **(attrs or {}))
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", "C", "H", "W"])]
    if w_as_input:
        graph_inputs.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, list(w.shape)))
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "g", graph_inputs, [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    model.ir_version = 9
    return model


MALFORMED = {
    "w_not_initializer": dict(w_as_input=True),
    "w_rank3": dict(w=np.ones((4, 3, 3), np.float32)),
    "b_wrong_shape": dict(b=np.ones(5, np.float32)),
    "b_rank2": dict(b=np.ones((4, 1), np.float32)),
    "group_not_dividing": dict(attrs={"group": 3}),
    "pads_count": dict(attrs={"pads": [1, 1]}),
    "negative_pads": dict(attrs={"pads": [-1, 0, 0, 0]}),
    "stride0": dict(attrs={"strides": [0, 1]}),
    "negative_dilation": dict(attrs={"dilations": [1, -2]}),
    "kernel_shape_mismatch": dict(attrs={"kernel_shape": [5, 5]}),
    "unknown_activation": dict(attrs={"activation": "Gelu"}),
    "clip_min_above_max": dict(attrs={"activation": "Clip", "clip_min": 2.0, "clip_max": 1.0}),
    "negative_threshold": dict(attrs={"threshold": -0.1}),
    "unknown_auto_pad": dict(attrs={"auto_pad": "FULL"}),
    "pads_with_auto_pad": dict(attrs={"auto_pad": "SAME_UPPER", "pads": [1, 1, 1, 1]}),
    "too_many_inputs": dict(inputs=["X", "W", "W", "W", "W"]),  # one past Z
    "threshold_as_int": dict(attrs={"threshold": 1}),
    "pads_as_floats": dict(attrs={"pads": [1.0, 1.0, 1.0, 1.0]}),
    "activation_as_int": dict(attrs={"activation": 1}),
}


OP = "SparseInputConv"
# Caught by ONNX Runtime's own graph check (input count or element type the op declares)
# before our kernel sees the node; every other case must fail in our validation.
REJECTED_BY_ORT = {'too_many_inputs'}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_node_is_a_validation_error_at_session_creation(name):
    model = _node_model(**dict(MALFORMED[name]))  # the bad node itself must build
    assert_rejected(creation_error(model), OP, name in REJECTED_BY_ORT)


@pytest.mark.parametrize("x_shape", [(1, 5, 6, 6), (1, 3, 2, 2), (1, 3, 6), (0, 3, 6, 6)])
def test_bad_runtime_input(x_shape):
    model = _node_model()
    s = session(model)
    x = np.ones(x_shape, np.float32)
    if x_shape[0] == 0:  # an empty batch is fine
        assert s.run(None, {"X": x})[0].shape == (0, 4, 4, 4)
        return
    with pytest.raises(Exception, match=f"{OP}|Invalid rank for input: X"):  # our kernel's error, or ORT's rank check
        s.run(None, {"X": x})


def test_malformed_nodes_do_not_crash_the_process():
    """Every malformed node in a fresh interpreter: a crash (not an exception) would show as an exit code."""
    assert_malformed_nodes_fail_cleanly("test_sparse_input_conv_op")
