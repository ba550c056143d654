"""ai.onnxcompress.ClusteredSparseConv against ONNX Runtime's own Conv.

The weights of each case take K distinct values (some of them exact zeros), so
the op must equal Conv with the same dense weights to float rounding, over the
attribute grid, for one shared codebook and per-channel codebooks, and on each
instruction set of this CPU. Malformed nodes must be ORT errors at session
creation, never crashes.
"""

from __future__ import annotations


import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcompress.fitting.cluspa import encode_layout
from ophelpers import DOMAIN, ISAS, assert_rejected, creation_error, act_attrs, assert_close, assert_malformed_nodes_fail_cleanly, conv_attrs, make_model, reference_model, session  # noqa: E402

def layout_of(w: np.ndarray, per_channel: bool):
    """(values, counts, indices) whose clusters are exactly the distinct non-zero values of w."""
    m = w.shape[0]
    flat = w.reshape(m, -1)
    if per_channel:
        kv = max(len(np.unique(r[r != 0])) for r in flat)
        values = np.zeros((m, max(kv, 1)), np.float32)
        labels = np.full(flat.shape, -1)
        for o, r in enumerate(flat):
            u = np.unique(r[r != 0])
            values[o, :len(u)] = u
            labels[o] = np.where(r != 0, np.searchsorted(u, r), -1)
    else:
        values = np.unique(flat[flat != 0]).astype(np.float32)
        labels = np.where(flat != 0, np.searchsorted(values, flat), -1)
    return encode_layout(labels, values)


def ours_model(case, w, b, per_channel=False, layout=None, **extra) -> onnx.ModelProto:
    values, counts, indices = layout if layout is not None else layout_of(w, per_channel)
    inits = [numpy_helper.from_array(values, "V"), numpy_helper.from_array(counts, "Cnt"),
             numpy_helper.from_array(indices, "Idx")]
    inputs = ["X", "V", "Cnt", "Idx"]
    if b is not None:
        inits.append(numpy_helper.from_array(b, "B"))
        inputs.append("B")
    attrs = conv_attrs(case)
    attrs.update(extra)
    node = helper.make_node("ClusteredSparseConv", inputs, ["Y"], domain=DOMAIN, weight_shape=list(w.shape), **attrs)
    return make_model([node], inits)


