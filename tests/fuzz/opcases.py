"""Malformed ai.onnxcompress.* nodes: a valid node of one of the ops, then
mutations of its attributes, initializers, inputs and run-time input.

Everything is drawn from `numpy.random.default_rng([seed, index, op])`, so a
(seed, index, op) triple always gives the same case (`make_case`). A case is a
`Spec` (what the node is) that `build` turns into model bytes and feeds; the
mutations applied are listed in `Spec.log`, so a failing case says what it is.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DOMAIN = "ai.onnxcompress"
OPS = ("SparseInputConv", "BasisConv", "ClusteredSparseConv", "LutConv", "QLinearBasisMaps")
# Element type of X and Y where it is not float32.
U8_OPS = {"QLinearBasisMaps"}

# Integers at and around every limit the kernels or ORT have.
INTERESTING_INTS = [
    -(1 << 63), -(1 << 62), -(1 << 32), -(1 << 31), -65537, -4097, -2, -1, 0, 1, 2, 3, 4, 5, 7, 8, 15, 16, 17,
    255, 256, 257, 4095, 4096, 4097, 65535, 65536, 65537, (1 << 24) - 1, 1 << 24, (1 << 24) + 1, (1 << 31) - 1,
    1 << 31, (1 << 32) - 1, 1 << 32, 1 << 40, (1 << 62), (1 << 63) - 1,
]
INTERESTING_FLOATS = [float("nan"), float("inf"), float("-inf"), -1.0, -0.0, 0.0, 1e-45, 0.5, 1.0, 2.0, 1e30,
                      -1e30, 3.4e38, -3.4e38, 1.5]
INTERESTING_STRINGS = ["", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID", "same_upper", "FULL", "Relu", "relu",
                       "Clip", "LeakyRelu", "tree", "exhaustive", "TREE", "x" * 4096, "\x00", "Relu\x00junk",
                       "\xff\xfe"]
CONV_ATTRS = {"auto_pad": "s", "pads": "ints", "strides": "ints", "dilations": "ints", "group": "int",
              "kernel_shape": "ints", "activation": "s", "clip_min": "f", "clip_max": "f"}
OP_ATTRS = {
    "SparseInputConv": {"threshold": "f", "dense_below_zero_fraction": "f"},
    "BasisConv": {},
    "ClusteredSparseConv": {"weight_shape": "ints"},
    "LutConv": {"in_channels": "int", "encoder": "s"},
    "QLinearBasisMaps": {"channels_last": "int"},
}
DTYPES = [np.float32, np.float64, np.float16, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32,
          np.int64, np.uint64, np.bool_]
MAX_X_ELEMENTS = 1 << 20  # run-time inputs stay small: the fuzz is about the node, not our memory


@dataclass
class Spec:
    """One node: its inputs in order ([name, array or None, kind]), attributes and the X it runs on.

    kind: "init" (an initializer), "input" (a graph input fed at run time), "absent" (empty name),
    "undefined" (a name nothing produces), or "raw" (an initializer given as a ready TensorProto in `raw`).
    """

    op: str
    inputs: list[list[Any]]
    attrs: dict[str, Any]
    x_shape: tuple[int, ...]
    x_fill: str = "normal"
    raw: dict[str, TensorProto] = field(default_factory=dict)
    extra_inputs: list[str] = field(default_factory=list)
    threads: int = 2
    log: list[str] = field(default_factory=list)

    def names(self) -> list[str]:
        return [name for name, _, _ in self.inputs]

    def get(self, name: str):
        for entry in self.inputs:
            if entry[0] == name:
                return entry
        return None


# ------------------------------------------------------------------ valid nodes

def _conv_geometry(rng, spec_group_max: int = 4):
    group = int(rng.choice([1, 1, 1, 2, 3, 4][:2 + spec_group_max]))
    cg = int(rng.integers(1, 5))
    mg = int(rng.integers(1, 6))
    kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    attrs: dict[str, Any] = {}
    if rng.random() < 0.3:
        attrs["auto_pad"] = str(rng.choice(["SAME_UPPER", "SAME_LOWER", "VALID", "NOTSET"]))
    elif rng.random() < 0.7:
        attrs["pads"] = [int(v) for v in rng.integers(0, 3, 4)]
    if rng.random() < 0.5:
        attrs["strides"] = [int(v) for v in rng.integers(1, 3, 2)]
    if rng.random() < 0.3:
        attrs["dilations"] = [int(v) for v in rng.integers(1, 3, 2)]
    if group > 1 or rng.random() < 0.2:
        attrs["group"] = group
    if rng.random() < 0.3:
        attrs["kernel_shape"] = [kh, kw]
    r = rng.random()
    if r < 0.25:
        attrs["activation"] = "Relu"
    elif r < 0.4:
        attrs["activation"] = "Clip"
        attrs["clip_min"], attrs["clip_max"] = -0.5, 0.75
    n = int(rng.integers(1, 3))
    dh = (kh - 1) * attrs.get("dilations", [1, 1])[0] + 1
    dw = (kw - 1) * attrs.get("dilations", [1, 1])[1] + 1
    h, w = dh + int(rng.integers(0, 6)), dw + int(rng.integers(0, 6))
    return dict(group=group, cg=cg, mg=mg, kh=kh, kw=kw, attrs=attrs, x_shape=(n, cg * group, h, w))


def _f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _bias(rng, m):
    return [["B", _f32(rng, m), "init"]] if rng.random() < 0.7 else [["B", None, "absent"]]


def valid_sparse_input_conv(rng) -> Spec:
    g = _conv_geometry(rng)
    m = g["group"] * g["mg"]
    attrs = dict(g["attrs"])
    if rng.random() < 0.4:
        attrs["threshold"] = float(rng.choice([0.0, 0.1, 0.5]))
    if rng.random() < 0.4:
        attrs["dense_below_zero_fraction"] = float(rng.choice([0.0, 0.3, 1.5]))
    inputs = [["X", None, "x"], ["W", _f32(rng, m, g["cg"], g["kh"], g["kw"]), "init"]] + _bias(rng, m)
    return Spec("SparseInputConv", inputs, attrs, g["x_shape"])


def valid_basis_conv(rng) -> Spec:
    g = _conv_geometry(rng)
    m = g["group"] * g["mg"]
    d = int(rng.integers(1, 5))
    coefs = _f32(rng, m, g["cg"] * d)
    coefs[rng.random(coefs.shape) < 0.3] = 0.0
    inputs = [["X", None, "x"], ["Bases", _f32(rng, d, g["kh"], g["kw"]), "init"], ["Coefs", coefs, "init"]]
    return Spec("BasisConv", inputs + _bias(rng, m), dict(g["attrs"]), g["x_shape"])


def valid_clustered_sparse_conv(rng) -> Spec:
    g = _conv_geometry(rng)
    m = g["group"] * g["mg"]
    cols = g["cg"] * g["kh"] * g["kw"]
    k = int(rng.integers(1, 6))
    per_channel = rng.random() < 0.4
    values = _f32(rng, m, k) if per_channel else _f32(rng, k)
    counts = np.zeros((m, k), np.int64)
    indices = []
    for o in range(m):
        chosen = np.sort(rng.permutation(cols)[: int(rng.integers(0, cols + 1))])
        labels = rng.integers(0, k, len(chosen))
        for cluster in range(k):
            members = chosen[labels == cluster]
            counts[o, cluster] = len(members)
            indices.extend(int(j) for j in members)
    count_type = rng.choice([np.uint8, np.uint16, np.int32, np.int64]) if cols <= 255 else np.int32
    index_type = rng.choice([np.uint8, np.uint16, np.int32]) if cols <= 256 else np.int32
    attrs = dict(g["attrs"])
    attrs["weight_shape"] = [m, g["cg"], g["kh"], g["kw"]]
    inputs = [["X", None, "x"], ["V", values, "init"], ["Cnt", counts.astype(count_type), "init"],
              ["Idx", np.array(indices, index_type), "init"]]
    return Spec("ClusteredSparseConv", inputs + _bias(rng, m), attrs, g["x_shape"])


def valid_lut_conv(rng) -> Spec:
    g = _conv_geometry(rng)
    group, mg = g["group"], g["mg"]
    d = g["cg"] * g["kh"] * g["kw"]
    s = int(rng.integers(1, d + 1))
    cb = -(-d // s)
    encoder = "tree" if rng.random() < 0.6 else "exhaustive"
    k = 16 if encoder == "tree" else int(rng.integers(1, 20))
    bits8 = rng.random() < 0.6
    attrs = dict(g["attrs"])
    attrs["kernel_shape"] = [g["kh"], g["kw"]]
    attrs["in_channels"] = g["cg"] * group
    if encoder == "exhaustive" or rng.random() < 0.5:
        attrs["encoder"] = encoder
    if bits8:
        tables = rng.integers(0, 256, (group, cb, k, mg)).astype(np.uint8)
        scale = np.array([0.01], np.float32) if rng.random() < 0.5 else np.abs(_f32(rng, group * mg)) + 0.01
    else:
        tables, scale = _f32(rng, group, cb, k, mg), None
    inputs = [["X", None, "x"], ["T", tables, "init"],
              ["scale", scale, "init" if scale is not None else "absent"]] + _bias(rng, group * mg)
    if encoder == "tree":
        inputs += [["split_dims", rng.integers(0, d, (group, cb, 4)).astype(np.int64), "init"],
                   ["thresholds", _f32(rng, group, cb, 15), "init"], ["prototypes", None, "absent"]]
    else:
        protos = _f32(rng, group, cb, k, s)
        real = d - (cb - 1) * s
        protos[:, cb - 1, :, real:] = 0.0
        inputs += [["split_dims", None, "absent"], ["thresholds", None, "absent"], ["prototypes", protos, "init"]]
    return Spec("LutConv", inputs, attrs, g["x_shape"])


def valid_qlinear_basis_maps(rng) -> Spec:
    g = _conv_geometry(rng)
    attrs = {k: v for k, v in g["attrs"].items() if k not in ("group", "activation", "clip_min", "clip_max")}
    c, d = g["cg"] * g["group"], int(rng.integers(1, 5))
    m = c * d
    last = rng.random() < 0.5
    if last:
        attrs["channels_last"] = 1
    w = rng.integers(-128, 128, (m, 1, g["kh"], g["kw"])).astype(np.int8)
    per_channel = rng.random() < 0.7
    inputs = [["X", None, "x"],
              ["x_scale", np.float32(rng.uniform(0.001, 0.1)), "init"],
              ["x_zero_point", np.uint8(rng.integers(0, 256)), "init"],
              ["W", w, "init"],
              ["w_scale", rng.uniform(0.001, 0.05, m if per_channel else 1).astype(np.float32), "init"],
              ["w_zero_point", np.zeros(m if per_channel else 1, np.int8), "init"],
              ["y_scale", np.float32(rng.uniform(0.01, 1.0)), "init"],
              ["y_zero_point", np.uint8(rng.integers(0, 256)), "init"]]
    inputs += [["B", rng.integers(-5000, 5000, m).astype(np.int32), "init"]] if rng.random() < 0.7 else \
        [["B", None, "absent"]]
    n, _, h, wd = g["x_shape"]
    return Spec("QLinearBasisMaps", inputs, attrs, (n, h, wd, c) if last else (n, c, h, wd))


VALID = {"SparseInputConv": valid_sparse_input_conv, "BasisConv": valid_basis_conv,
         "ClusteredSparseConv": valid_clustered_sparse_conv, "LutConv": valid_lut_conv,
         "QLinearBasisMaps": valid_qlinear_basis_maps}


# ------------------------------------------------------------------ mutations

def _pick(rng, seq):
    return seq[int(rng.integers(0, len(seq)))]


def _tensor_inputs(spec: Spec, with_data: bool = True) -> list[list[Any]]:
    return [e for e in spec.inputs[1:] if e[2] in ("init", "input") and (e[1] is not None or not with_data)]


def _attr_value(rng, kind: str):
    if kind == "int":
        return int(_pick(rng, INTERESTING_INTS))
    if kind == "f":
        return float(_pick(rng, INTERESTING_FLOATS))
    if kind == "s":
        return str(_pick(rng, INTERESTING_STRINGS))
    length = int(_pick(rng, [0, 1, 2, 2, 2, 3, 4, 4, 4, 5, 8]))
    if rng.random() < 0.5:  # small plausible values mixed with one odd one
        values = [int(v) for v in rng.integers(-1, 5, length)]
        if length:
            values[int(rng.integers(0, length))] = int(_pick(rng, INTERESTING_INTS))
        return values
    return [int(_pick(rng, INTERESTING_INTS)) for _ in range(length)]


def m_attr_set(spec: Spec, rng) -> None:
    kinds = {**CONV_ATTRS, **OP_ATTRS[spec.op]}
    name = _pick(rng, sorted(kinds))
    kind = kinds[name]
    if rng.random() < 0.15:  # the wrong attribute type
        kind = _pick(rng, [k for k in ("int", "f", "s", "ints", "floats") if k != kind])
    value = [float(v) for v in _attr_value(rng, "ints")] if kind == "floats" else _attr_value(rng, kind)
    if kind == "floats" and not value:
        value = [1.5]
    spec.attrs[name] = value
    spec.log.append(f"attr {name} = {value!r}")


def m_attr_drop(spec: Spec, rng) -> None:
    if not spec.attrs:
        return m_attr_set(spec, rng)
    name = _pick(rng, sorted(spec.attrs))
    del spec.attrs[name]
    spec.log.append(f"attr {name} dropped")


def _int64(v: int) -> int:
    return max(-(1 << 63), min((1 << 63) - 1, int(v)))


def m_attr_nudge(spec: Spec, rng) -> None:
    ints = [k for k, v in spec.attrs.items() if isinstance(v, (int, list)) and not isinstance(v, bool)
            and (not isinstance(v, list) or (v and all(isinstance(x, int) for x in v)))]
    if not ints:
        return m_attr_set(spec, rng)
    name = _pick(rng, sorted(ints))
    value = copy.deepcopy(spec.attrs[name])
    delta = int(_pick(rng, [-2, -1, 1, 2, 1 << 10, 1 << 20, 1 << 31, -(1 << 31)]))
    if isinstance(value, list):
        i = int(rng.integers(0, len(value)))
        value[i] = _int64(value[i] + delta)
    else:
        value = _int64(value + delta)
    spec.attrs[name] = value
    spec.log.append(f"attr {name} nudged to {value!r}")


def m_dtype(spec: Spec, rng) -> None:
    entries = _tensor_inputs(spec)
    if not entries:
        return m_absent(spec, rng)
    e = _pick(rng, entries)
    dtype = _pick(rng, DTYPES)
    with np.errstate(all="ignore"):
        e[1] = np.asarray(e[1]).astype(dtype)
    spec.log.append(f"{e[0]} dtype -> {np.dtype(dtype).name}")


def m_rank(spec: Spec, rng) -> None:
    entries = _tensor_inputs(spec)
    if not entries:
        return m_absent(spec, rng)
    e = _pick(rng, entries)
    a = np.asarray(e[1])
    how = _pick(rng, ["add_leading", "add_trailing", "flatten", "scalar", "merge_first"])
    if how == "add_leading":
        a = a.reshape((1,) + a.shape)
    elif how == "add_trailing":
        a = a.reshape(a.shape + (1,))
    elif how == "flatten":
        a = a.reshape(-1)
    elif how == "scalar":
        a = np.asarray(a.reshape(-1)[0] if a.size else 0, a.dtype)
    elif a.ndim >= 2:
        a = a.reshape((a.shape[0] * a.shape[1],) + a.shape[2:])
    e[1] = a
    spec.log.append(f"{e[0]} reshaped ({how}) to {a.shape}")


def m_dim(spec: Spec, rng) -> None:
    """One dimension of an initializer changed: shrunk, grown, emptied (rank kept)."""
    entries = [e for e in _tensor_inputs(spec) if np.asarray(e[1]).ndim >= 1]
    if not entries:
        return m_rank(spec, rng)
    e = _pick(rng, entries)
    a = np.asarray(e[1])
    axis = int(rng.integers(0, a.ndim))
    how = _pick(rng, ["zero", "minus1", "plus1", "double", "one"])
    size = a.shape[axis]
    new = {"zero": 0, "minus1": max(size - 1, 0), "plus1": size + 1, "double": 2 * size, "one": 1}[how]
    if new <= size:
        a = np.take(a, np.arange(new), axis=axis)
    else:
        reps = np.take(a, np.arange(new) % max(size, 1), axis=axis) if size else np.zeros(
            a.shape[:axis] + (new,) + a.shape[axis + 1:], a.dtype)
        a = reps
    e[1] = np.ascontiguousarray(a)
    spec.log.append(f"{e[0]} axis {axis} {size} -> {new}")


def _special(dtype: np.dtype, rng, hint: int):
    if dtype.kind == "f":
        return _pick(rng, [np.nan, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-45, -0.0]) if dtype != np.float16 else \
            _pick(rng, [np.nan, np.inf, -np.inf, 65504.0])
    if dtype.kind == "b":
        return True
    info = np.iinfo(dtype)
    choices = [info.min, info.max, -1, hint, hint + 1, hint - 1, 2 * hint, 0]
    v = int(_pick(rng, choices))
    return int(np.clip(v, info.min, info.max))


def _column_count(spec: Spec) -> int:
    """The im2col width (C/group * kH * kW) the node's valid form had, as a hint for index mutations."""
    ks = spec.attrs.get("kernel_shape") or spec.attrs.get("weight_shape", [0, 0, 3, 3])[2:]
    try:
        cg = spec.x_shape[1] // max(int(spec.attrs.get("group", 1)), 1)
        return int(cg * ks[-2] * ks[-1])
    except Exception:  # noqa: BLE001 - mutated attributes
        return 9


