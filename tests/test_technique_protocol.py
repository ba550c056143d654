"""A technique is one module: a Technique registered from here (no package file edited) is
an `optimize --method` choice with its own options, is fitted by the shared sequential loop,
counted in the report, a candidate kind of the planner; an op it owns is registered with onnx
and read back by the analysis. Also: the registry's refusals and the shared row budget."""

import json

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from click.testing import CliRunner

import modelgen
from onnxcompress import DOMAIN, InferenceSession, schemas, techniques
from onnxcompress.analysis import analyse_convs
from onnxcompress.calibration import conv_attrs, refit_conv_layer
from onnxcompress.calibration.sequential import RowBudget
from onnxcompress.cli import main
from onnxcompress.errors import OnnxCompressError
from onnxcompress.graph import constant_input, unique_name
from onnxcompress.inputs import random_feeds
from onnxcompress.methods import METHODS
from onnxcompress.optimizer import optimize
from onnxcompress.plan.candidates import KINDS, candidate_list
from onnxcompress.techniques import OpSpec, Option, Technique, Work
from onnxcompress.techniques.base import CALIB_ROWS


class Refit(Technique):
    """Test only: every ungrouped Conv refitted by ridge least squares to the reference model's
    output on its captured input, and run by SparseInputConv's dense path (ORT's own Conv)."""

    name = "test-refit"
    summary = "test only: least-squares refit of every Conv, SparseInputConv's dense path"
    options = (Option("refit_ridge", float, 1e-6, "test-refit: relative ridge of the refit"), CALIB_ROWS)
    needs_calibration = True
    ladder = ({"refit_ridge": 1e-6}, {"refit_ridge": 1e-2})
    plan_summary = "least-squares refit"

    def __init__(self):
        self.seen = []  # (layer, batches, rows per batch, seed) per fit

    def applies_to(self, layer, graph, opts):
        return "grouped: left to the test" if layer.group > 1 else None

    def fit_layer(self, layer, batches, opts):
        self.seen.append((layer.name, len(batches), batches.row_budget, batches.seed))
        return refit_conv_layer(layer.weight, layer.bias, conv_attrs(layer.node), batches,
                                ridge=opts["refit_ridge"], row_budget=batches.row_budget, seed=batches.seed)

    def build(self, layer, fitted, graph, opts):
        from onnxcompress.passes.conv_rewrite import make_custom_conv

        weight, bias = fitted
        inputs = [layer.node.inputs[0], gs.Constant(unique_name(graph, f"{layer.name}.refit_w"), weight),
                  gs.Constant(unique_name(graph, f"{layer.name}.refit_b"), bias)]
        return [make_custom_conv(layer.node, "SparseInputConv", inputs, {"dense_below_zero_fraction": 2.0})]

    def details(self, layer, fitted, opts):
        change = np.linalg.norm(fitted[0] - layer.weight) / np.linalg.norm(layer.weight)
        return {"weight_change": float(change), "stored_bytes": int(fitted[0].nbytes + fitted[1].nbytes)}

    def count(self, details, macs):
        return Work(macs=macs, bytes=details.get("stored_bytes"))

    def label(self, opts):
        return f"refit r={opts['refit_ridge']}"


@pytest.fixture()
def refit():
    technique = techniques.register(Refit())
    yield technique
    techniques.unregister(technique.name)
    KINDS.pop(technique.name, None)


def _outputs(model, feeds):
    sess = InferenceSession(model.SerializeToString())
    return np.concatenate([sess.run(None, f)[0] for f in feeds])


