"""--method auto's whole-model stage INT8 (plan/stages.py): ORT's static quantization of the
Convs the per-layer plan leaves to ORT, tried on the plan and on the original, kept only where
the model meets the budget on the validation inputs (checked again here, from outside) and
times faster. Timings are injected (a cost model, no clock), so nothing here is timed."""

import numpy as np
import pytest

import modelgen
from onnxcompress import DOMAIN, InferenceSession
from onnxcompress.errors import OnnxCompressError
from onnxcompress.inputs import random_feeds
from onnxcompress.int8 import conv_names, int8_convs
from onnxcompress.plan import plan_model
from onnxcompress.plan.budget import split_feeds
from onnxcompress.plan.candidates import candidate_list
from onnxcompress.plan.stages import STAGES, split_kinds
from onnxcompress.plan.timing import TimingCache


class CostTimer:
    """10 ms, minus `per_int8` ms per INT8 Conv and 1 ms per node of ours."""

    threads = 1
    runs = 30

    def __init__(self, per_int8=1.0):
        self.cache = TimingCache(None)
        self.per_int8 = per_int8

    def time(self, model, key=None, runs=None, threads=None):
        ours = sum(n.domain == DOMAIN for n in model.graph.node)
        return 10.0, 10.0 - ours - self.per_int8 * len(int8_convs(model))


