"""Canonicalisation passes and the pass manager, checked against ONNX Runtime's
own execution of the original model."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import modelgen
import onnxcompress
from onnxcompress.errors import OnnxCompressError
from onnxcompress.passes import (
    ConstantsToInitializers, EliminateDeadCode, FalconRewrite, FoldBatchNorm, FuseActivation, PassManager, canonicalize,
)
from onnxcompress.passes.fold_batchnorm import fold_batchnorm_into_conv


def run_plain(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def run_ours(model, x):
    from onnxcompress.model_io import prepare_for_runtime

    return onnxcompress.InferenceSession(prepare_for_runtime(model)).run(None, {"input": x})[0]


def ops(model):
    return [n.op_type for n in model.graph.node]


@pytest.fixture()
def x():
    return np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)


def test_constants_become_initializers(x):
    model = modelgen.small_resnet(weight_nodes=True)
    assert "Constant" in ops(model)
    out, _ = PassManager([ConstantsToInitializers()]).run(model)
    assert "Constant" not in ops(out)
    np.testing.assert_array_equal(run_plain(out, x), run_plain(model, x))


def test_batchnorm_folding_is_exact(x):
    model = modelgen.small_resnet()
    out, ctx = PassManager(canonicalize()).run(model)
    assert "BatchNormalization" not in ops(out)
    assert ops(model).count("BatchNormalization") == 3
    fold = next(r for r in ctx.runs if r.name == "fold-batchnorm")
    assert fold.changed and "3 BatchNormalization" in fold.summary
    ref, got = run_plain(model, x), run_plain(out, x)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_fold_math_matches_formula():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    gamma, beta, mean, var = (rng.uniform(0.5, 2, 4).astype(np.float32) for _ in range(4))
    fw, fb = fold_batchnorm_into_conv(w, None, gamma, beta, mean, var, 1e-3)
    s = gamma / np.sqrt(var + 1e-3)
    np.testing.assert_allclose(fw, w * s[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(fb, beta - mean * s, rtol=1e-5, atol=1e-6)


def test_batchnorm_with_shared_conv_output_is_not_folded():
    b = modelgen.Builder()
    c = b.conv("input", 3, 4)
    bn = b.bn(c, 4)
    model = b.model(["N", 3, 8, 8], [bn, c])  # the Conv output is also a graph output
    out, ctx = PassManager([FoldBatchNorm()], provided=frozenset({"conv-weights-are-initializers"})).run(model)
    assert "BatchNormalization" in ops(out) and not ctx.runs[0].changed


def test_falcon_pipeline_rewrites_relu_fed_convs_and_fuses(x):
    model = modelgen.small_resnet(weight_nodes=True)
    passes = canonicalize() + [FalconRewrite(), FuseActivation(), EliminateDeadCode()]
    out, ctx = PassManager(passes, verify=True).run(model)
    rewritten = [r for r in ctx.layers if r.status == "rewritten"]
    skipped = [r for r in ctx.layers if r.status == "skipped"]
    assert len(rewritten) == 5 and len(skipped) == 1
    assert "not produced by a ReLU-like op" in skipped[0].reason
    custom = [n for n in out.graph.node if n.domain == onnxcompress.DOMAIN]
    assert len(custom) == 5
    acts = sorted(a.s.decode() for n in custom for a in n.attribute if a.name == "activation")
    assert acts == ["Clip", "Relu", "Relu"]  # the block output Relu follows an Add, not a conv
    assert ops(out).count("Relu") == 2 and "Clip" not in ops(out)
    np.testing.assert_allclose(run_ours(out, x), run_plain(model, x), rtol=1e-4, atol=1e-4)


def test_pipeline_requirements_are_checked():
    with pytest.raises(ValueError, match="requires"):
        PassManager([FalconRewrite()])


def test_dynamic_weight_is_an_error_unless_allowed():
    b = modelgen.Builder()
    w_in = b.op("Relu", [b.const(np.ones((4, 4, 3, 3), np.float32))])  # weight computed at run time
    r = b.relu("input")
    out = b.op("Conv", [r, w_in])
    model = b.model([1, 4, 8, 8], [out])
    passes = canonicalize() + [FalconRewrite()]
    with pytest.raises(OnnxCompressError, match="computed at run time"):
        PassManager(passes).run(model)
    _, ctx = PassManager(canonicalize() + [FalconRewrite(allow_dynamic_weights=True)]).run(model)
    assert ctx.layers[0].status == "skipped" and "not a constant" in ctx.layers[0].reason


def test_threshold_validation():
    with pytest.raises(OnnxCompressError):
        FalconRewrite(threshold=-1.0)


def test_rewritten_model_passes_checker_and_shape_inference():
    from onnxcompress import schemas
    from onnxcompress.model_io import prepare_for_runtime
    from onnxcompress.optimizer import optimize

    out, _ = optimize(modelgen.small_resnet(), "falcon")
    schemas.register_schemas()
    out = prepare_for_runtime(out)
    onnx.checker.check_model(out, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(out, strict_mode=True)
    shapes = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
              for v in inferred.graph.value_info}
    custom_out = [n.output[0] for n in out.graph.node if n.domain == onnxcompress.DOMAIN]
    assert all(len(shapes[name]) == 4 for name in custom_out)