def m_values(spec: Spec, rng) -> None:
    """Some elements of an initializer set to NaN/inf/extremes, or indices out of range."""
    entries = [e for e in _tensor_inputs(spec) if np.asarray(e[1]).size > 0]
    if not entries:
        return m_dim(spec, rng)
    e = _pick(rng, entries)
    a = np.array(e[1], copy=True)
    flat = a.reshape(-1)
    hint = _column_count(spec)
    count = int(_pick(rng, [1, 1, 2, flat.size]))
    where = rng.integers(0, flat.size, min(count, flat.size))
    value = _special(a.dtype, rng, hint)
    with np.errstate(all="ignore"):
        flat[where] = value
    e[1] = a
    spec.log.append(f"{e[0]}[{len(where)} elements] = {value!r}")


def m_absent(spec: Spec, rng) -> None:
    if len(spec.inputs) < 2:
        return m_attr_set(spec, rng)
    e = _pick(rng, spec.inputs[1:])
    how = _pick(rng, ["absent", "absent", "undefined", "truncate"])
    if how == "truncate":
        keep = int(rng.integers(1, len(spec.inputs)))
        spec.inputs = spec.inputs[:keep]
        spec.log.append(f"inputs truncated to {keep}")
        return
    e[2] = how
    spec.log.append(f"{e[0]} made {how}")