# (name, N, C, H, W, M, kh, kw, extra attributes)
CASES = [
    ("3x3_pad1", 1, 16, 9, 11, 24, 3, 3, {"pads": [1, 1, 1, 1]}),
    ("3x3_stride2", 1, 8, 10, 9, 16, 3, 3, {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    ("3x3_asym_pads", 1, 8, 9, 9, 12, 3, 3, {"pads": [0, 1, 2, 1]}),
    ("same_upper_s2", 1, 6, 8, 8, 10, 3, 3, {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ("same_lower_s2", 1, 6, 8, 8, 10, 3, 3, {"auto_pad": "SAME_LOWER", "strides": [2, 2]}),
    ("same_upper_4x4", 1, 6, 7, 9, 10, 4, 4, {"auto_pad": "SAME_UPPER"}),
    ("valid", 1, 5, 9, 9, 7, 3, 3, {"auto_pad": "VALID"}),
    ("dilation2", 1, 8, 12, 12, 8, 3, 3, {"pads": [2, 2, 2, 2], "dilations": [2, 2]}),
    ("group2", 1, 8, 9, 9, 12, 3, 3, {"pads": [1, 1, 1, 1], "group": 2}),
    ("group3_straddle", 1, 9, 7, 7, 30, 3, 3, {"pads": [1, 1, 1, 1], "group": 3}),
    ("depthwise", 1, 16, 9, 9, 16, 3, 3, {"pads": [1, 1, 1, 1], "group": 16}),
    ("depthwise_x2", 1, 16, 8, 8, 32, 3, 3, {"pads": [1, 1, 1, 1], "group": 16, "strides": [2, 2]}),
    ("no_bias", 1, 8, 7, 7, 8, 3, 3, {"pads": [1, 1, 1, 1], "no_bias": True}),
    ("1x1", 1, 32, 7, 7, 48, 1, 1, {}),
    ("1x1_stride2", 1, 16, 9, 9, 24, 1, 1, {"strides": [2, 2]}),
    ("5x5", 1, 8, 11, 11, 12, 5, 5, {"pads": [2, 2, 2, 2]}),
    ("1x3", 1, 8, 6, 10, 8, 1, 3, {"pads": [0, 1, 0, 1]}),
    ("2x3_mixed", 1, 7, 13, 12, 9, 2, 3, {"pads": [1, 0, 0, 2], "strides": [2, 1], "dilations": [2, 3]}),
    ("stride3_pad_big", 1, 4, 10, 11, 6, 3, 3, {"pads": [3, 2, 4, 5], "strides": [3, 3]}),
    ("batch2", 2, 16, 8, 8, 20, 3, 3, {"pads": [1, 1, 1, 1]}),
    ("many_pixels", 1, 8, 20, 23, 8, 3, 3, {"pads": [1, 1, 1, 1]}),
    ("wide_D", 1, 300, 4, 4, 5, 3, 3, {"pads": [1, 1, 1, 1]}),
    ("relu", 1, 16, 8, 8, 16, 3, 3, {"pads": [1, 1, 1, 1], "activation": "Relu"}),
    ("clip", 1, 16, 8, 8, 16, 3, 3, {"pads": [1, 1, 1, 1], "activation": "Clip", "clip_min": -0.5,
                                      "clip_max": 0.7}),
]


def build_case(case_tuple, seed=0, k=6, sparsity=0.5):
    """Weights with k - 1 distinct non-zero values and about `sparsity` exact zeros."""
    name, n, c, h, w_, m, kh, kw, extra = case_tuple
    rng = np.random.default_rng(seed)
    case = dict(extra)
    group = case.get("group", 1)
    levels = (rng.standard_normal(k - 1) / np.sqrt(c // group * kh * kw)).astype(np.float32)
    w = levels[rng.integers(0, k - 1, (m, c // group, kh, kw))]
    w[rng.random(w.shape) < sparsity] = 0.0
    b = None if case.pop("no_bias", False) else rng.standard_normal(m).astype(np.float32)
    x = rng.standard_normal((n, c, h, w_)).astype(np.float32)
    return case, w.astype(np.float32), b, x


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case_tuple", CASES, ids=[c[0] for c in CASES])
def test_matches_ort_conv(case_tuple, isa):
    case, w, b, x = build_case(case_tuple)
    want = session(reference_model(case, w, b)).run(None, {"X": x})[0]
    for per_channel in (False, True):
        got = session(ours_model(case, w, b, per_channel, **act_attrs(case)), isa).run(None, {"X": x})[0]
        assert got.shape == want.shape
        assert_close(got, want, f"{case_tuple[0]} {isa} per_channel={per_channel}")


@pytest.mark.parametrize("isa", ISAS)
def test_no_pruning_all_distinct_values_is_conv(isa):
    """K = the number of distinct weight values, nothing pruned: exactly Conv (the issue's exactness check)."""
    rng = np.random.default_rng(1)
    case = {"pads": [1, 1, 1, 1]}
    w = rng.standard_normal((12, 10, 3, 3)).astype(np.float32)   # ~1080 distinct values
    b = rng.standard_normal(12).astype(np.float32)
    x = rng.standard_normal((2, 10, 13, 13)).astype(np.float32)
    values, counts, idx = layout_of(w, False)
    assert values.size == np.unique(w).size and counts.sum() == w.size and counts.dtype == np.uint8
    want = session(reference_model(case, w, b)).run(None, {"X": x})[0]
    got = session(ours_model(case, w, b), isa).run(None, {"X": x})[0]
    assert_close(got, want, f"all distinct {isa}")


def test_index_and_count_types_and_threads():
    case, w, b, x = build_case(CASES[0], seed=3)
    want = session(reference_model(case, w, b)).run(None, {"X": x})[0]
    values, counts, idx = layout_of(w, False)
    for ct in (np.uint8, np.uint16, np.int32, np.int64):
        for it in (np.uint8, np.uint16, np.int32):
            layout = (values, counts.astype(ct), idx.astype(it))
            for threads in (1, 2):
                got = session(ours_model(case, w, b, layout=layout), threads=threads).run(None, {"X": x})[0]
                assert_close(got, want, f"{ct} {it} threads={threads}")


def test_empty_channels_and_all_pruned():
    case, w, b, x = build_case(CASES[0], seed=4)
    w[3] = 0.0
    w[7:9] = 0.0
    want = session(reference_model(case, w, b)).run(None, {"X": x})[0]
    assert_close(session(ours_model(case, w, b)).run(None, {"X": x})[0], want, "empty channels")
    z = np.zeros_like(w)
    layout = (np.ones(1, np.float32), np.zeros((w.shape[0], 1), np.uint8), np.zeros(0, np.uint8))
    got = session(ours_model(case, z, b, layout=layout)).run(None, {"X": x})[0]
    assert_close(got, session(reference_model(case, z, b)).run(None, {"X": x})[0], "all pruned")


def test_shape_inference_and_checker():
    import onnxcompress
    from onnxcompress import schemas

    schemas.register_schemas()
    case, w, b, _ = build_case(CASES[1])
    model = ours_model(case, w, b)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    for i, v in enumerate((8, 10, 9)):
        model.graph.input[0].type.tensor_type.shape.dim[1 + i].dim_value = v
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["n", "m", "h", "w"]))
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    dims = [d.dim_value for d in inferred.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, 16, 5, 5]
    assert onnxcompress.DOMAIN == DOMAIN


def test_unknown_isa_is_an_error():
    case, w, b, _ = build_case(CASES[0])
    with pytest.raises(Exception, match="ONNXCOMPRESS_ISA"):
        session(ours_model(case, w, b), isa="sse9")


# ---------------------------------------------------------------- malformed nodes

def _good():
    w = np.zeros((4, 3, 3, 3), np.float32)
    w[:, :, 1, 1] = 1.0
    w[0, 0, 0, 0] = 2.0
    return w


def _node_model(attrs=None, values=None, counts=None, indices=None, bias=None, const_as_input=False, inputs=None,
                drop_weight_shape=False):
    v0, c0, i0 = layout_of(_good(), False)
    values = v0 if values is None else values
    counts = c0 if counts is None else counts
    indices = i0 if indices is None else indices
    arrays = {"V": values, "Cnt": counts, "Idx": indices}
    if bias is not None:
        arrays["B"] = bias
    names = inputs or ["X", "V", "Cnt", "Idx"] + (["B"] if bias is not None else [])
    a = {"weight_shape": [4, 3, 3, 3]}
    if drop_weight_shape:
        a = {}
    a.update(attrs or {})
    node = helper.make_node("ClusteredSparseConv", names, ["Y"], domain=DOMAIN, **a)
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", "C", "H", "W"])]
    inits = []
    for name, arr in arrays.items():
        if const_as_input and name == "Idx":
            graph_inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(arr.dtype),
                                                              list(arr.shape)))
        else:
            inits.append(numpy_helper.from_array(arr, name))
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "g", graph_inputs, [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    model.ir_version = 9
    return model


_V, _C, _I = layout_of(_good(), False)

MALFORMED = {
    "indices_not_initializer": dict(const_as_input=True),
    "no_weight_shape": dict(drop_weight_shape=True),
    "weight_shape_rank": dict(attrs={"weight_shape": [4, 3, 3]}),
    "weight_shape_zero": dict(attrs={"weight_shape": [4, 0, 3, 3]}),
    "weight_shape_huge": dict(attrs={"weight_shape": [4, 1 << 30, 3, 3]}),
    "index_out_of_range": dict(indices=np.array(list(_I[:-1]) + [27], np.uint8)),
    "index_negative": dict(indices=_I.astype(np.int32) - 5),
    "index_duplicate": dict(indices=np.array(list(_I[:2]) + [_I[0]] + list(_I[3:]), np.uint8)),
    "counts_sum_too_big": dict(counts=(_C + 1).astype(np.uint8)),
    "counts_sum_too_small": dict(counts=np.maximum(_C.astype(np.int32) - 1, 0).astype(np.uint8)),
    "counts_negative": dict(counts=np.array([[-1, 30]] * 4, np.int32)),
    "counts_wrong_shape": dict(counts=_C[:3]),
    "counts_float": dict(counts=_C.astype(np.float32)),
    "indices_int64": dict(indices=_I.astype(np.int64)),
    "indices_rank2": dict(indices=_I.reshape(1, -1)),
    "values_int": dict(values=_V.astype(np.int32)),
    "values_rank3": dict(values=_V.reshape(1, 1, -1)),
    "values_rows_not_M": dict(values=np.ones((3, 2), np.float32)),
    "values_empty": dict(values=np.zeros(0, np.float32), counts=np.zeros((4, 0), np.uint8)),
    "bias_wrong_shape": dict(bias=np.ones(5, np.float32)),
    "group_not_dividing": dict(attrs={"group": 3}),
    "pads_count": dict(attrs={"pads": [1, 1]}),
    "negative_pads": dict(attrs={"pads": [-1, 0, 0, 0]}),
    "stride0": dict(attrs={"strides": [0, 1]}),
    "kernel_shape_mismatch": dict(attrs={"kernel_shape": [5, 5]}),
    "unknown_activation": dict(attrs={"activation": "Gelu"}),
    "clip_min_above_max": dict(attrs={"activation": "Clip", "clip_min": 2.0, "clip_max": 1.0}),
    "too_many_inputs": dict(inputs=["X", "V", "Cnt", "Idx", "V", "V", "V"]),  # one past Z
    "too_few_inputs": dict(inputs=["X", "V", "Cnt"]),
    "weight_shape_as_floats": dict(attrs={"weight_shape": [4.0, 3.0, 3.0, 3.0]}),
}


def test_good_node_runs():
    x = np.random.default_rng(0).standard_normal((1, 3, 6, 6)).astype(np.float32)
    w = _good()
    got = session(_node_model()).run(None, {"X": x})[0]
    assert_close(got, session(reference_model({}, w, None)).run(None, {"X": x})[0], "good node")


OP = "ClusteredSparseConv"
# Caught by ONNX Runtime's own graph check (input count or element type the op declares)
# before our kernel sees the node; every other case must fail in our validation.
REJECTED_BY_ORT = {'too_few_inputs', 'too_many_inputs', 'values_int'}


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
    assert_malformed_nodes_fail_cleanly("test_cluspa_op")