def _feeds(model, n=32):
    return random_feeds(model, n // 4, batch=4, seed=3)


def _validation_cosine(model, written, feeds, seed=0):
    _, val, _, _ = split_feeds(feeds, 0.25, seed)
    a = np.concatenate([InferenceSession(model.SerializeToString()).run(None, f)[0] for f in val]).astype(np.float64)
    b = np.concatenate([InferenceSession(written.SerializeToString()).run(None, f)[0] for f in val]).astype(np.float64)
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def test_split_kinds_separates_stages():
    assert split_kinds(None) == (None, list(STAGES))
    assert split_kinds("penni,int8") == (["penni"], ["int8"])
    assert split_kinds("int8") == ([], ["int8"])


def test_int8_stage_quantizes_every_conv_within_the_budget():
    model = modelgen.small_resnet()
    feeds = _feeds(model)
    result = plan_model(model, feeds, min_cosine=0.9, kinds="int8", timer=CostTimer(), report_threads=(1,))
    s = result.summary
    assert s["meets_budget"] and s["plan"] == "int8"
    assert sorted(int8_convs(result.model)) == sorted(conv_names(model))
    assert s["layers_replaced"] == len(conv_names(model)) and s["int8_macs"] == s["macs_before"]
    assert s["speedup"]["1"] > 1.0
    assert [r["choice"] for r in result.layers] == ["int8"] * len(conv_names(model))
    # the budget, measured again from outside on the same validation inputs
    assert _validation_cosine(model, result.model, feeds) >= 0.9


def test_int8_stage_is_refused_when_it_misses_the_budget():
    model = modelgen.small_resnet()
    result = plan_model(model, _feeds(model), min_cosine=0.999999, kinds="int8", timer=CostTimer(),
                        report_threads=(1,))
    assert result.summary["plan"] == "original" and not int8_convs(result.model)
    assert not any(n.op_type == "QuantizeLinear" for n in result.model.graph.node)
    assert any("int8 on the original: misses the budget" in n for n in result.notes)


def test_int8_stage_gives_back_layers_until_the_budget_holds():
    model = modelgen.small_resnet()
    feeds = _feeds(model)
    full = plan_model(model, feeds, min_cosine=0.0, kinds="int8", timer=CostTimer(), report_threads=(1,))
    c_all = full.summary["achieved"]["cosine"]
    assert c_all < 1.0
    budget = 1.0 - (1.0 - c_all) / 3  # tighter than INT8 everywhere achieves
    result = plan_model(model, feeds, min_cosine=budget, kinds="int8", timer=CostTimer(), report_threads=(1,))
    s = result.summary
    assert s["meets_budget"]
    got = int8_convs(result.model)
    assert len(got) < len(conv_names(model))
    assert _validation_cosine(model, result.model, feeds) >= budget
    st = [x for x in s["stages"] if x["base"] == "original"][0]
    assert len(st["given_back"]) == len(conv_names(model)) - len(got)


def test_int8_stage_is_not_kept_when_it_makes_the_model_slower():
    model = modelgen.small_resnet()
    result = plan_model(model, _feeds(model), min_cosine=0.5, kinds="int8", timer=CostTimer(per_int8=-1.0),
                        report_threads=(1,))
    assert result.summary["plan"] == "original" and not int8_convs(result.model)


def test_int8_composes_with_a_per_layer_plan():
    """falcon on the layers where it pays (cost model: 1 ms per op of ours), INT8 on the rest:
    the model holds both, runs in ORT, and meets the budget."""
    model = modelgen.small_resnet()
    feeds = _feeds(model)
    result = plan_model(model, feeds, min_cosine=0.9, kinds="falcon,int8", timer=CostTimer(per_int8=0.5),
                        report_threads=(1,))
    s = result.summary
    ours = [n.name for n in result.model.graph.node if n.domain == DOMAIN]
    assert s["meets_budget"] and ours and int8_convs(result.model)
    assert set(ours).isdisjoint(int8_convs(result.model))
    assert s["plan"].endswith("+ int8")
    assert _validation_cosine(model, result.model, feeds) >= 0.9


@pytest.mark.parametrize("bad", ["int9", "penni,nope"])
def test_unknown_kinds_are_refused(bad):
    from onnxcompress.errors import OnnxCompressError

    model = modelgen.small_resnet()
    with pytest.raises(OnnxCompressError, match="unknown candidate kind"):
        plan_model(model, _feeds(model, 8), kinds=bad, timer=CostTimer())


def test_splice_into_places_our_op_in_a_quantized_model():
    from onnxcompress.int8 import quantize_convs
    from onnxcompress.optimizer import optimize
    from onnxcompress.plan.planner import _canonical
    from onnxcompress.plan.splice import replacement_of, splice_into

    model = _canonical(modelgen.small_resnet())
    feeds = _feeds(model)
    q = quantize_convs(model, feeds)
    falcon, _ = optimize(model, "falcon", select="all")
    layer = next(n for n in conv_names(model) if replacement_of(model, falcon, n) is not None)
    placed = splice_into(q, model, [replacement_of(model, falcon, layer)])
    assert layer not in int8_convs(placed) and layer in [n.name for n in placed.graph.node if n.domain == DOMAIN]
    assert sorted(int8_convs(placed)) == sorted(set(int8_convs(q)) - {layer})
    read = {t for n in placed.graph.node for t in n.input} | {o.name for o in placed.graph.output}
    assert all(any(o in read for o in n.output) for n in placed.graph.node)  # no dead DequantizeLinear
    x = feeds[0]
    ref = InferenceSession(model.SerializeToString()).run(None, x)[0]
    got = InferenceSession(placed.SerializeToString()).run(None, x)[0]
    qout = InferenceSession(q.SerializeToString()).run(None, x)[0]
    cos = lambda a, b: float(np.sum(a * b) / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    assert cos(ref, got) > 0.99 and cos(ref, qout) > 0.99


def test_int8_on_an_opset_11_model_is_converted_to_opset_13():
    """Per-channel QDQ needs DequantizeLinear's axis (opset 13): an older model (PP-OCR's are
    opset 11) is converted first instead of giving a model ONNX Runtime refuses."""
    from onnxcompress.int8 import quantize_convs

    model = modelgen.small_resnet()
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = 11
    q = quantize_convs(model, _feeds(model, 8))
    assert next(o.version for o in q.opset_import if o.domain in ("", "ai.onnx")) >= 13
    assert sorted(int8_convs(q)) == sorted(conv_names(model))
    InferenceSession(q.SerializeToString()).run(None, _feeds(model, 4)[0])


def test_a_budget_the_validation_inputs_cannot_show_is_refused_before_planning():
    """16 validation inputs, even all agreeing, show agreement >= 0.83 only (95%): a budget of 0.99
    is refused at once, with the count that would show it, instead of being 'met' by the sample."""
    model = modelgen.small_resnet()
    with pytest.raises(OnnxCompressError) as err:
        plan_model(model, _feeds(model, 64), min_agreement=0.99, kinds="int8", timer=CostTimer(),
                   report_threads=(1,))
    text = str(err.value)
    assert "16 validation inputs cannot show" in text and "at least 299 validation inputs" in text
    assert "0.829" in text  # 0.05 ** (1 / 16)


def test_an_old_opset_model_is_converted_once_per_stage_run(monkeypatch):
    """The stage's give-back quantizes the model once per trial; the opset-11 model is converted
    to opset 13 once for all of them, not once per trial."""
    from onnx import version_converter

    model = modelgen.small_resnet()
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = 11
    feeds = _feeds(model)
    full = plan_model(model, feeds, min_cosine=0.0, kinds="int8", timer=CostTimer(), report_threads=(1,))
    budget = 1.0 - (1.0 - full.summary["achieved"]["cosine"]) / 3  # forces layers to be given back
    calls = []
    real = version_converter.convert_version
    monkeypatch.setattr(version_converter, "convert_version", lambda m, v: calls.append(v) or real(m, v))
    result = plan_model(model, feeds, min_cosine=budget, kinds="int8", timer=CostTimer(), report_threads=(1,))
    st = [x for x in result.summary["stages"] if x["base"] == "original"][0]
    assert st["given_back"] and calls == [13]


def test_int8_on_an_opset_11_model_whose_conversion_adds_unnamed_nodes():
    """The converter's Squeeze adapter (axes: attribute -> input) adds a node without a name; ORT's
    quantizer selects nodes by name, so INT8 refused PP-OCR cls as 'node names must be unique'."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxcompress.int8 import at_least_opset_13, quantize_convs

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("GlobalAveragePool", ["c"], ["p"], name="pool"),
         helper.make_node("Squeeze", ["p"], ["y"], name="squeeze", axes=[2, 3])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    converted = at_least_opset_13(model)
    names = [n.name for n in converted.graph.node]
    assert all(names) and len(set(names)) == len(names) and {"conv", "pool", "squeeze"} <= set(names)
    feeds = [{"x": np.random.default_rng(i).standard_normal((2, 3, 8, 8)).astype(np.float32)} for i in range(4)]
    q = quantize_convs(model, feeds)
    assert int8_convs(q) == ["conv"]
    InferenceSession(q.SerializeToString()).run(None, feeds[0])


def test_a_portable_replacement_placed_in_the_int8_model_is_quantized_too():
    """penni's portable form is standard Convs: placed into the INT8 model it is quantized with it
    (every Conv of the written model runs in INT8), instead of running in fp32 between INT8 layers."""
    model = modelgen.small_resnet()
    feeds = _feeds(model)
    portable = [c for c in candidate_list("penni") if c.opts.get("portable")]
    assert portable
    result = plan_model(model, feeds, min_cosine=0.5, kinds="penni,int8", candidates=portable,
                        timer=CostTimer(per_int8=0.5), report_threads=(1,))
    s = result.summary
    assert s["meets_budget"] and "int8" in s["plan"]
    chosen = [r for r in result.layers if "portable" in str(r.get("choice"))]
    assert chosen, [r.get("choice") for r in result.layers]
    convs = conv_names(result.model)
    assert len(convs) > len(conv_names(model)) and sorted(int8_convs(result.model)) == sorted(convs)
    assert _validation_cosine(model, result.model, feeds) >= 0.5


def test_ranges_are_calibrated_once_for_every_subset_of_one_model(monkeypatch):
    """A static QDQ model's ranges are the fp32 model's, whichever Convs are quantized: the
    give-back trials of one stage run reuse one calibration, and give the model a fresh
    calibration of that subset gives."""
    from onnxcompress import int8

    model = modelgen.small_resnet()
    feeds = _feeds(model, 16)
    names = conv_names(model)
    calls = []
    real = int8._calibrate
    monkeypatch.setattr(int8, "_calibrate", lambda *a, **k: calls.append(1) or real(*a, **k))
    int8._PREPARED.clear()
    first = int8.quantize_convs(model, feeds, nodes=names[:2])
    second = int8.quantize_convs(model, feeds, nodes=names[2:4])
    assert len(calls) == 1 and sorted(int8_convs(second)) == sorted(names[2:4])
    int8._PREPARED.clear()
    fresh = int8.quantize_convs(model, feeds, nodes=names[2:4])
    assert len(calls) == 2 and fresh.SerializeToString() == second.SerializeToString()
    int8.quantize_convs(model, _feeds(model, 8), nodes=names[:2])  # other feeds: calibrated again
    assert len(calls) == 3 and first.graph.node


def test_a_replacement_the_stage_cannot_quantize_is_placed_in_fp32(monkeypatch):
    """Where ORT's quantizer fails on a model holding a portable replacement, the replacement is
    placed in fp32 in the INT8 model and planning goes on (it used to end the plan)."""
    import dataclasses

    from onnxcompress.plan import stages

    real = stages.STAGES["int8"]

    def failing(model, layers, feeds):
        if any(n.op_type == "Concat" for n in model.graph.node):
            raise OnnxCompressError("quantize: ONNX Runtime's quantizer failed: injected")
        return real.apply(model, layers, feeds)

    monkeypatch.setitem(stages.STAGES, "int8", dataclasses.replace(real, apply=failing))
    model = modelgen.small_resnet()
    feeds = _feeds(model)
    portable = [c for c in candidate_list("penni") if c.opts.get("portable")]
    result = plan_model(model, feeds, min_cosine=0.5, kinds="penni,int8", candidates=portable,
                        timer=CostTimer(per_int8=0.5), report_threads=(1,))
    assert result.summary["meets_budget"] and "int8" in result.summary["plan"]
    InferenceSession(result.model.SerializeToString()).run(None, feeds[0])


def test_least_damaging_prefix_ranks_by_damage_alone_and_bisects():
    """The stage on each layer alone, ranked by its error on the validation inputs; then the longest
    prefix of that ranking the caller accepts (here: at most two layers), whose model is INT8 on
    exactly those layers, the two least damaging alone."""
    from onnxcompress.plan.budget import Evaluator
    from onnxcompress.plan.stages import least_damaging_prefix

    model = modelgen.small_resnet()
    layers = conv_names(model)
    fit, val, _, _ = split_feeds(_feeds(model, 48), 0.5, 0)
    stage = STAGES["int8"]
    base = stage.prepare(model)
    evaluator = Evaluator(model, val, None)
    seen = {}

    def accepts(m, k):
        seen[k] = set(int8_convs(m))
        return len(seen[k]) <= 2, k

    kept, given_back, written, result = least_damaging_prefix(stage, base, layers, fit, evaluator, accepts)
    assert len(kept) == 2 and result == 2 and set(int8_convs(written)) == set(kept)
    assert sorted(kept + given_back) == sorted(layers) and not set(kept) & set(given_back)
    assert 3 in seen and set(kept) < seen[3]  # bisection looked one layer further and was refused
    alone = {n: evaluator.measure(stage.apply(base, [n], fit), with_eval=False, screen=True).rel_error
             for n in layers}
    assert max(alone[n] for n in kept) <= min(alone[n] for n in layers if n not in kept)
    assert [alone[n] for n in given_back] == sorted(alone[n] for n in given_back)  # in ranking order
    none = least_damaging_prefix(stage, base, layers, fit, evaluator, lambda m, k: (False, None))
    assert none[0] == [] and sorted(none[1]) == sorted(layers) and none[2:] == (None, None)
    capped = least_damaging_prefix(stage, base, layers, fit, evaluator, lambda m, k: (True, k), at_most=1)
    assert len(capped[0]) == 1 and capped[0][0] == kept[0]


def test_held_out_miss_gives_int8_layers_back_before_the_original(monkeypatch):
    """Step 8 with the INT8 stage alone planned: it meets --max-drop 0 on the digits planning sees
    (the original is sure of them) and misses on the held-out share (digits on the decision
    boundary). Before writing the original, the stage's layers go back (least damaging alone
    kept, bisected, each a look); the written model, run in ORT, loses nothing there."""
    import onnxcompress.plan.planner as planner
    from test_auto import boundary_setup

    model, xs, ys, search, held, scores, convs, feeds = boundary_setup()
    monkeypatch.setattr(planner, "split_eval", lambda data, fraction, seed: (search, held))
    said = []
    result = plan_model(model, feeds, max_drop=0.0, eval_data=(xs, ys), layers=convs[1:5], kinds=["int8"],
                        timer=CostTimer(), report_threads=(1,), progress=said.append)
    s, c = result.summary, result.summary["confirmed"]
    first = next(line for line in said if "the written model on the" in line)
    assert "misses the budget" in first  # INT8 on the 4 layers lost boundary digits
    tried = [line for line in said if "least damaging of 4 steps back), on the held-out" in line]
    assert tried and c["looks"] == 1 + len(tried) + (s["plan"] == "original")
    assert c["meets"] and c["drop"] == 0.0 and s["meets_budget"]
    written = set(int8_convs(result.model))
    assert len(written) < 4 and written <= set(convs[1:5])
    sess = InferenceSession(result.model.SerializeToString())
    lost = np.sum((np.argmax(scores(held[0]), 1) == held[1]) & (np.argmax(sess.run(None, {"input": held[0]})[0], 1)
                                                                 != held[1]))
    assert lost == c["lost"] == 0  # as ORT gives it for the written model


def test_held_out_miss_keeps_int8_on_the_layers_that_pass_there(monkeypatch):
    """Step 8 as above, the held-out share now the boundary digits that INT8 on no single one of
    the layers flips (found here in ORT, with the planner's calibration feeds), some of which INT8
    on all of them does flip: the stage misses there, and INT8 on the least damaging layer alone
    meets it, so the written model keeps INT8 on a prefix and loses nothing there (run in ORT)."""
    import onnxcompress.plan.planner as planner
    from onnxcompress.plan.budget import DEFAULT_VAL_FRACTION
    from test_auto import boundary_setup

    import onnxcompress.int8 as int8

    # 8-bit weights whatever the CPU (on one whose u8 x s8 kernels saturate, the stage would take 7):
    # more rounding error, so that INT8 on all four layers flips boundary digits that each alone leaves
    monkeypatch.setattr(int8, "u8s8_saturates", lambda: False)
    model, xs, ys, search, held, scores, convs, feeds = boundary_setup()
    convs = convs[1:5]
    stage = STAGES["int8"]
    base = stage.prepare(planner._canonical(model))
    fit = list(split_feeds(feeds, DEFAULT_VAL_FRACTION, 0)[0])[:stage.max_feeds]  # the planner's

    def flipped(layers):
        out = InferenceSession(stage.apply(base, layers, fit).SerializeToString()).run(None, {"input": held[0]})[0]
        return np.argmax(out, 1) != held[1]

    calm = ~np.any([flipped([n]) for n in convs], axis=0)
    if not (flipped(convs) & calm).any():
        pytest.skip("on this CPU INT8 on all four layers flips no digit that each alone leaves: nothing to back off")
    held = (held[0][calm], held[1][calm])
    monkeypatch.setattr(planner, "split_eval", lambda data, fraction, seed: (search, held))
    said = []
    result = plan_model(model, feeds, max_drop=0.0, eval_data=(xs, ys), layers=convs, kinds=["int8"],
                        timer=CostTimer(), report_threads=(1,), progress=said.append)
    s, c = result.summary, result.summary["confirmed"]
    assert "misses the budget" in next(line for line in said if "the written model on the" in line)
    written = set(int8_convs(result.model))
    assert 1 <= len(written) < 4 and written <= set(convs) and s["plan"] == "int8"
    assert c["meets"] and c["lost"] == 0 and s["meets_budget"] and c["looks"] >= 2
    rows = {r["name"]: r for r in result.layers}
    assert all(rows[n]["choice"] == "int8" for n in written)
    assert all("given back" in rows[n]["why"] for n in set(convs) - written)
    out = InferenceSession(result.model.SerializeToString()).run(None, {"input": held[0]})[0]
    assert np.all(np.argmax(out, 1) == held[1])  # as ORT gives it for the written model


def test_held_out_miss_ranks_steps_back_of_ours_and_of_the_stage_together(monkeypatch):
    """Step 8 with layers of ours placed in the INT8 model: the held-out share refuses INT8 on one
    layer that is not ours (an oracle on the real confirmation: a model with that layer in INT8
    misses, as a stem that saturates on the CPU would), and that layer is ranked the most damaging
    step back. The written model keeps every layer of ours and INT8 on every other layer, that
    layer fp32; giving the layers of ours back first, as step 8 used to, gave all of them up."""
    import onnxcompress.plan.planner as planner
    from onnxcompress.plan.budget import Evaluator
    from test_auto import boundary_setup

    model, xs, ys, _, _, _, convs, feeds = boundary_setup()  # --eval split as the planner splits it
    real_confirm, real_alone = Evaluator.confirm, planner.damage_alone
    culprit: list[str] = []

    def confirm(self, m, max_drop):
        c = real_confirm(self, m, max_drop)
        if not culprit:  # the planned model: its first INT8 Conv is refused from here on
            culprit.append(int8_convs(m)[0])
        c.meets = culprit[0] not in int8_convs(m)
        return c

    def alone(*args, **kwargs):
        d = real_alone(*args, **kwargs)
        d[culprit[0]] = max(d.values()) + 1.0
        return d

    monkeypatch.setattr(Evaluator, "confirm", confirm)
    monkeypatch.setattr(planner, "damage_alone", alone)
    said = []
    result = plan_model(model, feeds, max_drop=0.5, eval_data=(xs, ys), layers=convs[1:5],
                        candidates=candidate_list("cluspa")[:1], kinds=["cluspa", "int8"], timer=CostTimer(0.5),
                        report_threads=(1,), progress=said.append)
    s, c = result.summary, result.summary["confirmed"]
    planned = next(line for line in said if "the written model on the" in line)
    assert "misses the budget" in planned and culprit
    ours = {n.name for n in result.model.graph.node if n.domain == DOMAIN}
    written_int8 = set(int8_convs(result.model))
    assert ours and written_int8  # both kinds kept
    assert culprit[0] not in written_int8 and culprit[0] in conv_names(result.model)  # back to fp32
    # every other step kept: each target is ours or INT8, but the culprit
    rows = {r["name"]: r for r in result.layers}
    assert {n for n in convs[1:5] if rows[n]["choice"] not in ("original",)} == set(convs[1:5]) - {culprit[0]}
    assert len(ours) + len(written_int8) == 3 and s["plan"].endswith(" + int8")
    tried = [line for line in said if "steps back), on the held-out" in line]
    assert c["looks"] == 1 + len(tried) <= 1 + int(np.ceil(np.log2(len(convs[1:5]) + len(ours))))
    assert c["meets"] and c["looks"] >= 2 and "given back" in rows[culprit[0]]["why"]


def _cluspa_density(model) -> dict[str, float]:
    """Each ClusteredSparseConv of `model` (by its layer's name): its share of non-zero weights."""
    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.domain == DOMAIN and n.op_type == "ClusteredSparseConv":
            shape = next(a.ints for a in n.attribute if a.name == "weight_shape")
            out[n.name] = float(np.prod(inits[n.input[3]].dims)) / float(np.prod(shape))
    return out


class SparsityTimer(CostTimer):
    """CostTimer's model, a ClusteredSparseConv saving 0.5 ms plus 1 ms per share of zero weights
    (cluspa s=0.9 saves more than s=0.8)."""

    def time(self, model, key=None, runs=None, threads=None):
        saved = sum(0.5 + (1.0 - d) for d in _cluspa_density(model).values())
        return 10.0, 10.0 - saved - self.per_int8 * len(int8_convs(model))


@pytest.mark.parametrize("kinds", [["cluspa"], ["cluspa", "int8"]])
def test_held_out_miss_steps_a_layer_of_ours_back_to_a_gentler_setting(monkeypatch, kinds):
    """Step 8 with two settings of cluspa, s=0.9 saving more than s=0.8: the held-out share
    refuses one layer of ours at s=0.9 (an oracle on the real confirmation, that step ranked the
    most damaging), and accepts it at s=0.8. The written model keeps that layer at s=0.8, fitted
    and run in ORT, and every other layer of ours at its planned setting; before, the layer went
    back to its original (or INT8) form, and the time s=0.8 saves on it was lost."""
    import onnxcompress.plan.planner as planner
    from onnxcompress.plan.budget import Evaluator
    from test_auto import boundary_setup

    model, xs, ys, _, _, _, convs, feeds = boundary_setup()
    real_confirm, real_ranked = Evaluator.confirm, planner.ranked_steps
    culprit: list[str] = []

    def confirm(self, m, max_drop):
        c = real_confirm(self, m, max_drop)
        dense = _cluspa_density(m)
        if not culprit:  # the planned model: its first layer at s=0.9 is refused there from here on
            culprit.extend(n for n in sorted(dense) if dense[n] < 0.15)
        c.meets = dense.get(culprit[0], 1.0) >= 0.15
        return c

    def ranked(ours, rungs, stage_damage):
        steps = real_ranked(ours, rungs, stage_damage)
        top = max(s[0] for s in steps) + 1.0
        return sorted((top, *s[1:]) if s[2] == culprit[0] and s[3] == ours[s[2]].label else s for s in steps)

    monkeypatch.setattr(Evaluator, "confirm", confirm)
    monkeypatch.setattr(planner, "ranked_steps", ranked)
    said = []
    # a budget any plan meets where planning looks: the path goes to s=0.9 on every layer
    result = plan_model(model, feeds, max_drop=50.0, eval_data=(xs, ys), layers=convs[1:5],
                        candidates=candidate_list("cluspa"), kinds=kinds, timer=SparsityTimer(0.5),
                        report_threads=(1,), progress=said.append)
    s, c = result.summary, result.summary["confirmed"]
    planned = next(line for line in said if "the written model on the" in line)
    assert "misses the budget" in planned and culprit
    written = _cluspa_density(result.model)
    assert 0.15 <= written[culprit[0]] < 0.35  # s=0.8, not given back
    rows = {r["name"]: r for r in result.layers}
    assert rows[culprit[0]]["choice"] == "cluspa s=0.8"
    assert "stepped back from cluspa s=0.9" in rows[culprit[0]]["why"]
    assert rows[culprit[0]]["work_after"]  # the report counts the gentler setting's work
    assert all(written[n] < 0.15 for n in culprit[1:])  # every other layer planned at s=0.9 kept so
    assert c["meets"] and c["looks"] >= 2 and s["meets_budget"]
    tried = [line for line in said if "steps back), on the held-out" in line]
    assert c["looks"] == 1 + len(tried) and any("1 at a gentler setting" in line for line in tried)
    # the written model in ORT against the fp32 reference: it runs and the culprit's node is real
    sess = InferenceSession(result.model.SerializeToString())
    out = sess.run(None, {"input": xs[:16]})[0]
    ref = InferenceSession(model.SerializeToString()).run(None, {"input": xs[:16]})[0]
    assert out.shape == ref.shape and np.mean(np.argmax(out, 1) == np.argmax(ref, 1)) >= 0.9
    # each layer of ours at s=0.9 and at s=0.8, and, with the stage, each of its layers (the same four)
    assert all(f"of {8 + 4 * ('int8' in kinds)} steps back" in line for line in tried)


@pytest.mark.parametrize("kinds", [["cluspa"], ["cluspa", "int8"]])
def test_guarantee_steps_a_layer_of_ours_down_before_giving_it_back(monkeypatch, kinds):
    """Step 6 with cluspa s=0.9 and s=0.8: once the plan is fitted (an oracle on the real
    measurement from there on), the written model misses the budget with one layer at s=0.9 and
    meets it with that layer at s=0.8. The guarantee steps that layer down rather than giving it
    back: the written model (run in ORT) has it at s=0.8 and every other layer at s=0.9."""
    import dataclasses

    import onnxcompress.plan.planner as planner
    from onnxcompress.plan.budget import Evaluator

    model = modelgen.small_resnet()
    feeds = _feeds(model)
    real_measure = Evaluator.measure
    culprit: list[str] = []
    armed: list[bool] = []

    def measure(self, m, with_eval=True, screen=False):
        out = real_measure(self, m, with_eval, screen)
        dense = _cluspa_density(m)
        if armed and not culprit:  # the first written model: its first layer at s=0.9 is refused
            culprit.extend(sorted(n for n in dense if dense[n] < 0.15))
        if armed and culprit and dense.get(culprit[0], 1.0) < 0.15:
            out = dataclasses.replace(out, cosine=0.0, cosine_lower=0.0)
        return out

    def progress(line):
        said.append(line)
        if line.startswith("auto: sequential plan with"):  # step 5 measured: the guarantee comes next
            armed.append(True)

    real_guarantee = planner.guarantee

    def guarantee(layers, damage, *args, **kwargs):
        meets = args[1]
        meets(set(layers))  # the written model, measured: the culprit is known, and ranked most damaging
        return real_guarantee(layers, {**damage, culprit[0]: max(damage.values()) + 1.0}, *args, **kwargs)

    monkeypatch.setattr(Evaluator, "measure", measure)
    monkeypatch.setattr(planner, "guarantee", guarantee)
    said: list[str] = []
    result = plan_model(model, feeds, min_cosine=0.5, candidates=candidate_list("cluspa"), kinds=kinds,
                        timer=SparsityTimer(0.5), report_threads=(1,), progress=progress)
    assert armed and culprit, "the plan had no layer at s=0.9"
    written = _cluspa_density(result.model)
    assert 0.15 <= written[culprit[0]] < 0.35  # s=0.8, not given back
    assert all(written[n] < 0.15 for n in culprit[1:])  # the other layers planned at s=0.9 kept so
    rows = {r["name"]: r for r in result.layers}
    assert rows[culprit[0]]["choice"] == "cluspa s=0.8"
    assert "stepped back from cluspa s=0.9: the written model missed the budget" in rows[culprit[0]]["why"]
    assert result.summary["meets_budget"] and result.summary["speedup"]["1"] > 1.0
    x = feeds[0]
    out = InferenceSession(result.model.SerializeToString()).run(None, x)[0]
    ref = InferenceSession(model.SerializeToString()).run(None, x)[0]
    assert out.shape == ref.shape and np.isfinite(out).all()


class LayoutTimer(CostTimer):
    """CostTimer's model, where INT8 on the first Conv costs 1 ms in a model with no node of ours
    (so the stage leaves it out for speed) and `beside_ours` ms in a model with one (-1: the written
    model is faster with it in the stage, as ORT's layout choices around an fp32 stem); a node of
    ours in the first Conv's stead costs 5 ms (so the plan leaves that layer to the stage)."""

    def __init__(self, first: str, beside_ours=-1.0, per_int8=0.5):
        super().__init__(per_int8)
        self.first = first
        self.beside_ours = beside_ours

    def time(self, model, key=None, runs=None, threads=None):
        ref, ms = super().time(model, key, runs, threads)
        if self.first in int8_convs(model):
            ms += self.beside_ours if any(n.domain == DOMAIN for n in model.graph.node) else 1.0
        if any(n.domain == DOMAIN and n.name == self.first for n in model.graph.node):
            ms += 5.0
        return ref, ms


def test_a_layer_the_stage_left_for_speed_is_timed_again_in_the_written_model():
    """Step 6: the INT8 stage on the original leaves the first Conv fp32 (its model is faster so);
    with layers of ours in the written model that choice is timed again, and the first Conv goes
    into INT8 there, where the written model is faster with it and meets the budget. The written
    model, run in ORT, has it quantized; switched off (a timer that never rewards it), it stays fp32."""
    model = modelgen.small_resnet()
    feeds = _feeds(model)
    first = conv_names(model)[0]
    said = []
    result = plan_model(model, feeds, min_cosine=0.5, candidates=candidate_list("cluspa")[:1],
                        kinds=["cluspa", "int8"], timer=LayoutTimer(first), report_threads=(1,), progress=said.append)
    assert any(f"{first}, left out of int8 for speed, timed again" in line and "taken in" in line for line in said)
    ours = [n.name for n in result.model.graph.node if n.domain == DOMAIN]
    assert ours and first in int8_convs(result.model) and first not in ours
    rows = {r["name"]: r for r in result.layers}
    assert rows[first]["choice"] == "int8" and result.summary["meets_budget"]
    assert any("in it in the written model" in n for n in result.notes)
    InferenceSession(result.model.SerializeToString()).run(None, feeds[0])
    # the same plan where INT8 on the first Conv costs time in every model: left out, and so written
    said = []
    kept_out = plan_model(model, feeds, min_cosine=0.5, candidates=candidate_list("cluspa")[:1],
                          kinds=["cluspa", "int8"], timer=LayoutTimer(first, beside_ours=1.0), report_threads=(1,),
                          progress=said.append)
    assert first not in int8_convs(kept_out.model)
    assert {r["name"]: r for r in kept_out.layers}[first]["why"].startswith("left out of int8")
    assert any("not taken" in line for line in said if "timed again in the written model" in line)
