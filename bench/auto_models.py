"""`--method auto` with its default budget on every bundled benchmark model, checked from outside.

For each model: 1,280 calibration inputs (a seeded class-balanced sample of the model's
training data, or seeded photo crops for MobileNetV2), auto as `optimize` runs it by
default (256 fitted to; top-1 agreement >= 0.99 shown at 95% on the other 1,024), then the
written model against the original on data the plan never saw: top-1 on a seeded
class-balanced sample of the test set (another seed for photo crops: top-1 agreement;
plus the 20 labelled ImageNet images for MobileNetV2), and whole-model latency at 1 and 2
threads (batch 1, medians of interleaved runs) beside ORT's own static INT8 of the model
with its defaults (quant_pre_process, quantize_static on every op type it quantizes, QDQ,
per-channel, ranges from the same fitting inputs; held-out top-1 too), the three
timed in one interleaved run. Prints a table; writes the models and reports under --out.

    python bench/auto_models.py                               # every model below
    python bench/auto_models.py --models digits_cnn,resnet20_fashion
    python bench/auto_models.py --models mobilenet_v2 --min-agreement 0.95   # another budget
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from onnxcompress.evaluation import bench_models  # noqa: E402
from onnxcompress.inputs import AUTO_CALIB_LIMIT, calibration_sample, dataset_arrays  # noqa: E402
from onnxcompress.model_io import load_model, prepare_for_runtime, save_model  # noqa: E402
from onnxcompress.optimizer import optimize  # noqa: E402
from onnxcompress.table import format_table  # noqa: E402
from _modelbench import logits, machine_summary, ort_int8_defaults  # noqa: E402

# model -> (calibration source, held-out labelled dataset or None)
MODELS = {
    "digits_cnn": ("mnist-train", "mnist-test"),
    "resnet18_mnist": ("mnist-train", "mnist-test"),
    "resnet18_mnist_twin": ("mnist-train", "mnist-test"),
    "nin_mnist": ("mnist-train", "mnist-test"),
    "resnet20_fashion": ("fashion-train", "fashion-test"),
    "resnet20_fashion_twin": ("fashion-train", "fashion-test"),
    "resnet18_fashion": ("fashion-train", "fashion-test"),
    "mobilenet_v2": ("photos", "imagenet-val20"),
}


def held_out(name: str, model, dataset: str, limit: int):
    """(inputs, labels or None) the plan never saw."""
    if name == "mobilenet_v2":
        from onnxcompress.images import photo_crops

        return photo_crops(min(limit, 512), seed=12345), None  # other crops than calibration's seed 0
    x, y = dataset_arrays(dataset, limit, seed=1, model=model)
    return x, y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--calib", type=int, default=AUTO_CALIB_LIMIT)
    ap.add_argument("--test", type=int, default=2000, help="held-out test inputs per model")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--min-agreement", type=float, default=None,
                    help="the planner's budget as top-1 agreement (default: its own, 0.99)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    print(machine_summary(), flush=True)
    work = Path(args.out or tempfile.mkdtemp(prefix="auto_models_"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        calib, test = MODELS[name]
        path = REPO / "models" / f"{name}.onnx"
        model = load_model(path)
        feeds, what = calibration_sample(model, calib, args.calib, seed=0)
        start = time.perf_counter()
        out, report = optimize(model, "auto", calib_feeds=feeds, timing_cache=str(work / "timings.json"),
                               min_agreement=args.min_agreement,
                               progress=lambda line: print(f"  {name}: {line}", file=sys.stderr, flush=True))
        seconds = time.perf_counter() - start
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out_path = work / f"{name}.auto.onnx"
        save_model(out, str(out_path))
        (work / f"{name}.auto.json").write_text(json.dumps(report.as_dict(), indent=2))
        plan = report.plan
        x, y = held_out(name, model, test, args.test)
        ref = logits(prepare_for_runtime(model), x)
        got = logits(prepare_for_runtime(out), x)
        agree = float(np.mean(np.argmax(ref, 1) == np.argmax(got, 1)))
        quality = f"agreement {agree:.4f}"
        if y is not None:
            quality += (f"; top-1 {100 * np.mean(np.argmax(ref, 1) == y):.2f} -> "
                        f"{100 * np.mean(np.argmax(got, 1) == y):.2f}")
        if name == "mobilenet_v2":
            xi, yi = dataset_arrays("imagenet-val20", None, seed=0, model=model)
            quality += (f"; imagenet-val20 top-1 {int(np.sum(np.argmax(logits(prepare_for_runtime(model), xi), 1) == yi))}"
                        f" -> {int(np.sum(np.argmax(logits(prepare_for_runtime(out), xi), 1) == yi))} of {len(yi)}")
        # ORT INT8 of the whole model with ORT's defaults, calibrated on the inputs the plan fitted to
        from onnxcompress.plan.budget import split_feeds

        fit_feeds = split_feeds(feeds, seed=0)[0]
        from onnxcompress.int8 import u8s8_saturates

        # with 7-bit weights too where this CPU's u8 x s8 kernels saturate (ORT's guide's remedy)
        variants = [("", False)] + ([(" reduce_range", True)] if u8s8_saturates() else [])
        q_paths, q_quality = [], []
        for label, rr in variants:
            q_path = work / f"{name}.int8{label.replace(' ', '_')}.onnx"
            save_model(ort_int8_defaults(model, fit_feeds[:32], reduce_range=rr), str(q_path))
            got_q = logits(prepare_for_runtime(load_model(q_path)), x)
            q_quality.append(f"INT8{label} " + (f"{100 * np.mean(np.argmax(got_q, 1) == y):.2f}" if y is not None
                             else f"agreement {np.mean(np.argmax(ref, 1) == np.argmax(got_q, 1)):.4f}"))
            q_paths.append(q_path)
        x1 = {model.graph.input[0].name: np.ascontiguousarray(x[:1])}
        sp, q_sp = {}, {}
        for t in (1, 2):
            lat = bench_models([str(path)] + [str(p) for p in q_paths] + [str(out_path)], x1, t, runs=args.runs,
                               warmup=5)
            sp[t] = lat[-1].ratio_to_first
            q_sp[t] = [r.ratio_to_first for r in lat[1:-1]]
        written = plan["plan"] if plan["plan"] == "original" else (
            f"{plan['plan']}: {plan['layers_replaced']}/{plan['conv_layers']} Conv "
            f"({plan['int8_macs'] / max(plan['macs_before'], 1):.0%} of MACs in INT8)")
        rows.append([name, what.split(":")[0], written, f"{sp[1]:.3f}", f"{sp[2]:.3f}",
                     "; ".join(f"{q_sp[1][i]:.3f} / {q_sp[2][i]:.3f}" for i in range(len(variants))),
                     "; ".join(f"{sp[1] / q_sp[1][i]:.3f} / {sp[2] / q_sp[2][i]:.3f}" for i in range(len(variants))),
                     f"{len(x)}: {quality}; {'; '.join(q_quality)}", f"{seconds:.0f}", f"{rss / 1024:.0f}"])
        print(" | ".join(rows[-1]), flush=True)
    print(format_table(["model", "calibration", "written", "speedup 1T", "speedup 2T", "ORT INT8 1T / 2T (defaults; reduce_range)",
                        "auto / INT8 1T / 2T (same order)", "held-out check", "planning s", "process peak RSS MB"], rows))
    print(f"(planner's budget: top-1 agreement >= {args.min_agreement or 0.99} shown at 95% on the calibration "
          f"inputs held out of the fit ({args.calib} taken, at most 256 fitted to); "
          f"speedups from this script's own interleaved timing against the file as given; models in {work})")


if __name__ == "__main__":
    main()
