"""Small helpers over onnx-graphsurgeon shared by the passes: conversion to and
from ModelProto that keeps what graphsurgeon does not carry, and the questions
passes ask about nodes (constant inputs, consumers, non-negative producers)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from . import DOMAIN
from .errors import OnnxCompressError


def to_graph(model: onnx.ModelProto) -> gs.Graph:
    try:
        return gs.import_onnx(model)
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise OnnxCompressError(f"the model's graph cannot be read: {type(exc).__name__}: {exc}") from None


def to_model(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """Exports `graph`, keeping `like`'s IR version, opset imports and metadata."""
    try:
        model = gs.export_onnx(graph, do_type_check=False)
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        # onnx-graphsurgeon cannot write back what it read: an empty list attribute (no type
        # to infer), a string attribute that is not UTF-8 (fuzz cases cli seed 2026 1194, 1456)
        raise OnnxCompressError(f"the model's graph cannot be rewritten: {type(exc).__name__}: {exc}") from None
    model.ir_version = like.ir_version
    opsets = {o.domain: o.version for o in like.opset_import}
    for o in model.opset_import:
        opsets.setdefault(o.domain, o.version)
    if any(n.domain == DOMAIN for n in model.graph.node):
        opsets.setdefault(DOMAIN, 1)
    del model.opset_import[:]
    model.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in sorted(opsets.items()))
    for field in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(model, field, getattr(like, field))
    del model.metadata_props[:]
    model.metadata_props.extend(like.metadata_props)
    return model


def constant_value(tensor) -> np.ndarray | None:
    """The value of a graphsurgeon tensor if it is a constant (initializer or Constant node)."""
    if isinstance(tensor, gs.Constant):
        return tensor.values
    if isinstance(tensor, gs.Variable) and len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        value = tensor.inputs[0].attrs.get("value")
        if isinstance(value, gs.Constant):
            return value.values
    return None


def is_omitted(tensor) -> bool:
    return tensor is None or (isinstance(tensor, gs.Variable) and tensor.name == "")


def constant_input(node: gs.Node, index: int) -> np.ndarray | None:
    """The constant value of `node`'s input `index`, or None when it is absent, omitted or computed."""
    if len(node.inputs) <= index or is_omitted(node.inputs[index]):
        return None
    return constant_value(node.inputs[index])


def producer(tensor):
    return tensor.inputs[0] if len(tensor.inputs) == 1 else None


def single_consumer(tensor, graph: gs.Graph):
    """The one node reading `tensor`, or None if it has several or is a graph output."""
    if tensor in graph.outputs or len(tensor.outputs) != 1:
        return None
    return tensor.outputs[0]


def clip_bounds(node: gs.Node) -> tuple[float, float] | None:
    """(min, max) of a Clip node if both are constant (missing = unbounded)."""
    lo, hi = -np.inf, np.inf
    if "min" in node.attrs or "max" in node.attrs:  # opset < 11
        lo, hi = float(node.attrs.get("min", lo)), float(node.attrs.get("max", hi))
    for index in (1, 2):
        if len(node.inputs) > index and not is_omitted(node.inputs[index]):
            value = constant_value(node.inputs[index])
            if value is None or value.size != 1:
                return None
            if index == 1:
                lo = float(value.reshape(()))
            else:
                hi = float(value.reshape(()))
    return lo, hi


# Ops whose output is zero wherever their (non-negative) input is zero enough to
# keep it sparse and non-negative.
_PASS_THROUGH = {"MaxPool", "Identity", "Dropout"}


def nonnegative_source(tensor, depth: int = 0) -> str | None:
    """Names the ReLU-like producer that makes `tensor` non-negative and sparse, or None."""
    node = producer(tensor)
    if node is None or depth > 16:
        return None
    if node.op == "Relu":
        return "Relu"
    if node.op == "Clip":
        bounds = clip_bounds(node)
        return "Clip" if bounds is not None and bounds[0] >= 0 else None
    if node.domain == DOMAIN:
        act = node.attrs.get("activation", "")
        if act == "Relu" or (act == "Clip" and float(node.attrs.get("clip_min", -np.inf)) >= 0):
            return f"{node.op}+{act}"
        return None
    if node.op in _PASS_THROUGH:
        inner = nonnegative_source(node.inputs[0], depth + 1)
        return f"{inner}->{node.op}" if inner else None
    if node.op == "Pad":
        mode = node.attrs.get("mode", "constant")
        value = constant_value(node.inputs[2]) if len(node.inputs) > 2 and not is_omitted(node.inputs[2]) else 0.0
        if mode == "constant" and value is not None and np.all(np.asarray(value) >= 0):
            inner = nonnegative_source(node.inputs[0], depth + 1)
            return f"{inner}->Pad" if inner else None
        return None
    if node.op == "Concat":
        inner = [nonnegative_source(t, depth + 1) for t in node.inputs]
        return "Concat(" + ",".join(inner) + ")" if all(inner) else None
    return None


def unique_name(graph: gs.Graph, base: str) -> str:
    taken = set(graph.tensors().keys()) | {n.name for n in graph.nodes}
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


def set_conv_parameters(graph: gs.Graph, node: gs.Node, weight: np.ndarray, bias: np.ndarray | None) -> None:
    """Gives `node` (a Conv or one of our conv-like ops, X first) new weight and bias
    initializers under fresh names, adding the bias input if it had none.
    Old initializers are left for dead-code elimination."""
    base = node.name or "conv"
    x = node.inputs[0]
    inputs = [x, gs.Constant(unique_name(graph, f"{base}.weight"), np.ascontiguousarray(weight))]
    if bias is not None:
        inputs.append(gs.Constant(unique_name(graph, f"{base}.bias"), np.ascontiguousarray(bias)))
    node.inputs.clear()
    node.inputs.extend(inputs)
