"""Malformed model files for the command line (`onnxcompress inspect / optimize / compare`).

A corpus of valid models (a small ResNet-like CNN, the same rewritten by every
method so that our custom ops appear, and the bundled digits CNN) is written
once by `prepare_corpus`; each case (seed, index) picks one, damages it (bytes
or protobuf structure: truncation, random bytes, cycles, missing inputs, huge
declared shapes, external data outside the model's folder, malformed custom
nodes, NaN weights, ...), writes it into the case's folder and picks a command.
"""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import opcases

REPO = Path(__file__).resolve().parents[2]
COMMANDS = ("inspect", "inspect-json", "optimize", "compare")
METHODS = ("falcon", "cluspa", "penni", "tabconv")


def _modelgen():
    sys.path.insert(0, str(REPO / "tests"))
    import modelgen  # noqa: PLC0415 - the tests' own model builder

    return modelgen


def prepare_corpus(folder: Path) -> Path:
    """Writes the base models and a calibration .npz into `folder` (idempotent); returns it."""
    folder = Path(folder)
    done = folder / "corpus.json"
    if done.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    from onnxcompress.model_io import save_model
    from onnxcompress.optimizer import optimize

    base = _modelgen().small_resnet(seed=1, channels=4)
    onnx.save(base, str(folder / "small.onnx"))
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((8, 3, 16, 16)).astype(np.float32)
    np.savez(folder / "calib.npz", input=calib)
    feeds = [{"input": calib[i:i + 4]} for i in range(0, 8, 4)]
    names = ["small.onnx"]
    for method, options in (("falcon", {"select": "all"}), ("cluspa", {"data_free": True}),
                            ("penni", {"data_free": True}), ("tabconv", {"classifier": True})):
        with warnings.catch_warnings():  # 8 random calibration inputs are not representative: fine here
            warnings.simplefilter("ignore")
            out, _ = optimize(onnx.ModelProto.FromString(base.SerializeToString()), method,
                              calib_feeds=feeds if method == "tabconv" else None, **options)
        save_model(out, folder / f"small.{method}.onnx")
        names.append(f"small.{method}.onnx")
    shutil.copy(REPO / "models" / "digits_cnn.onnx", folder / "digits.onnx")
    names.append("digits.onnx")
    done.write_text(json.dumps({"models": names}))
    return folder


def corpus_models(folder: Path) -> list[str]:
    return json.loads((Path(folder) / "corpus.json").read_text())["models"]


# ------------------------------------------------------------------ damage

def _pick(rng, seq):
    return seq[int(rng.integers(0, len(seq)))]


def bytes_truncate(data: bytes, rng) -> tuple[bytes, str]:
    cut = int(rng.integers(0, len(data)))
    return data[:cut], f"truncated to {cut} of {len(data)} bytes"


def bytes_flip(data: bytes, rng) -> tuple[bytes, str]:
    b = bytearray(data)
    n = int(_pick(rng, [1, 2, 8, 64]))
    for pos in rng.integers(0, len(b), n):
        b[pos] = int(rng.integers(0, 256))
    return bytes(b), f"{n} random bytes changed"


def bytes_random(data: bytes, rng) -> tuple[bytes, str]:
    n = int(_pick(rng, [0, 1, 16, 1000, 100000]))
    return rng.integers(0, 256, n, dtype=np.uint8).tobytes(), f"{n} random bytes"


def bytes_splice(data: bytes, rng) -> tuple[bytes, str]:
    a, b = sorted(int(v) for v in rng.integers(0, len(data), 2))
    return data[:a] + data[b:] + data[a:b], f"bytes {a}:{b} moved to the end"


BYTE_DAMAGE = [bytes_truncate, bytes_flip, bytes_random, bytes_splice]


def _custom_nodes(model):
    return [n for n in model.graph.node if n.domain == opcases.DOMAIN]


def p_cycle(model, rng, folder) -> str:
    nodes = model.graph.node
    if len(nodes) < 2:
        return p_self_loop(model, rng, folder)
    i, j = sorted(int(v) for v in rng.choice(len(nodes), 2, replace=False))
    if not nodes[i].input or not nodes[j].output:
        return p_self_loop(model, rng, folder)
    nodes[i].input[0] = nodes[j].output[0]
    return f"cycle: node {i} ({nodes[i].op_type}) reads node {j} ({nodes[j].op_type})"


def p_self_loop(model, rng, folder) -> str:
    n = _pick(rng, list(model.graph.node))
    if n.input and n.output:
        n.input[0] = n.output[0]
    return f"self-loop on {n.op_type}"


def p_missing_input(model, rng, folder) -> str:
    n = _pick(rng, list(model.graph.node))
    if not n.input:
        n.input.append("nowhere")
    k = int(rng.integers(0, len(n.input)))
    n.input[k] = "nowhere_" + str(k)
    return f"{n.op_type} input {k} undefined"


