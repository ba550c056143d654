"""Whole-model benchmark of the falcon rewrite on real digits.

For each model: the real zero fraction at the input of every ReLU-fed Conv
(measured on MNIST digits), what the per-layer timing chose, agreement of the
rewritten models with the original, and end-to-end latency at batch 1 with 1
and 2 threads, runs interleaved, medians, of three models: the original, falcon
with every ReLU-fed Conv rewritten (--select all), and falcon keeping only the
layers that time faster than ORT's Conv (--select measured). Prints tables;
--json writes the numbers.

    python bench/bench_falcon_model.py [--models models/digits_cnn.onnx ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from onnxcompress.inputs import dataset_arrays  # noqa: E402
from onnxcompress.evaluation import bench_models, compare_models  # noqa: E402
from onnxcompress.model_io import load_model, prepare_for_runtime  # noqa: E402
from onnxcompress.optimizer import optimize  # noqa: E402
from onnxcompress.table import format_table  # noqa: E402

DEFAULT_MODELS = ["models/digits_cnn.onnx", "models/resnet18_mnist.onnx"]


def run(model_path: Path, calib_x: np.ndarray, x: np.ndarray, args) -> dict:
    original = load_model(model_path)
    name = original.graph.input[0].name
    calib = [{name: calib_x[i:i + 8]} for i in range(0, args.calib, 8)]
    variants = {}
    for select in ("all", "measured"):
        model, report = optimize(original, "falcon", calib_feeds=calib, select=select, threads=1)
        variants[select] = (prepare_for_runtime(model).SerializeToString(), report)
    evaluation = [{name: x[i:i + 32]} for i in range(0, args.eval, 32)]

    report = variants["measured"][1]
    layers = [l for l in report.layers if "input_zero_fraction" in l]
    print(f"\n== {model_path}: {len(layers)} of {report.totals['conv_layers']} Conv are ReLU-fed; "
          f"{report.totals['rewritten']} kept by --select measured")
    print(format_table(
        ["layer", "kernel", "stride", "in", "out", "MACs", "input zeros", "alone vs ORT Conv", "kept"],
        [[l["name"], l.get("kernel"), l.get("stride"), l.get("in_channels"), l.get("out_channels"), l.get("macs"),
          l["input_zero_fraction"], l.get("measured_speedup"), l["status"] == "rewritten"] for l in layers]))
    zeros = [l["input_zero_fraction"] for l in layers]
    every = variants["all"][1].totals
    print(f"zero fraction at ReLU-fed Conv inputs: mean {np.mean(zeros):.3f}, min {np.min(zeros):.3f}, "
          f"max {np.max(zeros):.3f}; with every one rewritten, Conv MACs on non-zero inputs "
          f"{every['conv_macs_on_nonzero_inputs']:,} of {every['conv_macs']:,} "
          f"({every['conv_macs_on_nonzero_inputs'] / every['conv_macs']:.1%})")
    agreement = {}
    for select, (model, _) in variants.items():
        agreement[select] = compare_models(original.SerializeToString(), model, evaluation)[0]
        a = agreement[select]
        print(f"--select {select}: on {a.samples} held-out digits max abs err {a.max_abs_error:.2e}, "
              f"top-1 agreement {a.top1_agreement:.4f}")

    feed = {name: x[:1]}
    latency = []
    models = [original.SerializeToString(), variants["all"][0], variants["measured"][0]]
    for threads in args.threads:
        base, every_layer, chosen = bench_models(models, feed, threads, runs=args.runs, warmup=10)
        latency.append({"threads": threads, "original_ms": base.median_ms, "all_ms": every_layer.median_ms,
                        "measured_ms": chosen.median_ms, "speedup_all": every_layer.ratio_to_first,
                        "speedup_measured": chosen.ratio_to_first,
                        "p10_p90": [[t.p10_ms, t.p90_ms] for t in (base, every_layer, chosen)]})
    print(format_table(["threads", "original ms", "all ms", "speedup", "measured ms", "speedup"],
                       [[r["threads"], r["original_ms"], r["all_ms"], r["speedup_all"], r["measured_ms"],
                         r["speedup_measured"]] for r in latency]))
    return {"model": str(model_path), "layers": layers, "totals": report.totals,
            "agreement": {k: vars(v) for k, v in agreement.items()}, "latency": latency}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=DEFAULT_MODELS)
    parser.add_argument("--calib", type=int, default=64, help="training digits for zero fractions and layer timing")
    parser.add_argument("--eval", type=int, default=512, help="digits for the agreement check")
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    x, _ = dataset_arrays("mnist-test", args.eval, seed=0)  # seeded class-balanced sample (the set is sorted)
    calib_x, _ = dataset_arrays("mnist-train", args.calib, seed=0)
    print(f"machine: {platform.processor() or platform.machine()}; held-out digits: {len(x)}")
    results = [run(REPO / m if not Path(m).is_absolute() else Path(m), calib_x, x, args)
               for m in args.models if (REPO / m).exists() or Path(m).exists()]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