def m_present(spec: Spec, rng) -> None:
    """An absent optional input given anyway (random float32 data), or an extra input appended."""
    absent = [e for e in spec.inputs if e[2] == "absent"]
    if absent and rng.random() < 0.7:
        e = _pick(rng, absent)
        shape = tuple(int(v) for v in rng.integers(1, 5, int(rng.integers(1, 5))))
        e[1] = _f32(rng, *shape)
        e[2] = "init"
        spec.log.append(f"{e[0]} given as {shape}")
    else:
        existing = [e[0] for e in spec.inputs if e[2] == "init"] or ["X"]
        name = _pick(rng, existing)
        spec.extra_inputs += [name] * int(rng.integers(1, 3))
        spec.log.append(f"extra inputs {spec.extra_inputs}")


def m_as_graph_input(spec: Spec, rng) -> None:
    entries = [e for e in spec.inputs[1:] if e[2] == "init"]
    if not entries:
        return m_absent(spec, rng)
    e = _pick(rng, entries)
    e[2] = "input"
    spec.log.append(f"{e[0]} is a graph input (not an initializer)")


def m_tensor_proto(spec: Spec, rng) -> None:
    """The initializer's TensorProto itself malformed: raw data shorter than its dims, a huge
    declared shape with almost no data, zero-size but huge other dims, external data outside."""
    entries = [e for e in spec.inputs[1:] if e[2] == "init"]
    if not entries:
        return m_absent(spec, rng)
    e = _pick(rng, entries)
    a = np.asarray(e[1])
    t = numpy_helper.from_array(a, e[0])
    how = _pick(rng, ["short_raw", "huge_dims", "zero_and_huge", "negative_dim", "external_outside",
                      "typed_field_mismatch", "wrong_data_type"])
    if how == "short_raw":
        t.raw_data = t.raw_data[: len(t.raw_data) // 2]
    elif how == "huge_dims":
        del t.dims[:]
        t.dims.extend([1 << 40] + list(a.shape[1:]))
    elif how == "zero_and_huge":
        del t.dims[:]
        t.dims.extend([0] + [1 << 31] * max(a.ndim - 1, 1))
        t.raw_data = b""
    elif how == "negative_dim":
        del t.dims[:]
        t.dims.extend([-1] + list(a.shape[1:]))
    elif how == "external_outside":
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", _pick(rng, ["../../../../etc/passwd", "/etc/passwd", "../x.bin"])),
                           ("offset", "0"), ("length", str(max(a.nbytes, 4)))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
    elif how == "typed_field_mismatch":
        t.ClearField("raw_data")
        t.float_data.extend([1.0, 2.0])  # a count that matches no shape, whatever the type
    else:
        t.data_type = int(_pick(rng, [TensorProto.STRING, TensorProto.BFLOAT16, TensorProto.COMPLEX64,
                                      TensorProto.FLOAT8E4M3FN, 0, 999]))
    spec.raw[e[0]] = t
    e[2] = "raw"
    spec.log.append(f"{e[0]} TensorProto {how}")


def m_x_shape(spec: Spec, rng) -> None:
    n, c, h, w = (list(spec.x_shape) + [1, 1, 1, 1])[:4]
    how = _pick(rng, ["rank3", "rank5", "channels", "tiny", "zero_hw", "batch0", "big", "one"])
    shape = {"rank3": (c, h, w), "rank5": (n, c, h, w, 1), "channels": (n, max(c + int(_pick(rng, [-1, 1, 2])), 0),
                                                                        h, w),
             "tiny": (n, c, 1, 1), "zero_hw": (n, c, 0, w), "batch0": (0, c, h, w),
             "big": (1, c, int(rng.integers(100, 250)), int(rng.integers(100, 250))), "one": (1, c, h, w)}[how]
    spec.x_shape = tuple(int(v) for v in shape)
    spec.log.append(f"X shape {spec.x_shape}")


def m_x_values(spec: Spec, rng) -> None:
    spec.x_fill = _pick(rng, ["nan", "inf", "huge", "zeros", "sparse", "denormal"])
    spec.log.append(f"X values {spec.x_fill}")


def m_threads(spec: Spec, rng) -> None:
    spec.threads = int(_pick(rng, [1, 3, 4]))
    spec.log.append(f"threads {spec.threads}")


# Op-specific: consistent-looking nodes that break one cross-tensor rule.
def m_semantic(spec: Spec, rng) -> None:
    op = spec.op
    if op == "ClusteredSparseConv":
        how = _pick(rng, ["counts_plus", "counts_minus", "index_dup", "index_range", "weight_shape_big",
                          "weight_shape_big_consistent", "values_rows"])
        cnt, idx = spec.get("Cnt"), spec.get("Idx")
        ws = list(spec.attrs.get("weight_shape", [1, 1, 1, 1]))
        if how in ("counts_plus", "counts_minus") and cnt[1] is not None and np.asarray(cnt[1]).size:
            a = np.array(cnt[1], np.int64)
            a.reshape(-1)[int(rng.integers(0, a.size))] += 1 if how == "counts_plus" else -1
            with np.errstate(all="ignore"):
                cnt[1] = a.astype(np.asarray(cnt[1]).dtype)
        elif how == "index_dup" and idx[1] is not None and np.asarray(idx[1]).size >= 2:
            a = np.array(idx[1], copy=True)
            a[1] = a[0]
            idx[1] = a
        elif how == "index_range" and idx[1] is not None and np.asarray(idx[1]).size:
            a = np.array(idx[1], np.int64)
            a[int(rng.integers(0, a.size))] = _column_count(spec) + int(rng.integers(0, 3))
            idx[1] = a.astype(np.int32)
        elif how == "weight_shape_big":
            axis = int(rng.integers(0, 4))
            ws[axis] = int(_pick(rng, [1 << 20, 1 << 24, (1 << 24) + 1, 1 << 30, 1 << 40]))
            spec.attrs["weight_shape"] = ws
        elif how == "weight_shape_big_consistent":
            # a huge declared filter whose (tiny) counts and indices are consistent with it
            m = int(_pick(rng, [1, 2, 1 << 12, 1 << 16, 1 << 20, 1 << 24]))
            cg = int(_pick(rng, [1, 1 << 12, 1 << 16, 1 << 24]))
            spec.attrs["weight_shape"] = [m, cg, ws[2], ws[3]] if len(ws) == 4 else [m, cg, 1, 1]
            spec.attrs.pop("group", None)
            spec.inputs[1][1] = _f32(rng, 1)
            if m <= 1 << 16:
                spec.inputs[2][1] = np.zeros((m, 1), np.uint8)
                spec.inputs[3][1] = np.zeros(0, np.uint8)
            spec.x_shape = (1, cg, 4, 4) if cg <= 16 else spec.x_shape
        else:
            v = spec.get("V")
            v[1] = _f32(rng, int(rng.integers(1, 9)), int(rng.integers(1, 6)))
    elif op == "LutConv":
        how = _pick(rng, ["in_channels", "split_range", "cb_mismatch", "k_tree", "groups", "protos_s"])
        if how == "in_channels":
            spec.attrs["in_channels"] = int(_pick(rng, [0, 1, 3, 1 << 24, (1 << 24) + 1, 1 << 31, -1]))
        elif how == "split_range":
            sd = spec.get("split_dims")
            sd[1] = np.full((1, 1, 4), _pick(rng, [-1, 1 << 31, 1 << 40, _column_count(spec)]), np.int64)
            sd[2] = "init"
        elif how == "cb_mismatch":
            t = spec.get("T")
            a = np.asarray(t[1])
            if a.ndim == 4:
                t[1] = np.concatenate([a, a], axis=1)
        elif how == "k_tree":
            t = spec.get("T")
            a = np.asarray(t[1])
            if a.ndim == 4:
                t[1] = np.ascontiguousarray(a[:, :, :int(rng.integers(1, 16))])
        elif how == "groups":
            spec.attrs["group"] = int(_pick(rng, [2, 3, 4, 1 << 20]))
        else:
            p = spec.get("prototypes")
            p[1] = _f32(rng, 1, 1, 16, int(_pick(rng, [1, 1000, 1 << 16])))
            p[2] = "init"
            spec.attrs["encoder"] = "exhaustive"
    elif op == "QLinearBasisMaps":
        how = _pick(rng, ["channels_not_dividing", "w_zero_point", "scale_extreme", "bias_extreme", "big_kernel",
                          "layout_flip", "group_given"])
        if how == "channels_not_dividing":
            shape = list(spec.x_shape)
            axis = 3 if spec.attrs.get("channels_last") == 1 else 1
            shape[axis] = int(np.asarray(spec.get("W")[1]).shape[0]) + 1
            spec.x_shape = tuple(shape)
        elif how == "w_zero_point":
            z = spec.get("w_zero_point")
            a = np.array(z[1], np.int8, copy=True)
            a.reshape(-1)[0] = int(_pick(rng, [1, -1, 127, -128]))
            z[1] = a
        elif how == "scale_extreme":
            e = spec.get(_pick(rng, ["x_scale", "w_scale", "y_scale"]))
            a = np.array(e[1], np.float32, copy=True)
            a.reshape(-1)[0] = float(_pick(rng, [0.0, -1.0, np.nan, np.inf, 1e-45, 3.4e38]))
            e[1] = a
        elif how == "bias_extreme":
            b = spec.get("B")
            w = np.asarray(spec.get("W")[1])
            b[1] = np.full(w.shape[0] if w.ndim else 1, int(_pick(rng, [(1 << 30) - 1, 1 << 30, -(1 << 31),
                                                                             (1 << 31) - 1])), np.int32)
            b[2] = "init"
        elif how == "big_kernel":
            k = int(_pick(rng, [23, 181, 182, 4097]))
            spec.get("W")[1] = np.ones((1, 1, k, 1), np.int8)
            for name in ("w_scale", "w_zero_point", "B"):
                e = spec.get(name)
                if e[1] is not None:
                    e[1] = np.asarray(e[1]).reshape(-1)[:1]
            spec.attrs.pop("kernel_shape", None)
        elif how == "layout_flip":
            spec.attrs["channels_last"] = 0 if spec.attrs.get("channels_last") == 1 else 1
        else:
            spec.attrs["group"] = int(_pick(rng, [1, 2, 3]))
    elif op == "BasisConv":
        how = _pick(rng, ["coefs_cols", "bases_big", "groups", "bases_d0"])
        if how == "coefs_cols":
            c = spec.get("Coefs")
            a = np.asarray(c[1])
            if a.ndim == 2:
                c[1] = np.ascontiguousarray(np.concatenate([a, a[:, :1]], axis=1))
        elif how == "bases_big":
            spec.get("Bases")[1] = _f32(rng, int(_pick(rng, [4096, 4097])), 1, 1)
        elif how == "groups":
            spec.attrs["group"] = int(_pick(rng, [2, 3, 5, 1 << 20]))
        else:
            spec.get("Bases")[1] = np.zeros((0, 3, 3), np.float32)
    else:
        how = _pick(rng, ["w_big_kernel", "groups", "w_zero_cg", "big_pads"])
        w = spec.get("W")
        if how == "w_big_kernel":
            w[1] = _f32(rng, 1, 1, int(_pick(rng, [64, 4096, 4097])), 1, scale=0.1)
        elif how == "groups":
            spec.attrs["group"] = int(_pick(rng, [2, 3, 5, 1 << 20]))
        elif how == "w_zero_cg":
            w[1] = np.zeros((2, 0, 3, 3), np.float32)
        else:
            spec.attrs["pads"] = [int(_pick(rng, [1000, 65536, 65537])) for _ in range(4)]
            spec.attrs.pop("auto_pad", None)
    spec.log.append(f"semantic {how}")


def m_big_geometry(spec: Spec, rng) -> None:
    """Valid-looking but extreme geometry: huge pads, strides or dilations, legal or just past the limit."""
    which = _pick(rng, ["pads", "strides", "dilations"])
    value = int(_pick(rng, [100, 1000, 4096, 4097, 65536, 65537, 1 << 20]))
    spec.attrs.pop("auto_pad", None)
    if which == "pads":
        spec.attrs["pads"] = [value if rng.random() < 0.5 else 0 for _ in range(4)]
    else:
        spec.attrs[which] = [value if rng.random() < 0.5 else 1 for _ in range(2)]
    spec.log.append(f"big {which} {spec.attrs[which]}")


MUTATIONS = [
    (m_attr_set, 6), (m_attr_drop, 2), (m_attr_nudge, 3), (m_dtype, 2), (m_rank, 2), (m_dim, 3), (m_values, 3),
    (m_absent, 2), (m_present, 1), (m_as_graph_input, 1), (m_tensor_proto, 2), (m_x_shape, 2), (m_x_values, 1),
    (m_threads, 1), (m_semantic, 4), (m_big_geometry, 2),
]
_WEIGHTS = np.array([w for _, w in MUTATIONS], float) / sum(w for _, w in MUTATIONS)


def make_case(seed: int, index: int, op: str) -> Spec:
    """The case (seed, index) of op: a valid node with 0-3 mutations."""
    rng = np.random.default_rng([seed, index, OPS.index(op)])
    spec = VALID[op](rng)
    n = int(rng.choice([0, 1, 1, 1, 1, 2, 2, 2, 3, 3]) if index % 20 else 0)  # every 20th case is valid
    for _ in range(n):
        fn = MUTATIONS[int(rng.choice(len(MUTATIONS), p=_WEIGHTS))][0]
        try:
            fn(spec, rng)
        except (TypeError, IndexError, KeyError, AttributeError, ValueError):
            # an earlier mutation removed what this one changes (say, the input it edits)
            spec.log.append(f"{fn.__name__} not applicable")
    if index % 20:  # the valid cases stay without Z
        _maybe_residual(spec, np.random.default_rng([seed, index, OPS.index(op), 7]))
    if not spec.log:
        spec.log.append("valid")
    return spec


def _maybe_residual(spec: Spec, rng) -> None:
    """With probability 0.4, a float op's residual Z as a graph input: of Y's shape as the node
    (mutated or not) declares it, or one dimension off, or of another element type or rank. Its own
    generator, so that the cases without Z are those of before."""
    from onnxcompress.schemas import residual_index

    z_index = residual_index(spec.op)
    if z_index is None or rng.random() >= 0.4:
        return
    shape = expected_output_shape(spec)
    if shape is None or max(shape) > MAX_X_ELEMENTS or int(np.prod(shape, dtype=object)) > MAX_X_ELEMENTS:
        return
    how = rng.choice(["same", "same", "same", "dim", "dtype", "rank"])
    if how == "dim":
        axis = int(rng.integers(0, 4))
        shape[axis] = max(shape[axis] + int(rng.choice([-1, 1])), 0)
    elif how == "rank":
        shape = shape[:3]
    z = rng.standard_normal(shape).astype(np.float64 if how == "dtype" else np.float32)
    while len(spec.inputs) < z_index:
        spec.inputs.append([f"pad{len(spec.inputs)}", None, "absent"])
    spec.inputs.insert(z_index, ["Z", z, "input"])
    spec.log.append(f"residual Z ({how})")


# ------------------------------------------------------------------ building

def _x_value(spec: Spec, rng) -> np.ndarray:
    shape = spec.x_shape
    if int(np.prod(shape, dtype=object)) > MAX_X_ELEMENTS:  # keep the batch and channels, shrink H and W
        shape = tuple(shape[:2]) + (8,) * (len(shape) - 2)
    if spec.op in U8_OPS:
        x = rng.integers(0, 256, shape).astype(np.uint8)
        if spec.x_fill in ("zeros", "sparse"):
            x[: len(x) // 2] = 0
        elif spec.x_fill in ("huge", "inf"):
            x[:] = 255
        return x
    x = rng.standard_normal(shape).astype(np.float32)
    fill = spec.x_fill
    if fill == "nan":
        x.reshape(-1)[:: 3] = np.nan
    elif fill == "inf":
        x.reshape(-1)[:: 2] = np.inf
    elif fill == "huge":
        x = np.clip(x, -1, 1) * np.float32(3e38)
    elif fill == "zeros":
        x[:] = 0
    elif fill == "sparse":
        x[np.abs(x) < 1.5] = 0
    elif fill == "denormal":
        x[:] = np.float32(1e-45)
    return x


def build(spec: Spec, seed: int = 0) -> tuple[bytes, dict[str, np.ndarray]]:
    """Model bytes (one node, opset 17 + ai.onnxcompress 1) and the feeds it runs on."""
    rng = np.random.default_rng(seed)
    names, inits, graph_inputs, feeds = [], [], [], {}
    elem = TensorProto.UINT8 if spec.op in U8_OPS else TensorProto.FLOAT
    x_type = helper.make_tensor_value_info("X", elem, ["N", "C", "H", "W"])
    graph_inputs.append(x_type)
    feeds["X"] = _x_value(spec, rng)
    for name, value, kind in spec.inputs:
        if kind == "x":
            names.append(name)
        elif kind == "absent":
            names.append("")
        elif kind == "undefined":
            names.append(name + "_undefined")
        elif kind == "raw":
            names.append(name)
            inits.append(spec.raw[name])
        elif kind == "input":
            a = np.asarray(value)
            names.append(name)
            graph_inputs.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape)))
            feeds[name] = a
        else:
            names.append(name)
            inits.append(numpy_helper.from_array(np.asarray(value), name))
    while names and names[-1] == "":
        names.pop()
    names += spec.extra_inputs
    node = helper.make_node(spec.op, names, ["Y"], domain=DOMAIN, name="fuzzed")
    for key, value in spec.attrs.items():
        if isinstance(value, list) and not value:
            node.attribute.append(helper.make_attribute(key, [], attr_type=onnx.AttributeProto.INTS))
        else:
            node.attribute.append(helper.make_attribute(key, value))
    y = helper.make_tensor_value_info("Y", elem, None)
    graph = helper.make_graph([node], "fuzz", graph_inputs, [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    model.ir_version = 9
    return model.SerializeToString(), feeds


def expected_output_bytes(spec: Spec) -> int | None:
    """Bytes of the Y that ONNX Conv's formula gives for the node as (mis)declared, or None when the
    node says too little to tell. A node that legitimately asks for a huge Y is not a memory defect."""
    shape = expected_output_shape(spec)
    if shape is None:
        return None
    return int(np.prod(shape, dtype=object)) * (1 if spec.op in U8_OPS else 4)


def expected_output_shape(spec: Spec) -> list[int] | None:
    """[N, M, OH, OW] of the Y that ONNX Conv's formula gives for the node as (mis)declared, or None."""
    try:
        a = spec.attrs

        def arr(name):
            e = spec.get(name)
            return None if e is None or e[1] is None else np.asarray(e[1])

        if spec.op == "SparseInputConv":
            m, kh, kw = arr("W").shape[0], arr("W").shape[2], arr("W").shape[3]
        elif spec.op == "BasisConv":
            m, kh, kw = arr("Coefs").shape[0], arr("Bases").shape[1], arr("Bases").shape[2]
        elif spec.op == "ClusteredSparseConv":
            m, _, kh, kw = (int(v) for v in a["weight_shape"])
        elif spec.op == "QLinearBasisMaps":
            m, kh, kw = arr("W").shape[0], arr("W").shape[2], arr("W").shape[3]
        else:
            t = arr("T")
            m, (kh, kw) = t.shape[0] * t.shape[3], a["kernel_shape"]
        n, _, h, w = spec.x_shape
        if spec.op == "QLinearBasisMaps" and a.get("channels_last") == 1:
            n, h, w, _ = spec.x_shape
        pads = a.get("pads", [0, 0, 0, 0])
        strides, dil = a.get("strides", [1, 1]), a.get("dilations", [1, 1])
        size = [0, 0]
        for axis, (extent_in, k) in enumerate(((h, kh), (w, kw))):
            s = max(int(strides[axis]), 1)
            if a.get("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER"):
                size[axis] = -(-extent_in // s)
            else:
                p = 0 if a.get("auto_pad", "NOTSET") == "VALID" else int(pads[axis]) + int(pads[axis + 2])
                size[axis] = max((extent_in + p - ((int(k) - 1) * int(dil[axis]) + 1)) // s + 1, 0)
        if min(int(n), int(m)) < 0:
            return None
        return [int(n), int(m), size[0], size[1]]
    except Exception:  # noqa: BLE001 - mutated beyond telling
        return None