def p_remove(model, rng, folder) -> str:
    what = _pick(rng, ["initializer", "graph_input", "graph_output", "node", "all_nodes", "opset"])
    g = model.graph
    if what == "initializer" and len(g.initializer):
        name = g.initializer[int(rng.integers(0, len(g.initializer)))].name
        g.initializer.remove(next(t for t in g.initializer if t.name == name))
        return f"initializer {name} removed"
    if what == "graph_input" and len(g.input):
        del g.input[:]
        return "graph inputs removed"
    if what == "graph_output":
        del g.output[:]
        return "graph outputs removed"
    if what == "node" and len(g.node) > 1:
        k = int(rng.integers(0, len(g.node)))
        op = g.node[k].op_type
        del g.node[k]
        return f"node {k} ({op}) removed"
    if what == "opset":
        del model.opset_import[:]
        return "opset imports removed"
    del g.node[:]
    return "all nodes removed"


def p_huge_shape(model, rng, folder) -> str:
    g = model.graph
    targets = list(g.input) + list(g.value_info) + list(g.output)
    vi = _pick(rng, targets)
    t = vi.type.tensor_type
    how = _pick(rng, ["huge", "negative", "zero", "rank", "elem_type", "param"])
    if how == "rank":
        t.shape.dim.add().dim_value = 1
        return f"{vi.name}: an extra dim"
    if how == "elem_type":
        t.elem_type = int(_pick(rng, [TensorProto.INT64, TensorProto.STRING, TensorProto.DOUBLE, 0]))
        return f"{vi.name}: elem_type {t.elem_type}"
    if not len(t.shape.dim):
        for _ in range(4):
            t.shape.dim.add().dim_value = 1
    d = t.shape.dim[int(rng.integers(0, len(t.shape.dim)))]
    value = {"huge": int(_pick(rng, [1 << 20, 1 << 31, 1 << 40, (1 << 63) - 1])), "negative": -1, "zero": 0,
             "param": None}[how]
    if value is None:
        d.dim_param = "dyn"
    else:
        d.dim_value = value
    return f"{vi.name}: dim {how} {value}"


def p_external_outside(model, rng, folder) -> str:
    """An initializer whose external data lies outside the model's folder (or is a link out of it)."""
    inits = [t for t in model.graph.initializer if t.raw_data or t.float_data]
    if not inits:
        return p_remove(model, rng, folder)
    t = _pick(rng, inits)
    arr = numpy_helper.to_array(t)
    outside = folder.parent / "outside.bin"
    outside.write_bytes(arr.tobytes())
    how = _pick(rng, ["parent", "absolute", "symlink", "missing", "huge_offset", "huge_length"])
    location = {"parent": "../outside.bin", "absolute": str(outside), "symlink": "link.bin",
                "missing": "no_such.bin", "huge_offset": "inside.bin", "huge_length": "inside.bin"}[how]
    if how == "symlink":
        (folder / "link.bin").symlink_to(outside)
    if how.startswith("huge"):
        (folder / "inside.bin").write_bytes(arr.tobytes())
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    entries = [("location", location)]
    if how == "huge_offset":
        entries.append(("offset", str(1 << 40)))
    if how == "huge_length":
        entries.append(("length", str(1 << 40)))
    for key, value in entries:
        e = t.external_data.add()
        e.key, e.value = key, value
    return f"{t.name}: external data {how} ({location})"


def p_custom_node(model, rng, folder) -> str:
    """A custom node's attributes or initializers damaged as the op fuzzer does."""
    nodes = _custom_nodes(model)
    if not nodes:
        return p_weights(model, rng, folder)
    n = _pick(rng, nodes)
    inits = {t.name: t for t in model.graph.initializer}
    how = _pick(rng, ["attr", "attr", "init_values", "init_shape", "init_dtype"])
    if how == "attr":
        kinds = {**opcases.CONV_ATTRS, **opcases.OP_ATTRS.get(n.op_type, {})}
        name = _pick(rng, sorted(kinds))
        value = opcases._attr_value(rng, kinds[name])
        for a in list(n.attribute):
            if a.name == name:
                n.attribute.remove(a)
        n.attribute.append(helper.make_attribute(name, value, attr_type=onnx.AttributeProto.INTS)
                           if value == [] else helper.make_attribute(name, value))
        return f"{n.op_type} attr {name} = {value!r}"
    names = [x for x in n.input[1:] if x in inits]
    if not names:
        return p_missing_input(model, rng, folder)
    t = inits[_pick(rng, names)]
    a = numpy_helper.to_array(t).copy()
    if how == "init_values" and a.size:
        a.reshape(-1)[int(rng.integers(0, a.size))] = opcases._special(a.dtype, rng, 1000)
    elif how == "init_shape":
        a = a.reshape(-1)[: max(a.size - 1, 0)]
    else:
        with np.errstate(all="ignore"):
            a = a.astype(_pick(rng, [np.float64, np.int64, np.int8, np.float16]))
    t.CopyFrom(numpy_helper.from_array(a, t.name))
    return f"{n.op_type} initializer {t.name} {how}"


