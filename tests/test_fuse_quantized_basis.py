"""passes/fuse_quantized_basis.py: in an INT8 model, the basis stage of each penni portable
layer (d depthwise QLinearConvs and their Concat) becomes one QLinearBasisMaps between
Transposes; the result is compared with the unfused QDQ model and the fp32 model in ORT."""

import numpy as np
import pytest
from onnx import helper

import modelgen
import onnxcompress
from onnxcompress import DOMAIN
from onnxcompress.evaluation import compare_models
from onnxcompress.inputs import random_feeds
from onnxcompress.int8 import quantize_convs
from onnxcompress.passes.fuse_quantized_basis import fuse_quantized_basis


@pytest.fixture(scope="module")
def portable():
    model, _ = modelgen.two_block_resnet(seed=3, channels=16)
    feeds = random_feeds(model, 16, seed=0, batch=2)
    out, _ = onnxcompress.optimize(model, "penni", calib_feeds=feeds, bases=3, coef_sparsity=0.0, portable=True)
    sites = [n.name for n in out.graph.node if n.op_type == "Concat"]
    assert sites, "the portable form writes a Concat of basis maps per layer"
    return out, feeds, sites


def _ops(model, op):
    return [n for n in model.graph.node if n.op_type == op]


def test_every_basis_stage_is_fused_and_agrees_with_the_unfused_model(portable):
    model, feeds, sites = portable
    unfused = quantize_convs(model, feeds, fuse_basis=False)
    fused = quantize_convs(model, feeds)
    maps = _ops(fused, "QLinearBasisMaps")
    assert len(maps) == len(sites) and all(n.domain == DOMAIN for n in maps)
    assert not _ops(fused, "Concat")
    assert all(helper.get_attribute_value(a) == 1 for n in maps for a in n.attribute if a.name == "channels_last")
    # d depthwise Convs per site are gone, the coefficient Convs stay
    assert len(_ops(unfused, "Conv")) - len(_ops(fused, "Conv")) == 3 * len(sites)
    test = random_feeds(model, 8, seed=9, batch=2)
    # one rounding (straight to the Concat's scale) instead of two: close, not equal
    agreement = compare_models(unfused, fused, test)[0]
    assert agreement.cosine > 0.999
    assert compare_models(model, fused, test)[0].cosine > 0.99


def test_fused_with_the_other_ops_quantized_too(portable):
    # quantize_convs(other_ops=True) also quantizes the Concat (and the Adds): the sites are fused still
    model, feeds, sites = portable
    fused = quantize_convs(model, feeds, other_ops=True)
    assert len(_ops(fused, "QLinearBasisMaps")) == len(sites) and not _ops(fused, "Concat")
    test = random_feeds(model, 8, seed=9, batch=2)
    assert compare_models(model, fused, test)[0].cosine > 0.99


def test_maps_match_the_depthwise_convs_they_replace(portable):
    """The op's output equals the unfused Concat's, up to the one requantization step saved."""
    model, feeds, sites = portable
    unfused = quantize_convs(model, feeds, fuse_basis=False)
    fused, count = fuse_quantized_basis(unfused)
    assert count == len(sites)
    concat = _ops(unfused, "Concat")[0]
    q_out = next(n for n in unfused.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == concat.output[0])
    name = q_out.output[0]  # the fused model keeps this tensor: the Transpose back to channels first writes it
    assert name in {o for n in fused.graph.node for o in n.output}
    for m in (unfused, fused):
        m.graph.output.append(helper.make_tensor_value_info(name, 2, None))
    from onnxcompress._runtime import InferenceSession

    x = random_feeds(model, 1, seed=4, batch=2)[0]
    a = InferenceSession(unfused, threads=1).run([name], x)[0].astype(int)
    b = InferenceSession(fused, threads=1).run([name], x)[0].astype(int)
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= 1 and (a == b).mean() > 0.5, (a == b).mean()


def test_leaves_other_concats_alone():
    """A Concat of ordinary INT8 Convs (not depthwise basis maps) is no site."""
    b = modelgen.Builder(1)
    c1 = b.conv("input", 3, 8, pads=[1, 1, 1, 1])
    c2 = b.conv("input", 3, 8, pads=[1, 1, 1, 1])
    cat = b.op("Concat", [c1, c2], axis=1)
    y = b.conv(b.relu(cat), 16, 8, k=1)
    model = b.model(["N", 3, 8, 8], [y])
    q = quantize_convs(model, random_feeds(model, 8, seed=0, batch=2))
    assert _ops(q, "Concat") and not _ops(q, "QLinearBasisMaps")


def test_site_whose_maps_are_a_graph_output_is_left_alone(portable):
    model, feeds, sites = portable
    unfused = quantize_convs(model, feeds, fuse_basis=False)
    concat = _ops(unfused, "Concat")[0]
    q_out = next(n for n in unfused.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == concat.output[0])
    unfused.graph.output.append(helper.make_tensor_value_info(q_out.output[0], 2, None))
    _, count = fuse_quantized_basis(unfused)
    assert count == len(sites) - 1
