"""CluSpa on whole models: top-1 (or agreement with fp32) against weight sparsity,
data-free and calibrated, with the bytes of the rewritten layers and the
end-to-end latency ratio against the original model in ONNX Runtime.

For each sparsity: `optimize(model, "cluspa", sparsity=s, clusters=K)` twice,
data-free (magnitude pruning, weight-space values) and calibrated (sparsity
allocated across layers, sequential second-order pruning and refits on the
calibration inputs). Accuracy on held-out MNIST digits (labels), or for
ImageNet models top-1/top-5 agreement and logit cosine with the fp32 model on
photo crops (seeds disjoint from calibration). Latency: original and the
calibrated model, runs interleaved, medians, batch 1, 1 and 2 threads.

    python bench/bench_cluspa_models.py --model models/digits_cnn.onnx --sparsity 0.5 0.7 0.8 0.9
    python bench/bench_cluspa_models.py --model models/mobilenet_v2.onnx --dataset photos --sparsity 0.5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from onnxcompress.evaluation import bench_models, evaluate_accuracy  # noqa: E402
from onnxcompress.model_io import load_model, prepare_for_runtime  # noqa: E402
from onnxcompress.optimizer import optimize  # noqa: E402
from onnxcompress.table import format_table  # noqa: E402
from _modelbench import eval_data, fidelity, logits  # noqa: E402


def summary(report) -> dict:
    rows = [r for r in report.layers if r["status"] == "rewritten"]
    weights = sum(r["macs_per_pixel_before"] for r in rows)
    nnz = sum(r["nonzero_weights"] for r in rows)
    return {"layers": len(rows), "sparsity": 1 - nnz / max(weights, 1),
            "bytes_before": sum(r["bytes_before"] for r in rows), "bytes_after": sum(r["bytes_after"] for r in rows),
            "macs_before": sum(r.get("macs_before") or 0 for r in rows),
            "adds_after": sum(r.get("adds_after") or 0 for r in rows),
            "mults_after": sum(r.get("mults_after") or 0 for r in rows),
            "min_layer_cosine": min((r.get("output_cosine", 1.0) for r in rows), default=None),
            "per_layer": [{k: r.get(k) for k in ("name", "target_sparsity", "sparsity", "output_cosine",
                                                 "bytes_before", "bytes_after")} for r in rows]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "models" / "digits_cnn.onnx")
    ap.add_argument("--dataset", choices=["mnist", "fashion", "photos"], default="mnist")
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.7, 0.8, 0.85, 0.9])
    ap.add_argument("--clusters", type=int, default=16)
    ap.add_argument("--calib", type=int, default=256, help="calibration inputs")
    ap.add_argument("--calib-rows", type=int, default=50000)
    ap.add_argument("--eval-limit", type=int, default=None)
    ap.add_argument("--modes", nargs="+", default=["data-free", "calibrated"])
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--json", dest="json_out", type=Path)
    args = ap.parse_args()
    start = time.perf_counter()
    original = load_model(args.model)
    name = original.graph.input[0].name
    calib, x_test, y_test = eval_data(args.dataset, args.calib, args.eval_limit)
    feeds = [{name: calib[i:i + 32]} for i in range(0, len(calib), 32)]
    base = prepare_for_runtime(original).SerializeToString()
    reference = logits(base, x_test) if args.dataset == "photos" else None
    load = subprocess.run(["top", "-bn1"], capture_output=True, text=True).stdout.splitlines()[:12]

    def quality(model: bytes) -> dict:
        if args.dataset != "photos":
            return {"top1": evaluate_accuracy(model, x_test, y_test).top1}
        return fidelity(reference, logits(model, x_test))

    rows = [{"mode": "original", "sparsity_target": 0.0, **quality(base), "sparsity": 0.0}]
    bench_feed = {name: x_test[:1]}
    for s in args.sparsity:
        for mode in args.modes:
            t0 = time.perf_counter()
            out, report = optimize(original, "cluspa", calib_feeds=feeds, sparsity=s, clusters=args.clusters,
                                   data_free=mode == "data-free", calib_rows=args.calib_rows)
            model = prepare_for_runtime(out).SerializeToString()
            row = {"mode": mode, "sparsity_target": s, **quality(model), **summary(report),
                   "fit_seconds": time.perf_counter() - t0}
            if mode == "calibrated":
                for t in args.threads:
                    lat = bench_models([base, model], bench_feed, t, runs=args.runs, warmup=5)
                    row[f"ms_orig_{t}t"], row[f"ms_{t}t"] = lat[0].median_ms, lat[1].median_ms
                    row[f"speedup_{t}t"] = lat[1].ratio_to_first
            rows.append(row)
            print(f"{mode:>10} s={s:.2f}: achieved {row['sparsity']:.3f} quality {row['top1']:.4f} "
                  f"({row['fit_seconds']:.0f}s)", flush=True)

    q = ["top-1"] if args.dataset != "photos" else ["top-1 agree", "top-5 agree", "cosine"]
    headers = ["mode", "target", "sparsity"] + q + ["bytes x smaller", "min layer cos"] + \
        [f"speedup {t}T" for t in args.threads]
    table = []
    for r in rows:
        line = [r["mode"], r["sparsity_target"], round(r["sparsity"], 4), r["top1"]]
        if args.dataset == "photos":
            line += [r.get("top5"), r.get("cosine")]
        line += [round(r["bytes_before"] / r["bytes_after"], 2) if r.get("bytes_after") else "",
                 round(r["min_layer_cosine"], 4) if r.get("min_layer_cosine") is not None else ""]
        line += [round(r[f"speedup_{t}t"], 3) if f"speedup_{t}t" in r else "" for t in args.threads]
        table.append(line)
    print(f"\nmodel {args.model}, K={args.clusters}, {args.calib} calibration inputs, {len(x_test)} evaluation inputs")
    print(format_table(headers, table))
    print(f"took {time.perf_counter() - start:.0f} s; load before:\n# " + "\n# ".join(load))
    if args.json_out:
        args.json_out.write_text(json.dumps({"model": str(args.model), "clusters": args.clusters, "rows": rows,
                                             "load": load, "isa": os.environ.get("ONNXCOMPRESS_ISA", "auto")},
                                            indent=1))


if __name__ == "__main__":
    main()