def p_weights(model, rng, folder) -> str:
    """Conv weights with NaN, inf, huge or all-zero values, or a weight of the wrong rank."""
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    inits = {t.name: t for t in model.graph.initializer}
    convs = [n for n in convs if len(n.input) > 1 and n.input[1] in inits]
    if not convs:
        return p_custom_node(model, rng, folder) if _custom_nodes(model) else p_huge_shape(model, rng, folder)
    n = _pick(rng, convs)
    t = inits[n.input[1]]
    w = numpy_helper.to_array(t).copy()
    how = _pick(rng, ["nan", "inf", "huge", "zeros", "rank3", "denormal"])
    if how == "nan":
        w.reshape(-1)[:: 7] = np.nan
    elif how == "inf":
        w.reshape(-1)[0] = np.inf
    elif how == "huge":
        w *= np.float32(1e37)
    elif how == "zeros":
        w[:] = 0
    elif how == "denormal":
        w[:] = np.float32(1e-45)
    else:
        w = w.reshape(w.shape[0], w.shape[1], -1)
    t.CopyFrom(numpy_helper.from_array(w.astype(np.float32), t.name))
    return f"Conv {n.name} weights {how}"


def p_versions(model, rng, folder) -> str:
    how = _pick(rng, ["ir0", "ir100", "opset1", "opset99", "domain99", "op_type", "duplicate_output"])
    if how == "ir0":
        model.ir_version = 0
    elif how == "ir100":
        model.ir_version = 100
    elif how in ("opset1", "opset99"):
        for o in model.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = 1 if how == "opset1" else 99
    elif how == "domain99":
        model.opset_import.append(helper.make_opsetid(opcases.DOMAIN, 99))
    elif how == "op_type":
        _pick(rng, list(model.graph.node)).op_type = "NoSuchOp"
    else:
        nodes = model.graph.node
        if len(nodes) >= 2:
            nodes[1].output[0] = nodes[0].output[0]
    return f"versions: {how}"


PROTO_DAMAGE = [(p_cycle, 2), (p_self_loop, 1), (p_missing_input, 2), (p_remove, 2), (p_huge_shape, 3),
                (p_external_outside, 2), (p_custom_node, 4), (p_weights, 2), (p_versions, 2)]
_PW = np.array([w for _, w in PROTO_DAMAGE], float) / sum(w for _, w in PROTO_DAMAGE)


def make_case(seed: int, index: int, corpus: Path, folder: Path) -> dict:
    """Writes case (seed, index) into `folder` (model at folder/model/model.onnx); returns
    {"argv": [...], "log": [...], "base": name}. argv paths are relative to `folder`."""
    rng = np.random.default_rng([seed, index, 99])
    names = corpus_models(corpus)
    base = _pick(rng, names)
    model_dir = folder / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    data = (Path(corpus) / base).read_bytes()
    log = [f"base {base}"]
    if index % 25 == 0:
        out = data
        log.append("valid")
    elif rng.random() < 0.3:
        out, what = _pick(rng, BYTE_DAMAGE)(data, rng)
        log.append(what)
    else:
        model = onnx.ModelProto.FromString(data)
        for _ in range(int(rng.choice([1, 1, 1, 2, 2, 3]))):
            fn = PROTO_DAMAGE[int(rng.choice(len(PROTO_DAMAGE), p=_PW))][0]
            try:
                log.append(fn(model, rng, model_dir))
            except Exception:  # noqa: BLE001 - onnx's own ValidationError on already damaged tensors too
                log.append(f"{fn.__name__} not applicable")  # an earlier damage removed what it edits
        out = model.SerializeToString()
    (model_dir / "model.onnx").write_bytes(out)
    shutil.copy(Path(corpus) / "calib.npz", folder / "calib.npz")
    command = _pick(rng, ["inspect", "inspect-json", "optimize", "optimize", "optimize", "compare"])
    model_arg = "model/model.onnx"
    if command == "inspect":
        argv = ["inspect", model_arg]
    elif command == "inspect-json":
        argv = ["inspect", "--json", model_arg]
    elif command == "compare":
        other = "model/base.onnx"
        shutil.copy(Path(corpus) / base, folder / other)
        pair = [model_arg, other] if rng.random() < 0.5 else [other, model_arg]
        argv = ["compare", *pair, "--random", "2"]
    else:
        method = _pick(rng, list(METHODS))
        argv = ["optimize", model_arg, "-o", "out.onnx", "--method", method]
        if method == "tabconv" or rng.random() < 0.3:
            argv += ["--calib", "calib.npz", "--calib-limit", "4"]
        elif method in ("cluspa", "penni"):
            argv += ["--data-free"]
        if method == "falcon" and "--calib" not in argv:
            argv += ["--select", "all"]
        if rng.random() < 0.2:
            argv += ["--verify"]
    log.append("command " + " ".join(argv))
    return {"argv": argv, "log": log, "base": base}
