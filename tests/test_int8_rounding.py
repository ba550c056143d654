"""Rounding s8 weights to the layer's output (fitting/int8_rounding.py) and its use in
quantize_convs(refine_weights=True), checked against the fp32 model run in ONNX Runtime."""

import numpy as np
import pytest
from onnx import numpy_helper

import modelgen
from onnxcompress.evaluation import compare_models
from onnxcompress.fitting.int8_rounding import mean_corrected_bias, round_to_output
from onnxcompress.inputs import random_feeds
from onnxcompress.int8 import conv_names, int8_convs, quantize_convs


def _layer(seed=0, m=16, k=36, rows=4000, correlated=True):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, k))
    if correlated:  # neighbouring inputs of a conv window are correlated
        x = x @ (np.eye(k) + 0.8 * np.eye(k, k=1) + 0.5 * np.eye(k, k=-1)) + 0.3
    w = rng.standard_normal((m, k)) * 0.2
    scale = np.abs(w).max(1) / 127
    return x, w, scale


def test_diagonal_moment_gives_round_to_nearest():
    _, w, scale = _layer()
    q = round_to_output(w, scale, np.diag(np.arange(1.0, w.shape[1] + 1)), damp=0.0)
    np.testing.assert_array_equal(q, np.clip(np.rint(w / scale[:, None]), -127, 127))


def test_output_error_below_round_to_nearest_and_on_the_grid():
    for seed in range(3):
        x, w, scale = _layer(seed)
        q = round_to_output(w, scale, x.T @ x)
        assert q.dtype == np.int8 and q.min() >= -127 and q.max() <= 127
        nearest = np.clip(np.rint(w / scale[:, None]), -127, 127)
        err = np.linalg.norm(x @ (w - q * scale[:, None]).T)
        err_nearest = np.linalg.norm(x @ (w - nearest * scale[:, None]).T)
        assert err < 0.8 * err_nearest, (seed, err, err_nearest)
        assert np.abs(q - nearest).max() <= 2  # a refinement of the rounding, not another grid


def test_mean_corrected_bias_keeps_the_output_mean():
    x, w, scale = _layer(1)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127) * scale[:, None]
    b = np.linspace(-1, 1, w.shape[0])
    nb = mean_corrected_bias(b, w, q, x.mean(0))
    np.testing.assert_allclose((x @ q.T + nb).mean(0), (x @ w.T + b).mean(0), atol=1e-5)
    np.testing.assert_allclose(mean_corrected_bias(None, w, w, x.mean(0)), 0)


def test_bad_scales_and_shapes_are_errors():
    _, w, scale = _layer()
    with pytest.raises(ValueError, match="positive"):
        round_to_output(w, np.zeros_like(scale), np.eye(w.shape[1]))
    with pytest.raises(ValueError, match="H must be"):
        round_to_output(w, scale, np.eye(3))


def _int_weights(model):
    return {name: parts[0] for name, parts in _int8_parts(model).items()}


def test_refined_model_is_closer_to_fp32_with_the_same_scales():
    model = modelgen.small_resnet()
    feeds = random_feeds(model, 16, seed=0, batch=4)
    held_out = random_feeds(model, 8, seed=7, batch=4)
    plain = quantize_convs(model, feeds)
    refined = quantize_convs(model, feeds, refine_weights=True)
    assert sorted(int8_convs(refined)) == sorted(conv_names(model))
    a, b = _int_weights(plain), _int_weights(refined)
    assert any(not np.array_equal(a[n], b[n]) for n in a)
    assert all(np.abs(a[n].astype(int) - b[n]).max() <= 3 for n in a)
    scales = {t.name: numpy_helper.to_array(t) for t in plain.graph.initializer if t.name.endswith("_scale")}
    for t in refined.graph.initializer:  # ORT's scales kept
        if t.name in scales:
            np.testing.assert_array_equal(numpy_helper.to_array(t), scales[t.name])
    err_plain = compare_models(model, plain, held_out)[0].mean_abs_error
    err_refined = compare_models(model, refined, held_out)[0].mean_abs_error
    assert err_refined < err_plain, (err_refined, err_plain)


def _int8_parts(model):
    """{Conv name: (s8 weights, weight scales, int32 bias, bias scales)} of the INT8 Convs (the bias
    parts None for a Conv without a bias)."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    parts, quantized = {}, set(int8_convs(model))
    for n in model.graph.node:
        if n.name in quantized:
            w = producer[n.input[1]]
            b = producer[n.input[2]] if len(n.input) > 2 and n.input[2] else None
            parts[n.name] = (inits[w.input[0]], inits[w.input[1]],
                             *((inits[b.input[0]], inits[b.input[1]]) if b is not None else (None, None)))
    return parts


def test_bias_correction_keeps_ort_integers_and_moves_each_bias_by_its_mean_shift():
    from onnxcompress.calibration import LayerCapture, conv_attrs, conv_geometry, im2col

    model, _ = modelgen.two_block_resnet()
    feeds = random_feeds(model, 12, seed=0, batch=3)
    held_out = random_feeds(model, 8, seed=7, batch=4)
    plain = quantize_convs(model, feeds)
    corrected = quantize_convs(model, feeds, bias_correction=True)
    assert quantize_convs(model, feeds, bias_correction=True).SerializeToString() == corrected.SerializeToString()
    before, after = _int8_parts(plain), _int8_parts(corrected)
    assert sorted(after) == sorted(conv_names(model))
    fp32 = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    convs = {n.name: n for n in model.graph.node if n.op_type == "Conv"}
    captured = list(LayerCapture(model).stream(feeds, [n.input[0] for n in convs.values()]))
    moved = 0
    for name, (ints, w_scale, b_int, b_scale) in after.items():
        np.testing.assert_array_equal(ints, before[name][0])  # ORT's rounding kept
        np.testing.assert_array_equal(w_scale, before[name][1])
        node = convs[name]
        weight, bias = fp32[node.input[1]], fp32[node.input[2]]
        attrs = conv_attrs(node)
        cols = np.concatenate([im2col(c[node.input[0]], conv_geometry(attrs, c[node.input[0]].shape, weight.shape))[0]
                               for c in captured]).astype(np.float64)
        want = mean_corrected_bias(bias, weight.reshape(len(bias), -1),
                                   ints.reshape(len(bias), -1) * w_scale.astype(np.float64)[:, None], cols.mean(0))
        assert np.abs(b_int.astype(np.float64) * b_scale - want).max() <= b_scale.max()
        moved += int(np.any(b_int != before[name][2]))
    assert moved >= len(after) // 2
    err_plain = compare_models(model, plain, held_out)[0].mean_abs_error
    err_corrected = compare_models(model, corrected, held_out)[0].mean_abs_error
    assert err_corrected < err_plain, (err_corrected, err_plain)


def test_the_planners_int8_stage_corrects_biases():
    from onnxcompress.plan.stages import STAGES

    model, _ = modelgen.two_block_resnet()
    feeds = random_feeds(model, 8, seed=1, batch=2)
    stage = STAGES["int8"]
    staged = stage.apply(stage.prepare(model), conv_names(model), feeds)
    want = _int8_parts(quantize_convs(model, feeds, bias_correction=True))
    plain = _int8_parts(quantize_convs(model, feeds))
    for name, parts in _int8_parts(staged).items():
        np.testing.assert_array_equal(parts[2], want[name][2])
    assert any(not np.array_equal(parts[2], plain[name][2]) for name, parts in _int8_parts(staged).items())
