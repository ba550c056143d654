"""What a model's convolutions cost: shapes from onnx shape inference, MACs at
batch 1, parameters, and whether each input comes from a ReLU-like producer."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx

from . import DOMAIN, schemas
from .graph import constant_input, is_omitted, nonnegative_source, to_graph
from .techniques import op_owner



@dataclass
class ConvInfo:
    name: str
    op: str
    input_shape: list | None
    output_shape: list | None
    kernel: list
    stride: list
    dilation: list
    group: int
    in_channels: int
    out_channels: int
    macs: int | None          # at batch 1
    params: int
    relu_input: str | None    # the ReLU-like producer, if any

    def as_dict(self) -> dict:
        return asdict(self)


def _dims(value_info) -> list | None:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or UNKNOWN_DIM) for d in t.shape.dim]


UNKNOWN_DIM = "?"


def _without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` for shape inference: initializers over 4 KiB (weights) become typed graph inputs of
    their dims, so that the weights are not copied; small ones (a Reshape's shape, ...) stay whole
    for data propagation."""
    g = model.graph
    declared = {i.name for i in g.input}
    small = [t for t in g.initializer if t.ByteSize() <= 4096]
    stubs = [onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in g.initializer
             if t.ByteSize() > 4096 and t.name not in declared]
    return onnx.helper.make_model(onnx.helper.make_graph(g.node, g.name, list(g.input) + stubs, g.output, small,
                                                         value_info=g.value_info),
                                  opset_imports=model.opset_import, ir_version=model.ir_version,
                                  functions=model.functions)


def inferred_shapes(model: onnx.ModelProto) -> dict[str, list]:
    """Tensor name -> shape (ints, or strings for symbolic dims; UNKNOWN_DIM where onnx does not
    know one) by onnx shape inference (the model's own shapes where it fails)."""
    schemas.register_schemas()
    try:
        inferred = onnx.shape_inference.infer_shapes(_without_weights(model), data_prop=True)
    except Exception:
        inferred = model
    shapes = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = _dims(vi)
        if dims is not None:
            shapes[vi.name] = dims
    return shapes


def conv_output_size(size: int, kernel: int, stride: int, dilation: int, pad_begin: int, pad_end: int) -> int:
    return (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1


def dense_weight_shape(node, shapes: dict[str, list]) -> list[int] | None:
    """[M, C/group, kH, kW] of the Conv a node computes or approximates.

    Conv carries W as input 1; our ops store the layer in the form of the technique owning
    them (shared values, bases and coefficients, tables), which reads the shape back
    (OpSpec.dense_shape, onnxcompress.techniques)."""
    if node.domain == DOMAIN:
        owner = op_owner(node.op)
        return owner[1].dense_shape(node) if owner is not None else None
    weight = constant_input(node, 1)
    if weight is not None:
        return list(weight.shape)
    return shapes.get(node.inputs[1].name) if len(node.inputs) > 1 else None


def _has_bias(node) -> bool:
    """Whether the node is given its bias input ("B" in our schemas, input 2 of Conv)."""
    index = 2
    if node.domain == DOMAIN:
        names = [p.name for p in onnx.defs.get_schema(node.op, 1, DOMAIN).inputs]
        if "B" not in names:
            return False
        index = names.index("B")
    return len(node.inputs) > index and not is_omitted(node.inputs[index])


def analyse_convs(model: onnx.ModelProto) -> list[ConvInfo]:
    """One row per Conv and per op of ours that computes or approximates one; MACs and
    parameters are those of the dense Conv (what the layer costs before rewriting)."""
    shapes = inferred_shapes(model)
    graph = to_graph(model)
    rows = []
    for node in graph.nodes:
        if not ((node.op == "Conv" and not node.domain) or (node.domain == DOMAIN and op_owner(node.op))):
            continue
        w_shape = dense_weight_shape(node, shapes)
        x_shape = shapes.get(node.inputs[0].name)
        y_shape = shapes.get(node.outputs[0].name)
        group = int(node.attrs.get("group", 1))
        kernel = list(node.attrs.get("kernel_shape", w_shape[2:] if w_shape else []))
        out_ch = int(w_shape[0]) if w_shape else 0
        in_ch = int(w_shape[1]) * group if w_shape and len(w_shape) > 1 else 0
        macs = None
        if w_shape and y_shape and all(isinstance(d, int) for d in y_shape[2:]):
            macs = int(np.prod(y_shape[2:])) * out_ch * int(np.prod(w_shape[1:]))
        params = int(np.prod(w_shape)) + (out_ch if _has_bias(node) else 0) if w_shape else 0
        spatial = max(len(kernel), 1)
        rows.append(
            ConvInfo(
                name=node.name,
                op=node.op if not node.domain else f"{node.domain}.{node.op}",
                input_shape=x_shape,
                output_shape=y_shape,
                kernel=[int(k) for k in kernel],
                stride=[int(s) for s in node.attrs.get("strides", [1] * spatial)],
                dilation=[int(d) for d in node.attrs.get("dilations", [1] * spatial)],
                group=group,
                in_channels=in_ch,
                out_channels=out_ch,
                macs=macs,
                params=params,
                relu_input=nonnegative_source(node.inputs[0]),
            )
        )
    return rows


def with_input_shape(model: onnx.ModelProto, shape: list[int]) -> onnx.ModelProto:
    """A copy of a single-input model whose input has the fixed `shape` (for shape inference:
    MACs of models exported with symbolic H and W)."""
    from .errors import OnnxCompressError

    inits = {t.name for t in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in inits]
    if len(inputs) != 1:
        raise OnnxCompressError(f"--input-shape applies to single-input models; this one has {len(inputs)} inputs")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(shape) != len(dims) or min(shape, default=0) < 1:
        raise OnnxCompressError(f"--input-shape {shape}: the input '{inputs[0].name}' has rank {len(dims)}; give "
                                f"{len(dims)} positive sizes")
    for d, v in zip(dims, shape):
        if d.HasField("dim_value") and d.dim_value != v:
            raise OnnxCompressError(f"--input-shape {shape}: the input '{inputs[0].name}' fixes "
                                    f"{[x.dim_value if x.HasField('dim_value') else '?' for x in dims]}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    vi = next(v for v in out.graph.input if v.name == inputs[0].name)
    for d, v in zip(vi.type.tensor_type.shape.dim, shape):
        d.dim_value = v
    del out.graph.value_info[:]  # inferred for the symbolic shape: infer again
    return out


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Bytes of constant tensors: initializers and the values of Constant nodes."""
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            tensors.extend(a.t for a in node.attribute if a.name == "value")
    return sum(onnx.numpy_helper.to_array(t).nbytes for t in tensors)