def test_a_registered_technique_is_a_method_fitted_in_sequence_and_counted(refit):
    model = modelgen.small_resnet()
    feeds = random_feeds(model, 6, batch=4, seed=3)
    assert "test-refit" in METHODS and METHODS["test-refit"] is refit
    out, report = optimize(model, "test-refit", calib_feeds=feeds, refit_ridge=1e-6, calib_rows=2000)
    convs = [r for r in report.layers]
    rewritten = [r["name"] for r in convs if r["status"] == "rewritten"]
    skipped = {r["name"]: r["reason"] for r in convs if r["status"] == "skipped"}
    assert len(rewritten) == 5 and list(skipped.values()) == ["grouped: left to the test"]
    assert [n.op_type for n in out.graph.node if n.domain == DOMAIN] == ["SparseInputConv"] * 5
    # the shared loop: graph order, the feeds merged into one batch of 24, the seeded budget
    assert [s[0] for s in refit.seen] == rewritten
    assert {s[1:3] for s in refit.seen} == {(1, 2000)} and [s[3] for s in refit.seen] == list(range(5))
    # a refit on the exact model's own activations gives the layers back
    assert all(r["weight_change"] < 0.05 for r in convs if r["status"] == "rewritten")
    a, b = _outputs(model, feeds), _outputs(out, feeds)
    assert np.abs(a - b).max() <= 1e-3 * np.abs(a).max()
    # counted by the technique: MACs unchanged, the bytes it stores
    assert report.totals["work_after"]["macs"] == report.totals["conv_macs"]
    assert report.totals["work_after"]["bytes"] == sum(r["stored_bytes"] for r in convs if r["status"] == "rewritten")
    # its options are its own; the shared ones (--layers) work; calibration is required
    with pytest.raises(OnnxCompressError, match="--refit-ridge does not apply to --method penni"):
        optimize(model, "penni", refit_ridge=1.0)
    with pytest.raises(OnnxCompressError, match="does not apply to --method test-refit"):
        optimize(model, "test-refit", calib_feeds=feeds, bases=3)
    with pytest.raises(OnnxCompressError, match="calibration inputs"):
        optimize(model, "test-refit")
    only = rewritten[2]
    out, report = optimize(model, "test-refit", calib_feeds=feeds, layers=only)
    assert [n.name for n in out.graph.node if n.domain == DOMAIN] == [only]


def test_a_registered_technique_runs_from_the_command_line(refit, tmp_path):
    model = modelgen.small_resnet()
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32))
    r = CliRunner().invoke(main, ["optimize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.onnx"), "--method",
                                  "test-refit", "--calib", str(tmp_path / "calib.npz"), "--report",
                                  str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["method"] == "test-refit" and report["totals"]["rewritten"] == 5
    r = CliRunner().invoke(main, ["optimize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.onnx"), "--method",
                                  "no-such-technique"])
    assert r.exit_code != 0 and "test-refit" in r.output  # the choices listed include it


def test_a_registered_technique_is_a_planner_candidate(refit):
    from onnxcompress.plan.planner import _canonical, _provided

    model = _canonical(modelgen.small_resnet())
    feeds = random_feeds(model, 2, batch=4, seed=5)
    assert [c.label for c in candidate_list("test-refit")] == ["refit r=1e-06", "refit r=0.01"]
    assert "test-refit" in {c.kind for c in candidate_list()}
    kind = KINDS["test-refit"]
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    fitted, records, finishing = kind.apply(model, {"refit_ridge": 1e-6}, convs[:2], feeds, model, True,
                                            _provided())
    assert finishing == [] and [n.name for n in fitted.graph.node if n.domain == DOMAIN] == convs[:2]
    assert records[convs[0]].status == "rewritten" and records[convs[3]].status == "skipped"
    assert kind.work(records[convs[0]].details, 1000) == {"macs": 1000,
                                                           "bytes": records[convs[0]].details["stored_bytes"]}


def _scaled_schema():
    return schemas.conv_op_schema("TestScaledConv", "test only: Conv with W = Wq * scale", inputs=[
        schemas.param("X", "input"), schemas.param("Wq", "weights"), schemas.param("scale", "[M] scales")])


def test_an_op_of_a_registered_technique_is_checked_and_analysed():
    spec = OpSpec("TestScaledConv", _scaled_schema, lambda node: list(constant_input(node, 1).shape))

    class Scaled(Technique):
        name = "test-scaled"
        ops = (spec,)

    techniques.register(Scaled())
    try:
        assert techniques.op_owner("TestScaledConv")[1] is spec
        x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 8, 8])
        y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", "m", "h", "w"])
        wq = onnx.numpy_helper.from_array(np.ones((6, 4, 3, 3), np.float32), "wq")
        scale = onnx.numpy_helper.from_array(np.ones(6, np.float32), "scale")
        node = onnx.helper.make_node("TestScaledConv", ["x", "wq", "scale"], ["y"], name="layer", domain=DOMAIN,
                                     pads=[1, 1, 1, 1])
        model = onnx.helper.make_model(onnx.helper.make_graph([node], "g", [x], [y], [wq, scale]),
                                       opset_imports=[onnx.helper.make_opsetid("", 17),
                                                      onnx.helper.make_opsetid(DOMAIN, 1)])
        schemas.register_schemas()
        onnx.checker.check_model(model, full_check=True)  # the schema is known to onnx
        [row] = analyse_convs(model)
        assert row.op == f"{DOMAIN}.TestScaledConv" and row.output_shape == [1, 6, 8, 8]
        assert row.macs == 8 * 8 * 6 * 4 * 9 and row.out_channels == 6 and row.in_channels == 4
    finally:
        techniques.unregister("test-scaled")


