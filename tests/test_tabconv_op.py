"""ai.onnxcompress.LutConv against ONNX Runtime's own Conv and a numpy reference.

- Exactness: with the exhaustive encoder, prototypes equal to every distinct
  sub-vector of the input's im2col rows and tables T = P W, LutConv must equal
  ORT's Conv (float rounding) for every geometry.
- Equivalence: for random encoders and tables (tree / exhaustive, fp32 / 8-bit,
  K <= 16 and K > 16), the op equals the numpy reference built from
  onnxcompress.fitting.tabconv (same codes, same sums).
- Every instruction set of this CPU (ONNXCOMPRESS_ISA, read at session creation).
- Malformed nodes are ORT errors at session creation, never crashes.
"""

from __future__ import annotations

import zlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcompress.calibration.im2col import conv_geometry, im2col, rows_to_nchw
from onnxcompress.fitting import tabconv as tc
from ophelpers import DOMAIN, ISAS, assert_malformed_nodes_fail_cleanly, assert_rejected, creation_error, make_model, session  # noqa: E402

CONV_KEYS = ("auto_pad", "pads", "strides", "dilations", "group")


def lut_model(attrs: dict, cin: int, k: tuple[int, int], tables, scale=None, bias=None, split_dims=None,
              thresholds=None, prototypes=None, encoder="tree", extra=None, drop=()) -> onnx.ModelProto:
    named = [("T", tables), ("scale", scale), ("B", bias), ("split_dims", split_dims), ("thresholds", thresholds),
             ("prototypes", prototypes)]
    inputs, inits = ["X"], []
    for name, value in named:
        if value is None or name in drop:
            inputs.append("")
        else:
            inputs.append(name)
            inits.append(numpy_helper.from_array(np.asarray(value), name))
    while inputs[-1] == "":
        inputs.pop()
    node_attrs = {key: attrs[key] for key in CONV_KEYS if key in attrs}
    node_attrs.update(kernel_shape=list(k), in_channels=cin, encoder=encoder)
    node_attrs.update(extra or {})
    node_attrs = {key: v for key, v in node_attrs.items() if v is not None}  # None: leave the attribute out
    node = helper.make_node("LutConv", inputs, ["Y"], domain=DOMAIN, **node_attrs)
    return make_model([node], inits)


def conv_model(attrs: dict, w, b, activation=None) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(w, "W")]
    inputs = ["X", "W"]
    if b is not None:
        inits.append(numpy_helper.from_array(b, "B"))
        inputs.append("B")
    conv_attrs = {key: attrs[key] for key in CONV_KEYS if key in attrs}
    nodes = [helper.make_node("Conv", inputs, ["C" if activation else "Y"], **conv_attrs)]
    if activation:
        nodes.append(helper.make_node("Relu", ["C"], ["Y"]))
    return make_model(nodes, inits)


