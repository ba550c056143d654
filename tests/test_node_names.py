"""Models whose nodes have no names or repeated names go through every method: the
result runs in ONNX Runtime and computes what the same method gives on the same
model with proper names (names must never change what is fitted where)."""

import numpy as np
import onnx
import pytest

import modelgen
import onnxcompress
from onnxcompress.optimizer import optimize
from onnxcompress.passes import NameNodes, PassContext
from onnxcompress.passes.name_nodes import name_nodes


def renamed(model, how):
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i, node in enumerate(out.graph.node):
        if how == "empty":
            node.name = ""
        elif how == "duplicate":
            node.name = "node"
        elif how == "mixed":  # Conv nodes share one name, the rest keep theirs; one is empty
            node.name = "conv" if node.op_type == "Conv" else ("" if i == 1 else node.name)
    return out


@pytest.fixture(scope="module")
def model():
    return modelgen.two_block_resnet(seed=4)[0]


@pytest.fixture(scope="module")
def feeds():
    rng = np.random.default_rng(0)
    return [{"input": rng.standard_normal((8, 3, 16, 16)).astype(np.float32)} for _ in range(3)]


def run(model, x):
    sess = onnxcompress.InferenceSession(model, threads=1)
    return sess.run(None, {"input": x})[0]


def cosine(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


CASES = [
    ("falcon", False, {"select": "all"}),
    ("falcon", True, {"select": "all"}),
    ("cluspa", False, {}),
    ("cluspa", True, {}),
    ("penni", False, {}),
    ("penni", True, {}),
    ("penni", False, {"portable": True}),
    ("tabconv", True, {"calib_rows": 2000}),
]
_REFERENCE = {}  # (method, calibrated, options) -> (model, report) on the properly named model


@pytest.mark.parametrize("how", ["empty", "duplicate", "mixed"])
@pytest.mark.parametrize("method,calibrated,options", CASES,
                         ids=[f"{m}-{'calib' if c else 'free'}{'-portable' if o.get('portable') else ''}"
                              for m, c, o in CASES])
def test_every_method_on_unnamed_or_duplicate_names(model, feeds, how, method, calibrated, options):
    bad = renamed(model, how)
    calib = feeds if calibrated else None
    out, report = optimize(bad, method, calib_feeds=calib, **options)
    onnx.checker.check_model(out)
    names = [n.name for n in out.graph.node]
    assert all(names) and len(set(names)) == len(names)
    assert report.totals["conv_layers"] == 6
    assert report.totals["rewritten"] + report.totals["skipped"] == 6
    assert report.totals["rewritten"] >= 1

    # what the same method gives on the model with its own (unique) names
    key = (method, calibrated, tuple(sorted(options.items())))
    if key not in _REFERENCE:
        _REFERENCE[key] = optimize(model, method, calib_feeds=calib, **options)
    ref_out, ref_report = _REFERENCE[key]
    assert ref_report.totals["rewritten"] == report.totals["rewritten"]
    x = feeds[0]["input"]
    got, want, original = run(out, x), run(ref_out, x), run(model, x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    if method == "falcon":
        np.testing.assert_allclose(got, original, rtol=1e-4, atol=1e-4)
    else:
        assert cosine(got, original) > 0.8


def test_name_nodes_is_stable_and_keeps_unique_names(model):
    bad = renamed(model, "mixed")
    a, count = name_nodes(bad)
    b, _ = name_nodes(bad)
    assert [n.name for n in a.graph.node] == [n.name for n in b.graph.node]
    assert count == sum(n.op_type == "Conv" for n in bad.graph.node) - 1 + 1  # later Conv holders + the empty one
    kept = [(x.name, y.name) for x, y in zip(bad.graph.node, a.graph.node) if x.name and x.op_type != "Conv"]
    assert all(x == y for x, y in kept)
    assert a.graph.node[1].name == f"{bad.graph.node[1].op_type}_1"
    assert name_nodes(model)[1] == 0 and name_nodes(model)[0] is model  # unique names: untouched

    ctx = PassContext()
    result = NameNodes().run(bad, ctx)
    assert result.changed and any("named after their op and position" in n for n in ctx.notes)


def test_rewriting_pass_alone_refuses_repeated_names(model):
    from onnxcompress.errors import OnnxCompressError
    from onnxcompress.passes.penni import PenniRewrite

    with pytest.raises(OnnxCompressError, match="unique and non-empty"):
        PenniRewrite().run(renamed(model, "duplicate"), PassContext())


def test_pass_manager_names_nodes_first_when_a_pass_needs_it(model):
    from onnxcompress.passes import FoldBatchNorm, PassManager
    from onnxcompress.passes.base import WEIGHTS_ARE_INITIALIZERS
    from onnxcompress.passes.penni import PenniRewrite

    manager = PassManager([FoldBatchNorm(), PenniRewrite()], provided=frozenset({WEIGHTS_ARE_INITIALIZERS}))
    assert isinstance(manager.passes[0], NameNodes)
    out, ctx = manager.run(renamed(model, "empty"))
    assert all(n.name for n in out.graph.node) and any(r.status == "rewritten" for r in ctx.layers)
    assert not isinstance(PassManager([FoldBatchNorm()], provided=frozenset({WEIGHTS_ARE_INITIALIZERS}))
                          .passes[0], NameNodes)
