"""onnx schemas of the ai.onnxcompress operators, so that onnx.checker and onnx
shape inference accept rewritten models. Each op's schema is written by the
technique owning it (`OpSpec.schema` in onnxcompress/techniques/); this module
holds what they share (Conv's attributes, the formal parameters, shape
inference for a Conv-like op) and registers every registered technique's ops
with onnx. The kernels themselves validate again at session creation;
docs/ops.md is the reference."""

from __future__ import annotations

import onnx
from onnx.defs import OpSchema

from . import DOMAIN

ATTR = OpSchema.AttrType
FLOAT_T = [("T", ["tensor(float)"], "32-bit float tensors")]


def conv_attributes() -> list[OpSchema.Attribute]:
    """Conv's attributes and the fused activation, which every op of ours takes."""
    return [
        OpSchema.Attribute("auto_pad", ATTR.STRING, "as ONNX Conv", required=False),
        OpSchema.Attribute("pads", ATTR.INTS, "as ONNX Conv: [top, left, bottom, right]", required=False),
        OpSchema.Attribute("strides", ATTR.INTS, "as ONNX Conv", required=False),
        OpSchema.Attribute("dilations", ATTR.INTS, "as ONNX Conv", required=False),
        OpSchema.Attribute("group", ATTR.INT, "as ONNX Conv", required=False),
        OpSchema.Attribute("kernel_shape", ATTR.INTS, "as ONNX Conv; must match the weights", required=False),
        OpSchema.Attribute("activation", ATTR.STRING, "fused activation: '', 'Relu' or 'Clip'", required=False),
        OpSchema.Attribute("clip_min", ATTR.FLOAT, "lower bound of a fused Clip", required=False),
        OpSchema.Attribute("clip_max", ATTR.FLOAT, "upper bound of a fused Clip", required=False),
    ]


def param(name: str, doc: str, optional: bool = False) -> OpSchema.FormalParameter:
    """A float input or output ("T") of one of our ops."""
    option = OpSchema.FormalParameterOption.Optional if optional else OpSchema.FormalParameterOption.Single
    return OpSchema.FormalParameter(name, "T", doc, param_option=option)


RESIDUAL = "Z"


def conv_op_schema(name: str, doc: str, inputs: list, attributes: list | None = None,
                   type_constraints: list | None = None, inference=None) -> OpSchema:
    """The schema of an op of ours computing (or approximating) a 2-D Conv: output Y [N, M, OH, OW],
    Conv's attributes plus `attributes`, float T plus `type_constraints`, and after `inputs` the
    optional residual Z of Y's shape (Y = activation(conv + Z), the kernels' Epilogue; what
    passes/fuse_residual.py writes). inference: an onnx shape inference function (e.g.
    conv_like_inference(...)), or None for Conv's own."""
    inputs = list(inputs) + [param(RESIDUAL, "residual [N, M, OH, OW] added before the activation", optional=True)]
    schema = OpSchema(name, DOMAIN, 1, doc, inputs=inputs, outputs=[param("Y", "output [N, M, OH, OW]")],
                      type_constraints=FLOAT_T + list(type_constraints or []),
                      attributes=conv_attributes() + list(attributes or []))
    schema.set_type_and_shape_inference_function(
        inference or onnx.defs.get_schema("Conv", 11).get_type_and_shape_inference_function())
    return schema


def conv_like_inference(filter_of, elem_type: int = onnx.TensorProto.FLOAT, channels_last=None):
    """Shape inference for an op that computes (or approximates) a Conv: Y [N, M, OH, OW]
    from X [N, C, H, W] and Conv's attributes. `filter_of(dims, attr)` gives
    (M, (kH, kW)) from the node's input shapes and attributes, or None if unknown.
    elem_type: Y's element type; channels_last(attr): whether X is [N, H, W, C] and Y
    [N, OH, OW, M] (None: never)."""
    from onnx import TypeProto

    def infer(ctx) -> None:
        def dims(i):
            t = ctx.get_input_type(i) if i < ctx.get_num_inputs() and ctx.has_input(i) else None
            if t is None or not t.tensor_type.HasField("shape"):
                return None
            return [d.dim_value if d.HasField("dim_value") else None for d in t.tensor_type.shape.dim]

        def attr(name, default):
            a = ctx.get_attribute(name)
            return default if a is None else onnx.helper.get_attribute_value(a)

        out = TypeProto()
        out.tensor_type.elem_type = elem_type
        x, found = dims(0), None
        last = channels_last is not None and channels_last(attr)
        if x is not None and len(x) == 4:
            found = filter_of(dims, attr)
            if last:
                x = [x[0], x[3], x[1], x[2]]
        if found is not None:
            m, kernel = found
            auto_pad = attr("auto_pad", b"NOTSET")
            auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
            pads, strides, dil = attr("pads", [0, 0, 0, 0]), attr("strides", [1, 1]), attr("dilations", [1, 1])
            shape = [None, m, None, None]
            for axis in range(2):
                size, k = x[2 + axis], kernel[axis]
                if size is None or k is None:
                    continue
                extent = (k - 1) * dil[axis] + 1
                if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                    shape[2 + axis] = -(-size // strides[axis])
                elif auto_pad == "VALID":
                    shape[2 + axis] = (size - extent) // strides[axis] + 1
                else:
                    shape[2 + axis] = (size + pads[axis] + pads[axis + 2] - extent) // strides[axis] + 1
            for i, v in enumerate([shape[i] for i in ((0, 2, 3, 1) if last else range(4))]):
                dim = out.tensor_type.shape.dim.add()
                if i == 0:
                    dim.CopyFrom(ctx.get_input_type(0).tensor_type.shape.dim[0])
                elif v is not None:
                    dim.dim_value = v
        ctx.set_output_type(0, out)

    return infer


_registered: set[str] = set()


def register_schemas() -> None:
    """Registers the schemas of every registered technique's ops with onnx (idempotent; a technique
    registered later gets its ops registered on the next call)."""
    from .techniques import all_ops

    for spec in all_ops():
        if spec.name in _registered:
            continue
        schema = spec.schema()
        if schema.name != spec.name or schema.domain != DOMAIN:
            raise ValueError(f"OpSpec {spec.name}: its schema is {schema.domain}.{schema.name}")
        try:
            onnx.defs.get_schema(schema.name, schema.since_version, schema.domain)
        except onnx.defs.SchemaError:
            onnx.defs.register_schema(schema)
        _registered.add(spec.name)


def residual_index(op_type: str) -> int | None:
    """The input index of the residual Z in the schema of our op `op_type`, or None when it takes none."""
    register_schemas()
    try:
        schema = onnx.defs.get_schema(op_type, 1, DOMAIN)
    except onnx.defs.SchemaError:
        return None
    names = [p.name for p in schema.inputs]
    return names.index(RESIDUAL) if RESIDUAL in names else None
