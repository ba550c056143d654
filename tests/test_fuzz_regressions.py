"""Regression tests of the defects the fuzzer (tests/fuzz, issue 13) found, one per class,
each on a small hand-built input equivalent to the fuzz case that found it.

- Shape inference read string attributes (auto_pad, activation) with ORT's C++
  Ort::ShapeInferContext::GetAttrString, which reads past the attribute's buffer
  (ASan heap-buffer-overflow on every valid node with a string attribute; fuzz
  case op-BasisConv seed 1 index 0). Checked under ASan when
  ONNXCOMPRESS_FUZZ_ASAN names the sanitized library (.ci/run sets it).
- The CLI on a graph with a cycle or a tensor produced twice ended in
  onnx-graphsurgeon's raw traceback (cli seed 1 index 1); on a model without
  graph inputs with --calib in a raw IndexError (cli seed 2 index 161); on NaN
  Conv weights with --method tabconv in a raw TypeError (cli seed 2 index 88);
  on inf Conv weights with --method penni it never returned (LAPACK's SVD,
  cli seed 2 index 110). Each is now one `error:` line and exit status 2.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import modelgen
from ophelpers import LIB

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.fuzz import opcases, sanitizer  # noqa: E402

OPS = opcases.OPS


def _string_attribute_model(op: str) -> tuple[bytes, dict, tuple]:
    """A valid node of `op` with auto_pad SAME_UPPER, stride 2 and a fused Relu (string attributes;
    QLinearBasisMaps, which takes no activation, channels first with auto_pad only), its feeds,
    and the output shape ONNX Conv's formula gives."""
    rng = np.random.default_rng(11)
    while True:
        spec = opcases.VALID[op](rng)
        if spec.op != "LutConv" or spec.attrs.get("encoder", "tree") == "tree":
            break
    spec.attrs.pop("pads", None)
    spec.attrs.update(auto_pad="SAME_UPPER", strides=[2, 2])
    spec.attrs.pop("clip_min", None)
    spec.attrs.pop("clip_max", None)
    if op in opcases.U8_OPS:
        c = spec.x_shape[3] if spec.attrs.pop("channels_last", 0) == 1 else spec.x_shape[1]
        spec.x_shape = (1, c, 9, 7)
    else:
        spec.attrs["activation"] = "Relu"
        spec.x_shape = (1, spec.x_shape[1], 9, 7)
    if op == "LutConv":
        spec.attrs["encoder"] = "tree"
    model, feeds = opcases.build(spec, seed=0)
    m = opcases.expected_output_bytes(spec) // (1 if op in opcases.U8_OPS else 4) // (5 * 4)
    return model, feeds, (1, m, 5, 4)


@pytest.mark.parametrize("op", OPS)
def test_nodes_with_string_attributes_load_and_run(op):
    """The nodes whose shape inference read past the auto_pad string load, run and give the Y of
    SAME_UPPER with stride 2 (the over-read itself shows only under ASan: the test below)."""
    import onnxruntime as ort

    model, feeds, want = _string_attribute_model(op)
    so = ort.SessionOptions()
    so.register_custom_ops_library(LIB)
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    y = sess.run(None, feeds)[0]
    assert y.shape == want


@pytest.mark.skipif(not os.environ.get("ONNXCOMPRESS_FUZZ_ASAN"),
                    reason="set ONNXCOMPRESS_FUZZ_ASAN to a library built by tests/fuzz/build_asan.sh")
def test_string_attributes_under_asan(tmp_path):
    """The same nodes under AddressSanitizer: no report (it aborted on every one before the fix)."""
    for op in OPS:
        model, feeds, _ = _string_attribute_model(op)
        (tmp_path / f"{op}.onnx").write_bytes(model)
        np.savez(tmp_path / f"{op}.npz", **feeds)
    script = textwrap.dedent(f"""
        import numpy as np, onnxruntime as ort
        for op in {list(OPS)!r}:
            so = ort.SessionOptions()
            so.register_custom_ops_library({os.environ["ONNXCOMPRESS_FUZZ_ASAN"]!r})
            with np.load({str(tmp_path)!r} + "/" + op + ".npz") as z:
                feeds = {{k: z[k] for k in z.files}}
            ort.InferenceSession({str(tmp_path)!r} + "/" + op + ".onnx", so).run(None, feeds)
        print("ok")
    """)
    env = sanitizer.environment(os.environ["ONNXCOMPRESS_FUZZ_ASAN"])
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-6000:]


# ------------------------------------------------------------------ the command line

def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "onnxcompress.cli", *[str(a) for a in args]], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def assert_clean_error(proc, *words):
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in text, text
    for w in words:
        assert w in errors[0], errors[0]


def _small():
    return modelgen.small_resnet(seed=1, channels=4)


def _cycle(m):
    nodes = m.graph.node
    nodes[0].input[0] = nodes[7].output[0]  # the stem Conv reads a later node's output
    return m


def _produced_twice(m):
    m.graph.node[1].output[0] = m.graph.node[0].output[0]
    return m


def _no_inputs(m):
    del m.graph.input[:]
    return m


def _conv_weights(value):
    def damage(m):
        inits = {t.name: t for t in m.graph.initializer}
        conv = next(n for n in m.graph.node if n.op_type == "Conv" and n.input[1] in inits)
        t = inits[conv.input[1]]
        w = numpy_helper.to_array(t).copy()
        w.reshape(-1)[::7] = value
        t.CopyFrom(numpy_helper.from_array(w, t.name))
        return m
    return damage


CASES = {
    "cycle": (_cycle, ["inspect"], "cycle"),
    "cycle_optimize": (_cycle, ["optimize", "--method", "falcon", "--select", "all"], "cycle"),
    "produced_twice": (_produced_twice, ["optimize", "--method", "cluspa", "--data-free"], "two nodes"),
    "no_graph_inputs_calib": (_no_inputs, ["optimize", "--method", "cluspa", "--calib", "CALIB"], "no graph inputs"),
    "nan_weights_tabconv": (_conv_weights(np.nan), ["optimize", "--method", "tabconv", "--calib", "CALIB"],
                            "NaN or inf"),
    "inf_weights_penni": (_conv_weights(np.inf), ["optimize", "--method", "penni", "--data-free"], "NaN or inf"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_cli_refuses_broken_graphs_cleanly(name, tmp_path):
    damage, command, words = CASES[name]
    path = tmp_path / "model.onnx"
    onnx.save(damage(_small()), str(path))
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32))
    args = [command[0], path] + [a.replace("CALIB", str(tmp_path / "calib.npz")) for a in command[1:]]
    if command[0] == "optimize":
        args[2:2] = ["-o", tmp_path / "out.onnx"]
    proc = cli(*args, timeout=120)  # the inf case never returned before the fix
    assert_clean_error(proc, words)
    assert not (tmp_path / "out.onnx").exists()