# (name, N, C, H, W, M, kh, kw, attributes)
CASES = [
    ("3x3_pad1", 1, 4, 6, 7, 8, 3, 3, {"pads": [1, 1, 1, 1]}),
    ("3x3_stride2", 1, 3, 7, 6, 5, 3, 3, {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    ("asym_pads", 1, 2, 5, 5, 6, 3, 3, {"pads": [0, 1, 2, 1]}),
    ("same_upper_s2", 1, 3, 6, 6, 4, 3, 3, {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ("same_lower_4x4", 1, 2, 5, 6, 3, 4, 4, {"auto_pad": "SAME_LOWER"}),
    ("valid", 1, 3, 6, 6, 7, 3, 3, {"auto_pad": "VALID"}),
    ("dilation2", 1, 2, 7, 7, 4, 3, 3, {"pads": [2, 2, 2, 2], "dilations": [2, 2]}),
    ("group2", 1, 4, 6, 6, 6, 3, 3, {"pads": [1, 1, 1, 1], "group": 2}),
    ("depthwise", 1, 3, 5, 5, 3, 3, 3, {"pads": [1, 1, 1, 1], "group": 3}),
    ("1x1", 1, 6, 5, 5, 9, 1, 1, {}),
    ("1x1_stride2", 1, 5, 7, 7, 4, 1, 1, {"strides": [2, 2]}),
    ("2x3_mixed", 1, 3, 8, 7, 5, 2, 3, {"pads": [1, 0, 0, 2], "strides": [2, 1], "dilations": [2, 3]}),
    ("batch2", 2, 3, 5, 6, 4, 3, 3, {"pads": [1, 1, 1, 1]}),
    ("wide_row", 1, 2, 3, 80, 70, 3, 3, {"pads": [1, 1, 1, 1]}),  # blocks inside one output row, M > 64
    ("row_tail", 1, 3, 5, 21, 5, 3, 3, {"pads": [1, 1, 1, 1]}),  # rows of 21: vector tails inside rows
    ("row_tail_s2", 1, 3, 6, 41, 5, 3, 3, {"pads": [1, 1, 1, 1], "strides": [1, 2]}),  # gathers, 21 wide
]


def rows_of(x, attrs, w_shape):
    geo = conv_geometry(attrs, x.shape, w_shape)
    return geo, im2col(x, geo)


def reference(x, attrs, w_shape, fits, activation=False):
    """numpy LutConv: per group, encode the im2col rows and sum the table entries."""
    geo, cols = rows_of(x, attrs, w_shape)
    parts = []
    for g, rows in enumerate(cols):
        f = fits[g]
        if f["encoder"] == "tree":
            codes = tc.encode_tree(rows, f["split_dims"], f["thresholds"])
        else:
            codes = tc.encode_exhaustive(rows, f["prototypes"])
        tables = f["tables"] if f["scale"] is None else tc.dequantize_tables(f["tables"], f["scale"])
        parts.append(tc.lut_output(codes, tables, f["bias"]))
    y = rows_to_nchw(parts, x.shape[0], geo.out_hw)
    return np.maximum(y, 0) if activation else y


def stack(fits, key):
    return None if fits[0][key] is None else np.stack([f[key] for f in fits])


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("isa", ISAS)
def test_exhaustive_exact_against_ort_conv(case, isa):
    name, n, c, h, w_, m, kh, kw, attrs = case
    rng = np.random.default_rng(zlib.crc32(name.encode()))  # stable across runs (hash() is salted)
    group = attrs.get("group", 1)
    x = rng.standard_normal((n, c, h, w_)).astype(np.float32)
    w = rng.standard_normal((m, c // group, kh, kw)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    geo, cols = rows_of(x, attrs, w.shape)
    d = geo.cols
    codebooks, s = tc.codebook_layout(d, max(1, d // 5))
    mg = m // group
    fits = []
    for g, rows in enumerate(cols):
        # every distinct sub-vector is a prototype (K up to the row count)
        subs = tc.pad_columns(rows, codebooks, s).reshape(len(rows), codebooks, s)
        distinct = [np.unique(subs[:, j], axis=0) for j in range(codebooks)]
        k = max(len(u) for u in distinct)
        assert k <= 256
        protos = np.zeros((codebooks, k, s), np.float32)
        for j, u in enumerate(distinct):
            protos[j, :len(u)] = u
            protos[j, len(u):] = u[0]
        wg = w[g * mg:(g + 1) * mg].reshape(mg, -1)
        tables = tc.tables_from_prototypes(protos, wg).astype(np.float32)
        fits.append({"prototypes": protos, "tables": tables})
    model = lut_model(attrs, c, (kh, kw), stack(fits, "tables"), bias=b, prototypes=stack(fits, "prototypes"),
                      encoder="exhaustive")
    got = session(model, isa).run(None, {"X": x})[0]
    want = session(conv_model(attrs, w, b), None).run(None, {"X": x})[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def random_fits(rng, cols, d, mg, encoder, bits, k, codebooks):
    fits = []
    for rows in cols:
        c, s = tc.codebook_layout(d, codebooks)
        f = {"encoder": encoder, "split_dims": None, "thresholds": None, "prototypes": None, "scale": None}
        if encoder == "tree":
            f["split_dims"], f["thresholds"] = tc.fit_tree_encoder(rows, c, seed=1, max_rows=512)
        else:
            f["prototypes"] = rng.standard_normal((c, k, s)).astype(np.float32)
            real = d - (c - 1) * s
            f["prototypes"][c - 1, :, real:] = 0.0
        t = rng.standard_normal((c, k, mg))
        if bits == 8:
            f["tables"], f["scale"], _ = tc.quantize_tables(t)
        else:
            f["tables"] = t.astype(np.float32)
        f["bias"] = rng.standard_normal(mg).astype(np.float32)
        fits.append(f)
    return fits


SETTINGS = [("tree", 32, 16), ("tree", 8, 16), ("exhaustive", 32, 16), ("exhaustive", 8, 16),
            ("exhaustive", 8, 5), ("exhaustive", 8, 40), ("exhaustive", 32, 40)]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("setting", SETTINGS, ids=["-".join(map(str, s)) for s in SETTINGS])
def test_matches_numpy_reference(case, setting):
    name, n, c, h, w_, m, kh, kw, attrs = case
    encoder, bits, k = setting
    rng = np.random.default_rng(7)
    group = attrs.get("group", 1)
    x = np.maximum(rng.standard_normal((n, c, h, w_)), 0).astype(np.float32)
    geo, cols = rows_of(x, attrs, (m, c // group, kh, kw))
    fits = random_fits(rng, cols, geo.cols, m // group, encoder, bits, k, codebooks=max(1, geo.cols // 4))
    scale = None if bits == 32 else np.concatenate([f["scale"] for f in fits])[:1]
    if bits == 8:  # one scale for the layer
        for f in fits:
            f["scale"] = scale
    bias = np.concatenate([f["bias"] for f in fits])
    activation = name == "batch2"
    model = lut_model(attrs, c, (kh, kw), stack(fits, "tables"), scale=scale, bias=bias,
                      split_dims=stack(fits, "split_dims"), thresholds=stack(fits, "thresholds"),
                      prototypes=stack(fits, "prototypes"), encoder=encoder,
                      extra={"activation": "Relu"} if activation else None)
    want = reference(x, attrs, (m, c // group, kh, kw), fits, activation)
    for isa in ISAS:
        got = session(model, isa).run(None, {"X": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(np.abs(want).max(), 1), err_msg=isa)


def integer_lut(attrs, n, c, h, w_, m, kh, kw, encoder, bits, k, rng, activation=False, per_channel_scale=False):
    """A LutConv that is exactly an integer Conv, so that it can be checked against ORT's
    own Conv to the bit: one codebook per im2col column (S = 1), inputs taking the K
    integer values 0..K-1, codes that are the values themselves (tree: four splits of
    the column at the midpoints; exhaustive: prototypes 0..K-1) and tables
    T[d][k][o] = k * W[o, d]. 8-bit tables keep k * W <= 255 and scale by powers of two.
    Returns (LutConv model, ORT Conv model, x)."""
    group = attrs.get("group", 1)
    cg, mg = c // group, m // group
    d = cg * kh * kw
    x = rng.integers(0, k, size=(n, c, h, w_)).astype(np.float32)
    top = 255 // (k - 1) if bits == 8 else 8
    w = rng.integers(0 if bits == 8 else -top, top + 1, size=(m, cg, kh, kw)).astype(np.float32)
    bias = rng.integers(-20, 21, size=m).astype(np.float32)
    levels = np.arange(k, dtype=np.float32)
    tables = np.stack([levels[None, :, None] * w[g * mg:(g + 1) * mg].reshape(mg, d).T[:, None, :]
                       for g in range(group)])                              # [G, D, K, Mg]
    scale = None
    if bits == 8:
        tables = tables.astype(np.uint8)
        scale = (2.0 ** rng.integers(-1, 2, size=m)).astype(np.float32) if per_channel_scale else \
            np.ones(1, np.float32)
    split_dims = thresholds = prototypes = None
    if encoder == "tree":
        assert k == 16
        split_dims = np.broadcast_to(np.arange(d)[None, :, None], (group, d, 4)).astype(np.int64)
        node = []
        for level in range(4):  # node 2^l - 1 + p splits prefix p between its two halves
            node += [p * 2 ** (4 - level) + 2 ** (3 - level) - 0.5 for p in range(2 ** level)]
        thresholds = np.broadcast_to(np.array(node, np.float32), (group, d, 15)).copy()
    else:
        prototypes = np.broadcast_to(levels[None, None, :, None], (group, d, k, 1)).copy()
    lut = lut_model(attrs, c, (kh, kw), tables, scale=scale, bias=bias, split_dims=split_dims,
                    thresholds=thresholds, prototypes=prototypes, encoder=encoder,
                    extra={"activation": "Relu"} if activation else None)
    w_eff = w * (scale.reshape(-1, 1, 1, 1) if scale is not None and scale.size == m else 1.0)
    return lut, conv_model(attrs, w_eff.astype(np.float32), bias, activation=activation), x


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("setting", SETTINGS, ids=["-".join(map(str, s)) for s in SETTINGS])
def test_integer_lut_equals_ort_conv(case, setting):
    """Every encoder / table setting of the group above, checked against ORT's own Conv
    (to the bit: every sum is an exact integer) instead of our own Python."""
    name, n, c, h, w_, m, kh, kw, attrs = case
    encoder, bits, k = setting
    rng = np.random.default_rng(zlib.crc32(f"{name}-{setting}".encode()))
    lut, conv, x = integer_lut(attrs, n, c, h, w_, m, kh, kw, encoder, bits, k, rng, activation=name == "batch2",
                               per_channel_scale=name in ("group2", "wide_row"))
    want = session(conv).run(None, {"X": x})[0]
    for isa in ISAS:
        got = session(lut, isa).run(None, {"X": x})[0]
        np.testing.assert_array_equal(got, want, err_msg=isa)


@pytest.mark.parametrize("isa", ISAS)
def test_many_codebooks_flush_and_per_channel_scale(isa):
    # 600 codebooks > 256: the 16-bit accumulators are flushed; tables at 255
    # everywhere is the worst case for overflow.
    rng = np.random.default_rng(3)
    c_in, m = 600, 3
    x = rng.standard_normal((1, c_in, 4, 9)).astype(np.float32)
    geo, cols = rows_of(x, {}, (m, c_in, 1, 1))
    dims, thr = tc.fit_tree_encoder(cols[0], c_in, max_rows=64)
    tables = np.full((1, c_in, 16, m), 255, np.uint8)
    tables[0, :, :, 2] = rng.integers(0, 256, size=(c_in, 16))
    scale = np.array([0.5, 1.0, 0.25], np.float32)
    model = lut_model({}, c_in, (1, 1), tables, scale=scale, split_dims=dims[None], thresholds=thr[None])
    fits = [{"encoder": "tree", "split_dims": dims, "thresholds": thr, "prototypes": None, "tables": tables[0],
             "scale": scale, "bias": None}]
    want = reference(x, {}, (m, c_in, 1, 1), fits)
    assert want[0, 0].max() == 0.5 * 255 * 600
    got = session(model, isa).run(None, {"X": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_threads_agree():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 8, 20, 20)).astype(np.float32)
    attrs = {"pads": [1, 1, 1, 1]}
    geo, cols = rows_of(x, attrs, (32, 8, 3, 3))
    fits = random_fits(rng, cols, geo.cols, 32, "tree", 8, 16, codebooks=8)
    model = lut_model(attrs, 8, (3, 3), stack(fits, "tables"), scale=fits[0]["scale"], bias=fits[0]["bias"],
                      split_dims=stack(fits, "split_dims"), thresholds=stack(fits, "thresholds"))
    one = session(model, threads=1).run(None, {"X": x})[0]
    two = session(model, threads=2).run(None, {"X": x})[0]
    np.testing.assert_array_equal(one, two)


# ------------------------------------------------------------------ malformed

def good_parts():
    rng = np.random.default_rng(5)
    return dict(
        tables=rng.integers(0, 255, size=(1, 4, 16, 6)).astype(np.uint8),
        scale=np.array([0.1], np.float32),
        bias=np.zeros(6, np.float32),
        split_dims=rng.integers(0, 18, size=(1, 4, 4)).astype(np.int64),
        thresholds=rng.standard_normal((1, 4, 15)).astype(np.float32),
    )


def _bad(**changes):
    parts = good_parts()
    extra = changes.pop("extra", None)
    drop = changes.pop("drop", ())
    attrs = changes.pop("attrs", {"pads": [1, 1, 1, 1]})
    cin = changes.pop("cin", 2)
    kernel = changes.pop("kernel", (3, 3))
    encoder = changes.pop("encoder", "tree")
    parts.update(changes)
    return lut_model(attrs, cin, kernel, encoder=encoder, extra=extra, drop=drop, **parts)


MALFORMED = {
    "split_dim_out_of_range": dict(split_dims=np.full((1, 4, 4), 18, np.int64)),
    "split_dim_negative": dict(split_dims=np.full((1, 4, 4), -1, np.int64)),
    "split_dims_shape": dict(split_dims=np.zeros((1, 4, 3), np.int64)),
    "split_dims_float": dict(split_dims=np.zeros((1, 4, 4), np.float32)),
    "thresholds_shape": dict(thresholds=np.zeros((1, 4, 16), np.float32)),
    "thresholds_nan": dict(thresholds=np.full((1, 4, 15), np.nan, np.float32)),
    "tree_k_not_16": dict(tables=np.zeros((1, 4, 8, 6), np.uint8)),
    "tables_rank3": dict(tables=np.zeros((4, 16, 6), np.uint8)),
    "tables_int32": dict(tables=np.zeros((1, 4, 16, 6), np.int32)),
    "tables_groups": dict(tables=np.zeros((2, 4, 16, 6), np.uint8)),
    "tables_k_300": dict(tables=np.zeros((1, 4, 300, 6), np.uint8), encoder="exhaustive",
                         prototypes=np.zeros((1, 4, 300, 5), np.float32), drop=("split_dims", "thresholds")),
    "scale_missing": dict(drop=("scale",)),
    "scale_shape": dict(scale=np.ones(4, np.float32)),
    "scale_inf": dict(scale=np.array([np.inf], np.float32)),
    "scale_with_float_tables": dict(tables=np.zeros((1, 4, 16, 6), np.float32)),
    "bias_shape": dict(bias=np.zeros(5, np.float32)),
    "no_kernel_shape": dict(extra={"kernel_shape": None}),
    "no_in_channels": dict(extra={"in_channels": None}),
    "kernel_shape_3d": dict(extra={"kernel_shape": [3, 3, 3]}),
    "in_channels_zero": dict(cin=0),
    "in_channels_not_group_multiple": dict(cin=3, attrs={"group": 2}, tables=np.zeros((2, 4, 16, 3), np.uint8),
                                           split_dims=np.zeros((2, 4, 4), np.int64),
                                           thresholds=np.zeros((2, 4, 15), np.float32)),
    "bad_encoder": dict(extra={"encoder": "magic"}),
    "tree_missing_thresholds": dict(drop=("thresholds",)),
    "tree_with_prototypes": dict(prototypes=np.zeros((1, 4, 16, 5), np.float32)),
    "exhaustive_without_prototypes": dict(encoder="exhaustive", drop=("split_dims", "thresholds")),
    "exhaustive_with_split_dims": dict(encoder="exhaustive", prototypes=np.zeros((1, 4, 16, 5), np.float32)),
    "prototypes_too_short": dict(encoder="exhaustive", prototypes=np.zeros((1, 4, 16, 4), np.float32),
                                 drop=("split_dims", "thresholds")),
    "prototypes_empty_codebook": dict(encoder="exhaustive", prototypes=np.zeros((1, 4, 16, 6), np.float32),
                                      drop=("split_dims", "thresholds")),
    "prototypes_nan": dict(encoder="exhaustive", prototypes=np.full((1, 4, 16, 5), np.nan, np.float32),
                           drop=("split_dims", "thresholds")),
    "pads_negative": dict(attrs={"pads": [-1, 1, 1, 1]}),
    "strides_zero": dict(attrs={"strides": [0, 1]}),
    "bad_activation": dict(extra={"activation": "Tanh"}),
}


_node_model = _bad
OP = "LutConv"
# Caught by ONNX Runtime's own graph check (the element type the op declares) before
# our kernel sees the node; every other case must fail in our validation.
REJECTED_BY_ORT = {"split_dims_float"}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_node_is_a_validation_error_at_session_creation(name):
    model = _bad(**dict(MALFORMED[name]))  # the bad node itself must build
    assert_rejected(creation_error(model), OP, name in REJECTED_BY_ORT)


def test_malformed_nodes_do_not_crash_the_process():
    """Every malformed node in a fresh interpreter: a crash (not an exception) would show as an exit code."""
    assert_malformed_nodes_fail_cleanly("test_tabconv_op")


def test_good_node_runs_and_bad_input_is_an_error():
    sess = session(_bad())
    assert sess.run(None, {"X": np.zeros((1, 2, 5, 5), np.float32)})[0].shape == (1, 6, 5, 5)
    with pytest.raises(Exception, match="LutConv"):
        sess.run(None, {"X": np.zeros((1, 3, 5, 5), np.float32)})  # wrong channel count
    with pytest.raises(Exception, match="LutConv"):
        sess.run(None, {"X": np.zeros((1, 2, 1, 1), np.float32)[:, :, :0]})  # smaller than the kernel


def test_weights_from_a_graph_input_are_refused():
    parts = good_parts()
    model = lut_model({"pads": [1, 1, 1, 1]}, 2, (3, 3), **parts)
    # make T a graph input instead of an initializer
    t = next(i for i in model.graph.initializer if i.name == "T")
    model.graph.initializer.remove(t)
    model.graph.input.append(helper.make_tensor_value_info("T", TensorProto.UINT8, [1, 4, 16, 6]))
    with pytest.raises(Exception):
        session(model).run(None, {"X": np.zeros((1, 2, 5, 5), np.float32), "T": parts["tables"]})


def test_schema_checker_and_shape_inference():
    from onnxcompress import schemas

    schemas.register_schemas()
    parts = good_parts()
    model = lut_model({"pads": [1, 1, 1, 1], "strides": [2, 2]}, 2, (3, 3), **parts)
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 9
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_value = 7
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(inferred, full_check=True)
    dims = inferred.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [6, 5, 4]
    got = session(model).run(None, {"X": np.zeros((1, 2, 9, 7), np.float32)})[0]
    assert got.shape == (1, 6, 5, 4)
