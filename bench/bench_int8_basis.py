"""One 3x3 layer in INT8, three ways: ORT's INT8 of the dense Conv, penni's portable form in INT8
as ORT's own ops run it (d depthwise QLinearConvs + QLinearConcat + the 1x1 coefficient
QLinearConv), and the same with the basis stage as one QLinearBasisMaps of ours
(passes/fuse_quantized_basis.py, what quantize_convs writes).

Each layer is its own model: a 3x3 Conv (C -> C, pads 1, random weights) and a Relu, batch 1;
penni's portable form with dense coefficients (d bases, data-driven fit on the calibration
inputs); every variant quantized by onnxcompress.int8.quantize_convs on the same 64 calibration
inputs (ReLU of a gaussian). Latency: the three interleaved (A B C A B C ...), medians with
p10-p90, 1 and 2 threads; the basis-stage kernels alone from ORT's profiler (medians of the
node times: the d depthwise QLinearConvs + QLinearConcat against QLinearBasisMaps; the
Transposes at the single-layer model's edges, which a whole INT8 model does not have, are
left out of every column). Also printed: the fused model's maps against the unfused one's
(max difference in u8 steps: one rounding is saved).

    python bench/bench_int8_basis.py                     # ResNet-18 shapes, MNIST and ImageNet sizes, d = 2, 3
    python bench/bench_int8_basis.py --shapes 128x14 --bases 3 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from onnxcompress.evaluation import bench_models  # noqa: E402
from onnxcompress.int8 import quantize_convs  # noqa: E402
from onnxcompress.optimizer import optimize  # noqa: E402
from onnxcompress.table import format_table  # noqa: E402
from bench_layout_tax import load_note, machine_summary  # noqa: E402

DEFAULT_SHAPES = ["64x28", "128x14", "256x7", "512x4", "64x56", "128x28", "256x14", "512x7"]


def layer_model(c: int, size: int, seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((c, c, 3, 3)) * np.sqrt(2.0 / (9 * c))).astype(np.float32)
    b = (rng.standard_normal(c) * 0.05).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["y0"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["y0"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, size, size])],
                              [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def node_times(path: str, feed: dict, threads: int, runs: int) -> dict[str, float]:
    """Median kernel time (us) per op type, Transposes apart, from ORT's profiler."""
    import onnxruntime as ort

    from onnxcompress._runtime import session_options

    so = session_options(threads)
    so.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        so.profile_file_prefix = os.path.join(tmp, "p")
        s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            s.run(None, feed)
        events = json.load(open(s.end_profiling()))
    per = defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per[(e["args"]["op_name"], e["name"])].append(e["dur"])
    out = defaultdict(float)
    for (op, _), durations in per.items():
        out[op] += float(np.median(durations[len(durations) // 5:]))
    return dict(out)


def maps_difference(unfused: onnx.ModelProto, fused: onnx.ModelProto, feed: dict) -> int:
    """Largest difference in u8 steps between the basis maps of the two models."""
    from onnxcompress._runtime import InferenceSession

    concat = next(n for n in unfused.graph.node if n.op_type == "Concat")
    q = next(n for n in unfused.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == concat.output[0])
    name = q.output[0]
    outs = []
    for m in (unfused, fused):
        m = onnx.ModelProto.FromString(m.SerializeToString())
        m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.UINT8, None))
        outs.append(InferenceSession(m, threads=1).run([name], feed)[0].astype(int))
    return int(np.abs(outs[0] - outs[1]).max())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, help="CxS: channels x spatial size")
    ap.add_argument("--bases", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    print(machine_summary())
    rows, records = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes:
            c, size = (int(v) for v in shape.split("x"))
            model = layer_model(c, size, seed=c + size)
            rng = np.random.default_rng(7)
            calib = [{"x": np.maximum(rng.standard_normal((1, c, size, size)), 0).astype(np.float32)}
                     for _ in range(64)]
            feed = calib[0]
            dense = quantize_convs(model, calib)
            for d in args.bases:
                portable, _ = optimize(model, "penni", calib_feeds=calib[:16], bases=d, coef_sparsity=0.0,
                                       portable=True, basis_iterations=0)
                unfused = quantize_convs(portable, calib, fuse_basis=False)
                fused = quantize_convs(portable, calib)
                paths = []
                for name, m in (("dense", dense), ("unfused", unfused), ("fused", fused)):
                    p = os.path.join(tmp, f"{shape}_{d}_{name}.onnx")
                    onnx.save(m, p)
                    paths.append(p)
                steps = maps_difference(unfused, fused, feed)
                for t in args.threads:
                    lat = bench_models(paths, feed, t, runs=args.runs, warmup=20)
                    prof = [node_times(p, feed, t, max(60, args.runs // 2)) for p in paths[1:]]
                    stage_ort = prof[0].get("QLinearConv", 0.0) - prof[1].get("QLinearConv", 0.0) + \
                        prof[0].get("QLinearConcat", 0.0)
                    stage_ours = prof[1].get("QLinearBasisMaps", 0.0)
                    rows.append([shape, d, t, f"{lat[0].median_ms:.3f}", f"{lat[1].median_ms:.3f}",
                                 f"{lat[2].median_ms:.3f}", f"{lat[0].median_ms / lat[1].median_ms:.2f}x",
                                 f"{lat[0].median_ms / lat[2].median_ms:.2f}x", f"{stage_ort:.0f}",
                                 f"{stage_ours:.0f}", f"{stage_ort / max(stage_ours, 1e-9):.2f}x", steps])
                    records.append({"shape": shape, "bases": d, "threads": t,
                                    "ms": [x.median_ms for x in lat], "p10": [x.p10_ms for x in lat],
                                    "p90": [x.p90_ms for x in lat], "stage_us_ort": stage_ort,
                                    "stage_us_ours": stage_ours, "max_step_difference": steps})
                    print(format_table(["shape", "d", "thr", "INT8 dense ms", "portable ORT ms", "portable ours ms",
                                        "ORT vs dense", "ours vs dense", "stage ORT us", "stage ours us",
                                        "stage x", "steps"], rows[-1:]), flush=True)
    print()
    print(format_table(["shape", "d", "thr", "INT8 dense ms", "portable ORT ms", "portable ours ms", "ORT vs dense",
                        "ours vs dense", "stage ORT us", "stage ours us", "stage x", "steps"], rows))
    print(load_note())
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine_summary(), "rows": records}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
