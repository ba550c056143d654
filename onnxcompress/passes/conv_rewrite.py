"""What the rewriting passes share: reading a Conv's constant weight and bias,
and building the node of our domain that takes over a Conv."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .. import DOMAIN
from ..errors import OnnxCompressError
from ..graph import constant_value, is_omitted

CONV_ATTRS = ("auto_pad", "pads", "strides", "dilations", "group", "kernel_shape")


def conv_constants(node: gs.Node, allow_dynamic: bool):
    """(weight, bias or None) of a Conv, or (None, reason) when it cannot be rewritten.

    A weight computed at run time is an error unless allow_dynamic (then: skipped).
    """
    weight = constant_value(node.inputs[1])
    if weight is None:
        if not allow_dynamic:
            raise OnnxCompressError(
                f"Conv '{node.name}': its weight '{node.inputs[1].name}' is computed at run time, not a constant; "
                "onnxcompress needs constant weights (pass --allow-dynamic-weights to leave such Conv nodes alone)"
            )
        return None, "weight is not a constant"
    bias = None
    if len(node.inputs) > 2 and not is_omitted(node.inputs[2]):
        bias = constant_value(node.inputs[2])
        if bias is None:
            if not allow_dynamic:
                raise OnnxCompressError(
                    f"Conv '{node.name}': its bias '{node.inputs[2].name}' is not a constant "
                    "(pass --allow-dynamic-weights to leave such Conv nodes alone)"
                )
            return None, "bias is not a constant"
    if weight.ndim != 4:
        return None, f"{weight.ndim - 2}-D convolution (only 2-D is supported)"
    if weight.dtype != np.float32 or (bias is not None and bias.dtype != np.float32):
        return None, f"weights are {weight.dtype}, not float32"
    return (weight, bias), ""


def make_custom_conv(node: gs.Node, op: str, inputs: list, extra_attrs: dict) -> gs.Node:
    """A node of our domain that takes over `node`'s Conv attributes and outputs."""
    attrs = {k: node.attrs[k] for k in CONV_ATTRS if k in node.attrs}
    attrs.update(extra_attrs)
    new = gs.Node(op=op, name=node.name, attrs=attrs, inputs=inputs, outputs=list(node.outputs), domain=DOMAIN)
    node.outputs.clear()
    return new


# ---------------------------------------------------------------- shared options
# Every rewriting pass honours three context options (PassContext.options), read here once:
# - "layers": the Conv node names it may rewrite (a collection, or a comma-separated string;
#   None: every Conv); the others are left alone with the reason "not among --layers";
# - "reference_model": the model whose Conv outputs are the fitting targets (None: the pass's
#   input model). The planner fits a mixed plan one group of layers at a time, each group on
#   the inputs of the model as already compressed and against the original model's outputs;
# - "independent": fit every layer on the input model's activations instead of sequentially
#   on the model as compressed so far (each fit is then right for its layer replaced alone).

LAYERS_EXCLUDED = "not among the layers chosen (--layers)"


def chosen_layers(ctx, graph: gs.Graph):
    """f(node) -> "" when the pass may rewrite `node`, else the reason it may not.

    Names in ctx.options["layers"] that are no Conv node of the graph are an error."""
    given = ctx.options.get("layers")
    if given is None:
        return lambda node: ""
    names = {s.strip() for s in given.split(",")} if isinstance(given, str) else {str(s) for s in given}
    names.discard("")
    convs = {n.name for n in graph.nodes if n.op == "Conv" and not n.domain}
    unknown = sorted(names - convs)
    if unknown:
        raise OnnxCompressError(f"--layers names {unknown[:5]}, which {'is' if len(unknown) == 1 else 'are'} no Conv "
                                "node of the model (see onnxcompress inspect for the names)")
    return lambda node: "" if node.name in names else LAYERS_EXCLUDED


def eligible_layers(graph: gs.Graph, ctx, allow_dynamic: bool, check=None):
    """The standard-domain Conv nodes of `graph` (in its order) a rewriting pass may take:
    (layers, skipped, order). layers: a techniques.Layer for each Conv among the chosen layers
    (ctx "layers") with constant float32 2-D weights for which check(layer) (a technique's
    applies_to) gives no reason; skipped: name -> LayerRecord with the reason for the others;
    order: every Conv's name."""
    from ..techniques.base import Layer
    from .base import LayerRecord

    excluded = chosen_layers(ctx, graph)
    layers, skipped, order = [], {}, []
    for node in [n for n in graph.nodes if n.op == "Conv" and not n.domain]:
        order.append(node.name)
        reason, layer = excluded(node), None
        if not reason:
            constants, reason = conv_constants(node, allow_dynamic)
        if not reason:
            layer = Layer(node, constants[0], constants[1], index=len(layers))
            reason = (check(layer) if check is not None else None) or ""
        if reason:
            skipped[node.name] = LayerRecord(node.name, "Conv", "skipped", reason)
        else:
            layers.append(layer)
    return layers, skipped, order


def build_into(model, technique, fits: dict, layers: dict, opts: dict):
    """(`model` with each layer named in `fits` replaced by technique.build of its fit, {name: the
    nodes built}). layers: name -> techniques.Layer (weights and extra; the node is looked up in
    `model`'s graph, by name, among the standard-domain nodes); a layer not in it is given to
    build with its node only (a technique whose build needs no weights: falcon)."""
    from ..graph import to_graph, to_model
    from ..techniques.base import Layer

    graph = to_graph(model)
    nodes = {n.name: n for n in graph.nodes if not n.domain and n.name in fits}
    built = {}
    for name, fitted in fits.items():
        if name not in nodes:
            raise OnnxCompressError(f"{technique.name}: no node '{name}' left to replace")
        layer = layers.get(name) or Layer(None, None, None)
        new = technique.build(Layer(nodes[name], layer.weight, layer.bias, layer.index, layer.extra), fitted,
                              graph, opts)
        if not any(n.name == name for n in new):
            raise OnnxCompressError(f"technique {technique.name}: build() must give one node the layer's name "
                                    f"'{name}' (layers are found by name)")
        graph.nodes.extend(new)
        built[name] = new
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return to_model(graph, model), built


def reference_model(model, ctx):
    """The model whose outputs the pass fits its layers to (ctx "reference_model", else `model`)."""
    ref = ctx.options.get("reference_model")
    return model if ref is None else ref


def fits_independently(ctx) -> bool:
    return bool(ctx.options.get("independent"))
