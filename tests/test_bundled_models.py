"""The trained models under models/: valid ONNX with the documented conventions, loadable and inspectable.

Each expectation is the models/README.md row of that model: Conv count, Conv MACs at
batch 1 (from ``onnxcompress inspect``'s totals), parameters, and whether BatchNorm is
kept as nodes or folded into the Convs by the exporter.
"""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from onnxcompress.cli import main

MODELS = Path(__file__).resolve().parents[1] / "models"

# file -> (Conv nodes, Conv MACs at batch 1, parameters, BatchNormalization nodes)
EXPECTED = {
    "resnet18_mnist.onnx": (20, 455_795_712, 11_172_810, 20),
    "resnet18_mnist_twin.onnx": (20, 455_795_712, 11_172_810, 0),
    "resnet18_fashion.onnx": (20, 455_795_712, 11_172_810, 20),
    "resnet20_fashion.onnx": (21, 31_021_312, 272_186, 21),
    "resnet20_fashion_twin.onnx": (21, 31_021_312, 272_186, 0),
}


def _params(m: onnx.ModelProto) -> int:
    """Trainable parameters: initializers less BatchNorm running statistics (each BN's inputs 3 and 4)."""
    stats = {n.input[i] for n in m.graph.node if n.op_type == "BatchNormalization" for i in (3, 4)}
    return sum(int(np.prod(t.dims)) for t in m.graph.initializer if t.name not in stats)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bundled_model(name):
    path = MODELS / name
    if not path.is_file():
        pytest.fail(f"{path} is missing")
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    assert m.ir_version == 8 and {o.domain: o.version for o in m.opset_import}[""] == 17
    (inp,), (out,) = m.graph.input, m.graph.output
    assert inp.name == "input" and out.name == "logits"
    in_dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert isinstance(in_dims[0], str) and in_dims[1:] == [1, 28, 28] and out_dims[1:] == [10]
    n_conv, macs, params, n_bn = EXPECTED[name]
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("Conv") == n_conv and ops.count("BatchNormalization") == n_bn
    if n_bn == 0:  # folded by the exporter: every Conv has a bias
        assert all(len(n.input) == 3 for n in m.graph.node if n.op_type == "Conv")
    # folding BN gives each Conv a bias of C_out values in place of BN's scale and shift (2 * C_out)
    inits = {t.name: t for t in m.graph.initializer}
    folded_delta = 0 if n_bn else sum(int(np.prod(inits[n.input[2]].dims)) for n in m.graph.node if n.op_type == "Conv")
    assert _params(m) == params - folded_delta, "parameter count"

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    (logits,) = sess.run(["logits"], {"input": x})
    assert logits.shape == (3, 10) and np.isfinite(logits).all()

    r = CliRunner().invoke(main, ["inspect", str(path), "--json"])
    assert r.exit_code == 0, r.output
    totals = json.loads(r.output)["totals"]
    assert totals["convs"] == n_conv and totals["macs"] == macs
