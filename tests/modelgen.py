"""Small synthetic ONNX models for the tests, built with onnx.helper."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Builder:
    """Appends nodes and initializers; keeps names unique."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.count = [], [], 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}{self.count}"

    def const(self, array: np.ndarray, base: str = "c", as_node: bool = False) -> str:
        name = self.name(base)
        if as_node:
            self.nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name + "_v")))
        else:
            self.inits.append(numpy_helper.from_array(array, name))
        return name

    def conv(self, x: str, cin: int, cout: int, k=3, bias=True, weight_node=False, **attrs) -> str:
        kh, kw = (k, k) if isinstance(k, int) else k
        group = attrs.get("group", 1)
        w = (self.rng.standard_normal((cout, cin // group, kh, kw)) / np.sqrt(cin // group * kh * kw)).astype(np.float32)
        inputs = [x, self.const(w, "w", as_node=weight_node)]
        if bias:
            inputs.append(self.const(self.rng.standard_normal(cout).astype(np.float32) * 0.1, "b"))
        out = self.name("conv")
        self.nodes.append(helper.make_node("Conv", inputs, [out], name=out, **attrs))
        return out

    def bn(self, x: str, c: int) -> str:
        r = self.rng
        params = [
            (r.uniform(0.5, 1.5, c)).astype(np.float32), (r.standard_normal(c) * 0.1).astype(np.float32),
            (r.standard_normal(c) * 0.1).astype(np.float32), r.uniform(0.5, 2.0, c).astype(np.float32),
        ]
        out = self.name("bn")
        self.nodes.append(helper.make_node("BatchNormalization", [x] + [self.const(p, "bn") for p in params], [out],
                                           name=out, epsilon=1e-5))
        return out

    def op(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def relu(self, x: str) -> str:
        return self.op("Relu", [x])

    def clip6(self, x: str) -> str:
        return self.op("Clip", [x, self.const(np.array(0, np.float32), "lo"), self.const(np.array(6, np.float32), "hi")])

    def model(self, x_shape, outputs: list[str], opset: int = 17, ir_version: int = 8) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "test", [helper.make_tensor_value_info("input", TensorProto.FLOAT, x_shape)],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], self.inits,
        )
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = ir_version
        return onnx.shape_inference.infer_shapes(m)


def small_resnet(seed: int = 0, weight_nodes: bool = False, channels: int = 8) -> onnx.ModelProto:
    """Conv-BN-Relu stem, a residual block, a Clip(0,6) block, MaxPool, a strided Conv, GAP and Gemm."""
    b = Builder(seed)
    c = channels
    x = b.relu(b.bn(b.conv("input", 3, c, weight_node=weight_nodes, bias=False), c))
    y = b.relu(b.bn(b.conv(x, c, c, pads=[1, 1, 1, 1]), c))
    y = b.bn(b.conv(y, c, c, pads=[1, 1, 1, 1], weight_node=weight_nodes), c)
    x = b.relu(b.op("Add", [x, y]))
    x = b.clip6(b.conv(x, c, c, k=1))
    x = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.relu(b.conv(x, c, 2 * c, pads=[1, 0, 1, 2], strides=[2, 2], dilations=[1, 2]))
    x = b.conv(x, 2 * c, 2 * c, group=2, auto_pad="SAME_UPPER")
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])])
    w = b.const((b.rng.standard_normal((10, 2 * c)) * 0.3).astype(np.float32))
    logits = b.op("Gemm", [x, w, b.const(np.zeros(10, np.float32))], transB=1)
    return b.model(["N", 3, 16, 16], [logits])


def two_block_resnet(seed: int = 0, channels: int = 8) -> tuple[onnx.ModelProto, dict[str, list[str]]]:
    """A stem Conv, an identity residual block, a strided block with a 1x1 projection shortcut,
    GAP and Gemm. Returns the model and {"stem": [conv], <Add name>: [the block's convs]}."""
    b = Builder(seed)
    c = channels
    stem = b.conv("input", 3, c, pads=[1, 1, 1, 1])
    x = b.relu(stem)
    a1 = b.conv(x, c, c, pads=[1, 1, 1, 1])
    a2 = b.conv(b.relu(a1), c, c, pads=[1, 1, 1, 1])
    add1 = b.op("Add", [x, a2])
    x = b.relu(add1)
    p1 = b.conv(x, c, 2 * c, pads=[1, 1, 1, 1], strides=[2, 2])
    p2 = b.conv(b.relu(p1), 2 * c, 2 * c, pads=[1, 1, 1, 1])
    proj = b.conv(x, c, 2 * c, k=1, strides=[2, 2])
    add2 = b.op("Add", [proj, p2])
    x = b.relu(add2)
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])])
    w = b.const((b.rng.standard_normal((10, 2 * c)) * 0.3).astype(np.float32))
    logits = b.op("Gemm", [x, w, b.const(np.zeros(10, np.float32))], transB=1)
    return b.model(["N", 3, 16, 16], [logits]), {"stem": [stem], add1: [a1, a2], add2: [p1, p2, proj]}
