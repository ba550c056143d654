"""Where MobileNetV2's INT8 error comes from: each source of ORT's static INT8 simulated alone in
fp32, its top-1 agreement and logit cosine with the fp32 model on photo crops. Accuracy only.

Sources, each applied alone to the canonicalised fp32 model (BatchNorm folded), in ONNX Runtime:
- the weights: every Conv's weights rounded to s8 per output channel (symmetric, as ORT's
  quantizer: 127 steps, or 63 with `reduce_range`, what `quantize_convs` uses on a CPU whose
  u8 x s8 kernels saturate), fp32 activations;
- the u8 activations, per tensor, ranges MinMax on the calibration crops (as ORT's default
  calibrator), one QuantizeLinear -> DequantizeLinear pair per tensor, split in two families:
  "stream" tensors (the linear bottleneck outputs and the residual sums: every Add's inputs
  and output, and every Conv input that no Relu / Clip produced) and "clipped" tensors (the
  Conv inputs produced by a Relu / Clip(0, 6)); and both;
- for the stream tensors, the spread of their per-channel ranges (max |x| of the channel over the
  calibration crops): what an equalisation of those channels could give back at most.

Calibration: 256 photo crops (seed 0); agreement on 512 other crops (seed 7), as
bench/bench_int8_bias.py. The issue's budget is agreement 0.95.

    python bench/int8_error_sources.py [--model models/mobilenet_v2.onnx]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxcompress.images import photo_crops  # noqa: E402
from onnxcompress.passes import PassManager, canonicalize  # noqa: E402
from onnxcompress.table import format_table  # noqa: E402


def run(model: onnx.ModelProto, x: np.ndarray, inp: str, names: list[str] | None = None) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # keep the Q/DQ pairs as they are
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = names or [s.get_outputs()[0].name]
    parts = [s.run(names, {inp: x[i:i + 32]}) for i in range(0, len(x), 32)]
    return [np.concatenate([p[j] for p in parts]) for j in range(len(names))]


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in names)
    return out


def quantized_tensors(model: onnx.ModelProto, ranges: dict[str, tuple[float, float]]) -> onnx.ModelProto:
    """`model` with a u8 QuantizeLinear -> DequantizeLinear pair after each tensor of `ranges`."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    for t, (lo, hi) in ranges.items():
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale = (hi - lo) / 255 if hi > lo else 1.0
        zp = int(np.clip(round(-lo / scale), 0, 255))
        g.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), f"{t}.fq_scale"),
                              numpy_helper.from_array(np.array(zp, np.uint8), f"{t}.fq_zero")])
        for n in g.node:
            for i, name in enumerate(n.input):
                if name == t:
                    n.input[i] = f"{t}.fq"
        g.node.extend([helper.make_node("QuantizeLinear", [t, f"{t}.fq_scale", f"{t}.fq_zero"], [f"{t}.fq_u8"]),
                       helper.make_node("DequantizeLinear", [f"{t}.fq_u8", f"{t}.fq_scale", f"{t}.fq_zero"],
                                        [f"{t}.fq"])])
    graph = gs.import_onnx(out)
    graph.toposort()
    return gs.export_onnx(graph)


def quantized_weights(model: onnx.ModelProto, qmax: int) -> onnx.ModelProto:
    """`model` with every Conv's weights rounded to `qmax` steps per output channel (symmetric)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    weights = {n.input[1] for n in out.graph.node if n.op_type == "Conv"}
    for init in out.graph.initializer:
        if init.name in weights:
            w = numpy_helper.to_array(init)
            scale = np.abs(w).reshape(len(w), -1).max(axis=1) / qmax
            scale = np.where(scale > 0, scale, 1.0).reshape(-1, *([1] * (w.ndim - 1)))
            init.CopyFrom(numpy_helper.from_array((np.round(w / scale) * scale).astype(np.float32), init.name))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "mobilenet_v2.onnx"))
    args = ap.parse_args()
    model, _ = PassManager(canonicalize()).run(onnx.load(args.model))
    inp = model.graph.input[0].name
    producer = {o: n for n in model.graph.node for o in n.output}
    family: dict[str, str] = {}
    for n in model.graph.node:
        if n.op_type == "Conv" and n.input[0] != inp:
            p = producer.get(n.input[0])
            family[n.input[0]] = "clipped" if p is not None and p.op_type in ("Clip", "Relu") else "stream"
        if n.op_type == "Add":
            for t in list(n.input) + [n.output[0]]:
                family.setdefault(t, "stream")
    cal, x = photo_crops(256, seed=0), photo_crops(512, seed=7)
    names = list(family)
    values = dict(zip(names, run(with_outputs(model, names), cal, inp, [model.graph.output[0].name] + names)[1:]))
    ranges = {t: (float(v.min()), float(v.max())) for t, v in values.items()}
    ref = run(model, x, inp)[0]

    def score(m: onnx.ModelProto) -> tuple[float, float]:
        out = run(m, x, inp)[0]
        cos = np.sum(out * ref, 1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
        return float(np.mean(out.argmax(1) == ref.argmax(1))), float(np.mean(cos))

    pick = lambda fam: {t: r for t, r in ranges.items() if fam in ("all", family[t])}  # noqa: E731
    variants = [
        ("s8 weights (127 steps), fp32 activations", quantized_weights(model, 127)),
        ("7-bit weights (63 steps, reduce_range), fp32 activations", quantized_weights(model, 63)),
        (f"u8 stream tensors ({len(pick('stream'))}), fp32 weights", quantized_tensors(model, pick("stream"))),
        (f"u8 clipped tensors ({len(pick('clipped'))}), fp32 weights", quantized_tensors(model, pick("clipped"))),
        (f"u8 on both ({len(ranges)}), fp32 weights", quantized_tensors(model, ranges)),
    ]
    rows = []
    for label, m in variants:
        agreement, cosine = score(m)
        rows.append([label, f"{agreement:.3f}", f"{cosine:.4f}"])
        print(f"{label}: agreement {agreement:.3f}, cosine {cosine:.4f}", flush=True)
    print()
    print(format_table(["source of error, alone", "top-1 agreement (512 crops)", "logit cosine"], rows))
    spreads = []
    for t, v in values.items():
        if family[t] == "stream":
            r = np.abs(v).max(axis=(0, 2, 3))
            spreads.append(float(r.max() / max(np.median(r), 1e-12)))
    print(f"\nstream tensors, per-channel max |x| over the median channel's: median {np.median(spreads):.1f}, "
          f"largest {max(spreads):.1f} (per-tensor u8 spends that factor of its steps on the widest channel)")


if __name__ == "__main__":
    main()