def test_the_registry_refuses_clashes():
    class Again(Technique):
        name = "penni"

    with pytest.raises(OnnxCompressError, match="registered already"):
        techniques.register(Again())

    class Auto(Technique):
        name = "auto"

    with pytest.raises(OnnxCompressError, match="not 'auto'"):
        techniques.register(Auto())

    class Thief(Technique):
        name = "test-thief"
        ops = (OpSpec("BasisConv", _scaled_schema, lambda node: None),)

    with pytest.raises(OnnxCompressError, match="owned by 'penni'"):
        techniques.register(Thief())

    class Clash(Technique):
        name = "test-clash"
        options = (Option("bases", str, "x", "another meaning"),)

    with pytest.raises(OnnxCompressError, match="--bases"):
        techniques.register(Clash())
    with pytest.raises(TypeError):
        techniques.register(Again)  # the class, not an instance
    assert not {"test-thief", "test-clash"} & set(techniques.TECHNIQUES)


def test_one_row_budget():
    budget = RowBudget(1000, seed=7)
    assert [budget.per_batch(n) for n in (1, 3, 1000, 5000)] == [1000, 334, 1, 1]
    assert budget.seed_of(0) == 7 and budget.seed_of(4) == 11
    with pytest.raises(ValueError):
        RowBudget(0)


def _session_error(op: str) -> str:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 4, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    node = onnx.helper.make_node(op, ["x", "x"], ["y"], name="n", domain=DOMAIN)
    model = onnx.helper.make_model(onnx.helper.make_graph([node], "g", [x], [y]), ir_version=8,
                                   opset_imports=[onnx.helper.make_opsetid("", 17), onnx.helper.make_opsetid(DOMAIN, 1)])
    try:
        InferenceSession(model.SerializeToString())
    except Exception as exc:  # noqa: BLE001 - the message is what is checked
        return str(exc)
    return ""


def test_the_library_has_a_kernel_for_every_op_a_technique_owns():
    """The C++ table (ONNXCOMPRESS_REGISTER_OP in each kernel file) against the Python registry: a
    node of every owned op reaches its kernel's validation (a bad node), never 'not registered'."""
    unknown = "is not a registered function/op"
    assert unknown in _session_error("NoSuchConv")
    for spec in techniques.all_ops():
        message = _session_error(spec.name)
        assert message and unknown not in message, (spec.name, message)


def test_the_shared_loop_feeds_each_layer_the_model_as_compressed_so_far():
    """fit_in_sequence: sequential inputs see the layers replaced before; independent ones and the
    targets do not; a fit of None leaves its layer alone."""
    from onnxcompress.calibration.sequential import calibration_batches, fit_in_sequence
    from onnxcompress.plan.planner import _canonical

    model = _canonical(modelgen.small_resnet())
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    names = [n.name for n in convs[:3]]
    batches = calibration_batches(random_feeds(model, 3, batch=4, seed=2), model)
    assert len(batches) == 1 and next(iter(batches[0].values())).shape[0] == 12

    def zero_weights(current, name, fitted):  # the layer's weights become 0: its output is its bias
        current = onnx.ModelProto.FromString(current.SerializeToString())
        weight = next(n for n in current.graph.node if n.name == name).input[1]
        tensor = next(t for t in current.graph.initializer if t.name == weight)
        tensor.CopyFrom(onnx.numpy_helper.from_array(np.zeros_like(onnx.numpy_helper.to_array(tensor)), weight))
        return current

    def run(independent, skip=()):
        seen = {}

        def fit(index, name, data):
            seen[name] = [(x.copy(), y.copy()) for x, y in data][0]
            return None if name in skip else "fitted"

        out, fits = fit_in_sequence(model, names, batches, RowBudget(100), fit, zero_weights,
                                    independent=independent)
        return seen, out, fits

    seq, out, fits = run(False)
    ind, _, _ = run(True)
    assert list(fits) == names
    # layer 2's input is relu(layer 1's output): constant per channel once layer 1 is zeroed
    x2 = seq[names[1]][0]
    assert np.allclose(x2, x2[:, :, :1, :1]) and not np.allclose(ind[names[1]][0], x2)
    for name in names:  # targets: the original model's outputs either way
        np.testing.assert_allclose(seq[name][1], ind[name][1])
    np.testing.assert_allclose(seq[names[0]][0], ind[names[0]][0])
    zeroed = {n.name for n in out.graph.node if n.op_type == "Conv" and not onnx.numpy_helper.to_array(
        next(t for t in out.graph.initializer if t.name == n.input[1])).any()}
    assert zeroed == set(names)
    skipped, out, fits = run(False, skip={names[0]})
    assert list(fits) == names[1:]
    np.testing.assert_allclose(skipped[names[1]][0], ind[names[1]][0])  # layer 1 left alone
