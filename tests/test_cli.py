"""The command line end to end, including its behaviour on bad input."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxcompress.cli import main
from onnxcompress.errors import OnnxCompressError


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_optimize_compare_inspect_bench(small_model_path, tmp_path):
    out = tmp_path / "out.onnx"
    report = tmp_path / "report.json"
    before = digest(small_model_path)
    r = invoke("optimize", small_model_path, "-o", out, "--method", "falcon", "--verify", "--report", report)
    assert r.exit_code == 0, r.output
    assert "5 of 6 Conv rewritten" in r.output and "input is not produced by a ReLU-like op" in r.output
    assert digest(small_model_path) == before
    saved = onnx.load(str(out))
    assert saved.ir_version <= 10
    assert any(o.domain == "ai.onnxcompress" for o in saved.opset_import)
    assert json.loads(report.read_text())["totals"]["rewritten"] == 5

    r = invoke("compare", small_model_path, out, "--random", 3)
    assert r.exit_code == 0, r.output
    row = r.output.strip().splitlines()[-1].split()
    max_err, cosine, top1 = float(row[2]), float(row[4]), float(row[5])
    assert max_err < 1e-4 and cosine > 0.999999 and top1 == 1.0

    r = invoke("inspect", out, "--json")
    data = json.loads(r.output)
    assert data["totals"]["convs"] == 6
    assert sum(c["op"].endswith("SparseInputConv") for c in data["convs"]) == 5
    first = data["convs"][0]
    assert first["macs"] == 14 * 14 * 8 * 3 * 9 and first["relu_input"] is None
    r = invoke("inspect", small_model_path)
    assert r.exit_code == 0 and "total" in r.output and "Clip->MaxPool" in r.output

    r = invoke("bench", small_model_path, out, "--runs", 3, "--warmup", 1, "--threads", 1, "--threads", 2, "--json")
    rows = json.loads(r.output)
    assert len(rows) == 4 and all(x["median_ms"] > 0 for x in rows)
    assert [x["threads"] for x in rows] == [1, 1, 2, 2]
    for first, other in ((rows[0], rows[1]), (rows[2], rows[3])):  # per thread count: first / this median
        assert other["ratio_to_first"] == pytest.approx(first["median_ms"] / other["median_ms"], rel=1e-6)
        assert other["p10_ms"] <= other["median_ms"] <= other["p90_ms"]


def test_bench_blocks_count_runs_after_the_first_of_each_block(small_model_path, monkeypatch):
    """--block: each model runs `block` times in a row per round; the first of each block is not counted."""
    import onnxruntime

    from onnxcompress.evaluation import bench_models, open_session

    calls = []
    real_run = onnxruntime.InferenceSession.run

    def counting_run(self, *args, **kwargs):
        calls.append(id(self))
        return real_run(self, *args, **kwargs)

    feed = {open_session(small_model_path).get_inputs()[0].name: np.zeros((1, 3, 16, 16), np.float32)}
    monkeypatch.setattr(onnxruntime.InferenceSession, "run", counting_run)
    lat = bench_models([small_model_path, small_model_path], feed, 1, runs=5, warmup=0, block=3)
    # 5 counted runs, 2 per block of 3: 3 rounds of A A A B B B
    assert len(calls) == 18 and calls[:3] == [calls[0]] * 3 and calls[3:6] == [calls[3]] * 3 != calls[:3]
    assert len(lat) == 2 and lat[0].ratio_to_first == 1.0
    with pytest.raises(OnnxCompressError, match="block must be >= 1"):
        bench_models([small_model_path], feed, 1, runs=5, block=0)
    r = invoke("bench", small_model_path, "--runs", 2, "--warmup", 0, "--block", 2, "--json")
    assert r.exit_code == 0 and len(json.loads(r.output)) == 1


def test_optimize_with_calibration_reports_zero_fractions(small_model_path, tmp_path):
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", input=x)
    r = invoke("optimize", small_model_path, "-o", tmp_path / "o.onnx", "--method", "falcon", "--calib",
               tmp_path / "calib.npz", "--report", tmp_path / "r.json", "--select", "all")
    assert r.exit_code == 0, r.output
    layers = json.loads((tmp_path / "r.json").read_text())["layers"]
    fractions = [l["input_zero_fraction"] for l in layers if l["status"] == "rewritten"]
    assert len(fractions) == 5 and all(0.0 < f < 1.0 for f in fractions)
    assert "MACs on non-zero inputs" in r.output


@pytest.mark.parametrize("min_speedup", [1e-9, 1e9])
def test_measured_selection_keeps_only_layers_that_pay(small_model_path, tmp_path, min_speedup):
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", input=x)
    r = invoke("optimize", small_model_path, "-o", tmp_path / "o.onnx", "--method", "falcon", "--calib",
               tmp_path / "calib.npz", "--report", tmp_path / "r.json", "--min-speedup", min_speedup)
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "r.json").read_text())
    timed = [l for l in report["layers"] if "measured_speedup" in l]
    assert len(timed) == 5 and all(l["measured_speedup"] > 0 for l in timed)
    for l in timed:
        if l["status"] == "rewritten":
            assert l["measured_speedup"] >= min_speedup
        elif l["measured_speedup"] < min_speedup:
            assert "ORT's Conv on a real input" in l["reason"]
        else:  # faster alone, given back by the whole-model check
            assert "whole model timed" in l["reason"]
    rewritten = report["totals"]["rewritten"]
    if min_speedup > 1:
        assert rewritten == 0
    elif rewritten:  # every layer passes alone: the whole-model timing decided, and said so
        note = next(n for n in report["notes"] if n.startswith("falcon: the model with"))
        assert f"with {rewritten} layer(s) rewritten" in note
        assert float(note.split(" timed ")[1].split("x")[0]) >= 1.0
    else:
        assert any("no set of rewritten layers made the whole model faster" in n for n in report["notes"])
        assert all(l["status"] == "skipped" and "whole model timed" in l["reason"] for l in timed)


def test_bad_option_value_is_refused(small_model_path, tmp_path):
    r = invoke("optimize", small_model_path, "-o", tmp_path / "o.onnx", "--method", "falcon", "--select", "bogus")
    assert r.exit_code == 2


def test_threshold_is_reported_as_approximate(small_model_path, tmp_path):
    r = invoke("optimize", small_model_path, "-o", tmp_path / "t.onnx", "--method", "falcon", "--threshold", "0.05")
    assert r.exit_code == 0 and "approximate" in r.output


@pytest.mark.parametrize("case", ["missing", "not_onnx", "same_path", "dynamic_weight", "bad_threshold", "no_dir"])
def test_bad_input_gives_clear_error_and_no_output(case, small_model_path, tmp_path):
    out = tmp_path / "out.onnx"
    src = small_model_path
    args = []
    if case == "missing":
        src = tmp_path / "nope.onnx"
    elif case == "not_onnx":
        src = tmp_path / "junk.onnx"
        src.write_bytes(b"this is not a protobuf \x00\xff\x13" * 10)
    elif case == "same_path":
        out = src
    elif case == "dynamic_weight":
        import modelgen
        b = modelgen.Builder()
        w = b.op("Relu", [b.const(np.ones((4, 4, 3, 3), np.float32))])
        conv = b.op("Conv", [b.relu("input"), w])
        src = tmp_path / "dyn.onnx"
        onnx.save(b.model([1, 4, 8, 8], [conv]), str(src))
    elif case == "bad_threshold":
        args = ["--threshold", "-1"]
    elif case == "no_dir":
        out = tmp_path / "no" / "such" / "dir.onnx"
    before = digest(src) if src.exists() else None
    r = invoke("optimize", src, "-o", out, "--method", "falcon", *args)
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and "Traceback" not in r.output
    if case != "same_path":
        assert not out.exists()
    if before:
        assert digest(src) == before
    assert not list(tmp_path.glob(".*.tmp"))


def test_console_script_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "onnxcompress.cli", "inspect", str(tmp_path / "none.onnx")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "no such file" in proc.stderr
