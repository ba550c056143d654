"""Helpers of the custom-op tests: the library, sessions with a forced instruction
set, one-node models, and the ONNX Runtime Conv reference."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import onnxcompress

LIB = onnxcompress.get_library_path()  # ONNXCOMPRESS_LIBRARY overrides

DOMAIN = "ai.onnxcompress"


RTOL = 1e-4


ATOL = 1e-4


def cpu_isas(vnni: bool = False) -> list[str]:
    """The ONNXCOMPRESS_ISA values this CPU runs; with vnni, also avx512vnni (AVX-512 with
    VNNI, which only the ops with a VNNI path treat differently from avx512)."""
    isas = ["generic"]
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    if "avx2" in flags and "fma" in flags:
        isas.append("avx2")
    if all(x in flags for x in ("avx512f", "avx512bw", "avx512vl", "avx512dq", "fma")):
        isas.append("avx512")
        if vnni and "avx512_vnni" in flags:
            isas.append("avx512vnni")
    return isas


ISAS = cpu_isas()
ISAS_VNNI = cpu_isas(vnni=True)


def session(model: onnx.ModelProto, isa: str | None = None, threads: int = 2) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.register_custom_ops_library(LIB)
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    old = os.environ.get("ONNXCOMPRESS_ISA")
    if isa is not None:
        os.environ["ONNXCOMPRESS_ISA"] = isa
    try:
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    finally:
        if isa is not None:
            if old is None:
                del os.environ["ONNXCOMPRESS_ISA"]
            else:
                os.environ["ONNXCOMPRESS_ISA"] = old


def make_model(nodes, inits, x_shape=("N", "C", "H", "W")) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    model.ir_version = 9
    return model


def conv_attrs(case: dict) -> dict:
    return {k: case[k] for k in ("auto_pad", "pads", "strides", "dilations", "group") if k in case}


def reference_model(case, w, b) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(w, "W")]
    inputs = ["X", "W"]
    if b is not None:
        inits.append(numpy_helper.from_array(b, "B"))
        inputs.append("B")
    act = case.get("activation", "")
    nodes = [helper.make_node("Conv", inputs, ["Y" if not act else "C"], **conv_attrs(case))]
    if act == "Relu":
        nodes.append(helper.make_node("Relu", ["C"], ["Y"]))
    elif act == "Clip":
        inits += [numpy_helper.from_array(np.float32(case["clip_min"]), "lo"),
                  numpy_helper.from_array(np.float32(case["clip_max"]), "hi")]
        nodes.append(helper.make_node("Clip", ["C", "lo", "hi"], ["Y"]))
    return make_model(nodes, inits)


def act_attrs(case) -> dict:
    out = {}
    if case.get("activation"):
        out["activation"] = case["activation"]
    if case.get("activation") == "Clip":
        out["clip_min"] = float(case["clip_min"])
        out["clip_max"] = float(case["clip_max"])
    return out


def assert_close(got, want, what):
    scale = float(np.abs(want).max(initial=0.0)) + 1.0
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL * scale, err_msg=what)


def creation_error(model: onnx.ModelProto, **kwargs) -> str:
    """The ONNX Runtime error creating a session of `model` raises (the model itself
    must build: the caller does that outside); a session that is created fails the test."""
    try:
        session(model, **kwargs)
    except Exception as e:  # noqa: BLE001 - the message is checked by the caller
        return f"{type(e).__name__}: {e}"
    raise AssertionError("the session was created; expected a validation error at session creation")


def assert_rejected(message: str, op: str, by_ort: bool = False) -> None:
    """The session-creation error came from our kernel's validation (CreateKernelV2 prefixes
    '<op> node '), or, for by_ort, from ONNX Runtime's own graph check naming the op
    (input counts and element types the op declares)."""
    if by_ort:
        assert "INVALID_GRAPH" in message and op in message, message
    else:
        assert f"{op} node '" in message, message


def assert_malformed_nodes_fail_cleanly(module: str) -> None:
    """Builds every node of `module`.MALFORMED (with its _node_model) and creates a session
    of it in a fresh interpreter: building must succeed, session creation must fail with
    our op's validation error (or ORT's graph check for the names in
    `module`.REJECTED_BY_ORT), and a crash would show as a non-zero exit code."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
        import ophelpers
        import {module} as t
        for name, kw in sorted(t.MALFORMED.items()):
            model = t._node_model(**dict(kw))  # a Python error here fails the test
            try:
                message = ophelpers.creation_error(model)
            except AssertionError:
                raise SystemExit("no error at session creation for " + name)
            try:
                ophelpers.assert_rejected(message, t.OP, name in t.REJECTED_BY_ORT)
            except AssertionError:
                raise SystemExit(name + ": not our validation error: " + message)
        print("ok")
    """)
    env = dict(os.environ, ONNXCOMPRESS_LIBRARY=LIB)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stdout + out.stderr


def run_limited(script: str, headroom_mib: int, timeout: int = 300):
    """Runs `script` in a fresh interpreter that has ophelpers imported and a function
    limit() which caps the process's address space (RLIMIT_AS) at what it uses now plus
    `headroom_mib`: call it once the runtime is loaded and warm. Returns the
    CompletedProcess (a crash shows as a negative return code)."""
    import subprocess
    import sys
    import textwrap

    prologue = textwrap.dedent(f"""
        import sys, resource
        sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
        import numpy as np
        import ophelpers

        def limit():
            with open("/proc/self/status") as f:
                vm = next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) * 1024
            cap = vm + {int(headroom_mib)} * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    """)
    env = dict(os.environ, ONNXCOMPRESS_LIBRARY=LIB)
    return subprocess.run([sys.executable, "-c", prologue + textwrap.dedent(script)], capture_output=True,
                          text=True, env=env, timeout=timeout)
