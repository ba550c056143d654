"""The peer table: what onnxcompress gives against what a user would otherwise
pick, ONNX Runtime fp32 and ONNX Runtime INT8 static quantization (QDQ,
per-channel, calibrated on the same calibration set).

One run, latency of all variants interleaved, 1 and 2 threads, medians.
Columns: accuracy (top-1 on held-out digits) or, for ImageNet models, fidelity
to the fp32 model (top-1 and top-5 agreement and logit cosine over seeded
crops of the real photos bundled with scikit-learn and scikit-image: no
labelled ImageNet data installs offline), Conv MACs, model bytes, median
latency, speedup against fp32. Writes JSON, CSV and a PNG plot of accuracy
against speedup.

    python bench/peer_table.py --model models/digits_cnn.onnx
    python bench/peer_table.py --model models/resnet20_fashion.onnx --dataset fashion --eval-limit 5000
    python bench/peer_table.py --model models/mobilenet_v2.onnx --dataset photos

Calibration inputs are a seeded class-balanced sample of the training set, the
evaluation set a seeded class-balanced sample of the test set (or all of it).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from onnxcompress.analysis import analyse_convs  # noqa: E402
from onnxcompress.evaluation import bench_models, evaluate_accuracy  # noqa: E402
from onnxcompress.inputs import AUTO_CALIB_LIMIT  # noqa: E402
from onnxcompress.model_io import load_model, prepare_for_runtime  # noqa: E402
from onnxcompress.optimizer import optimize  # noqa: E402
from onnxcompress.table import format_table  # noqa: E402
from _modelbench import eval_data, fidelity, logits, machine_summary, ort_int8_defaults  # noqa: E402


def int8_qdq(model_path: Path, calib: np.ndarray, input_name: str) -> bytes:
    """ORT static INT8 quantization with its defaults (QDQ, per-channel weights), on `calib`."""
    feeds = [{input_name: calib[i:i + 1]} for i in range(len(calib))]
    return ort_int8_defaults(load_model(model_path), feeds).SerializeToString()


def variants(model_path: Path, calib: np.ndarray, workdir: Path, auto_calib: np.ndarray | None = None) -> list[dict]:
    original = load_model(model_path)
    name = original.graph.input[0].name
    macs = sum(c.macs or 0 for c in analyse_convs(original))
    rows = [{"variant": "ORT fp32", "model": prepare_for_runtime(original).SerializeToString(), "conv_macs": macs}]
    rows.append({"variant": "ORT int8 QDQ per-channel", "model": int8_qdq(model_path, calib, name),
                 "conv_macs": macs, "note": "int8 MACs"})
    falcon, report = optimize(original, "falcon", calib_feeds=[{name: calib[i:i + 1]} for i in range(min(64, len(calib)))])
    rows.append({"variant": "onnxcompress falcon", "model": prepare_for_runtime(falcon).SerializeToString(),
                 "conv_macs": macs, "note": f"{report.totals.get('conv_macs_on_nonzero_inputs', macs):,} "
                                            "MACs on non-zero inputs"})
    rows.extend(penni_variants(original, calib, name, macs))
    # CluSpa: K = 16 shared values (zero included), 80% of Conv weights pruned, calibrated
    # (sparsity allocated across layers, sequential second-order pruning and refits).
    cluspa, report = optimize(original, "cluspa", sparsity=0.8, clusters=16, calib_rows=30000,
                              calib_feeds=[{name: calib[i:i + 32]} for i in range(0, min(256, len(calib)), 32)])
    done = [r for r in report.layers if r["status"] == "rewritten"]
    nnz = sum(r["nonzero_weights"] for r in done)
    rows.append({"variant": "onnxcompress cluspa K=16 s=0.8", "model": prepare_for_runtime(cluspa).SerializeToString(),
                 "conv_macs": macs, "note": f"{1 - nnz / max(sum(r['macs_per_pixel_before'] for r in done), 1):.3f} "
                 f"of Conv weights pruned; {sum(r.get('adds_after') or 0 for r in done):,} multiply-adds on "
                 f"kept weights; Conv weight bytes {sum(r['bytes_before'] for r in done):,} -> "
                 f"{sum(r['bytes_after'] for r in done):,}"})
    # TabConv: tree encoder, 8-bit tables, S = 9 im2col columns per codebook, priority masking
    # until the output cosine to fp32 on the calibration set is 0.99, sequential fit.
    tab, report = optimize(original, "tabconv", subspace=9, min_cosine=0.99, calib_rows=30000,
                           calib_feeds=[{name: calib[i:i + 16]} for i in range(0, min(64, len(calib)), 16)])
    done = [r for r in report.layers if r["status"] == "rewritten"]
    kept_macs = sum(r.get("macs") or 0 for r in report.layers if r["status"] != "rewritten")
    tab_ops = sum(r["work"]["encoder_comparisons"] + r["work"]["additions"] + r["work"]["dequant_mults"]
                  for r in done if "work" in r)
    rows.append({"variant": "onnxcompress tabconv S=9 cos>=0.99", "model": prepare_for_runtime(tab).SerializeToString(),
                 "conv_macs": kept_macs, "note": f"{len(done)} Conv as LutConv: {tab_ops:,} comparisons + additions "
                 f"+ scale multiplies and {sum(r['work']['lookups'] for r in done if 'work' in r):,} table lookups "
                 f"replace {sum(r.get('macs') or 0 for r in done):,} MACs; tables "
                 f"{sum(r['table_bytes'] for r in done):,} B vs weights {sum(r['weight_bytes'] for r in done):,} B"})
    # auto, the default: the fastest mix (per-layer techniques, ORT INT8, fp32) within its default
    # budget (top-1 agreement >= 0.99 shown at 95% on the calibration inputs held out of the fit), on
    # its own, larger calibration set (at most 256 fitted to, the rest validate), as the CLI takes it
    start = time.perf_counter()
    auto_calib = calib if auto_calib is None else auto_calib
    auto, report = optimize(original, "auto",
                            calib_feeds=[{name: auto_calib[i:i + 8]} for i in range(0, len(auto_calib), 8)])
    plan = report.plan
    rows.append({"variant": "onnxcompress auto (default budget)", "model": prepare_for_runtime(auto).SerializeToString(),
                 "conv_macs": plan["macs_after"],
                 "note": f"plan {plan['plan']}: {plan['layers_replaced']}/{plan['conv_layers']} Conv; "
                         f"{plan['int8_macs']:,} MACs in INT8; planned in {time.perf_counter() - start:.0f} s"})
    return rows


def penni_variants(original, calib: np.ndarray, name: str, macs: int, bases: int = 3,
                   sparsity: float = 0.9, basis_iterations: int = 1) -> list[dict]:
    """PENNI at the README's recommended setting (d=3, 90% of coefficients pruned, one
    least-squares basis refit), calibrated (sequential refit on the calibration set):
    our BasisConv and the portable form."""
    feeds = [{name: calib[i:i + 16]} for i in range(0, len(calib), 16)]
    out = []
    for portable in (False, True):
        model, report = optimize(original, "penni", calib_feeds=feeds, bases=bases, coef_sparsity=sparsity,
                                 basis_iterations=basis_iterations, portable=portable)
        after = sum((r.get("macs") or 0) * (r.get("macs_ratio", 1.0) if r["status"] == "rewritten" else 1.0)
                    for r in report.layers)
        rewritten = sum(r["status"] == "rewritten" for r in report.layers)
        out.append({"variant": f"onnxcompress penni d={bases} S={sparsity}" + (" portable" if portable else ""),
                    "model": prepare_for_runtime(model).SerializeToString(), "conv_macs": int(after),
                    "note": f"{rewritten}/{len(report.layers)} Conv rewritten; "
                            + ("standard ONNX Conv pairs, dense coefficients" if portable else
                               "basis stage + non-zero coefficients")})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "models" / "digits_cnn.onnx")
    parser.add_argument("--dataset", choices=["mnist", "fashion", "photos"], default="mnist",
                        help="mnist / fashion: labelled test images; photos: agreement with fp32 on photo crops")
    parser.add_argument("--calib", type=int, default=256, help="calibration inputs (training digits / photo crops)")
    parser.add_argument("--auto-calib", type=int, default=AUTO_CALIB_LIMIT,
                        help="calibration inputs for the auto row (as the CLI's default for --method auto)")
    parser.add_argument("--eval-limit", type=int, help="evaluate on at most this many inputs (photos: default 512)")
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--out", type=Path, help="prefix for .json/.csv/.png (default: bench/results/<model>)")
    args = parser.parse_args()
    start = time.perf_counter()
    machine = machine_summary()
    out = args.out or REPO / "bench" / "results" / args.model.stem
    out.parent.mkdir(parents=True, exist_ok=True)

    calib, x_test, y_test = eval_data(args.dataset, args.calib, args.eval_limit, photos=512)
    with tempfile.TemporaryDirectory() as tmp:
        auto_calib = eval_data(args.dataset, args.auto_calib, 1, photos=1)[0]
        rows = variants(args.model, calib, Path(tmp), auto_calib)
    reference = logits(rows[0]["model"], x_test) if args.dataset == "photos" else None
    for r in rows:
        r["bytes"] = len(r["model"])
        if args.dataset != "photos":
            r["top1"] = evaluate_accuracy(r["model"], x_test, y_test).top1
        else:
            r.update(fidelity(reference, logits(r["model"], x_test)))
    feed = {load_model(args.model).graph.input[0].name: x_test[:1]}
    for t in args.threads:
        for r, lat in zip(rows, bench_models([r["model"] for r in rows], feed, t, runs=args.runs, warmup=10)):
            r[f"ms_{t}t"] = lat.median_ms
            r[f"speedup_{t}t"] = lat.ratio_to_first
    for r in rows:
        del r["model"]

    quality = ["top1"] if args.dataset != "photos" else ["top1", "top5", "cosine"]
    headers = (["variant", "top-1"] if args.dataset != "photos" else
               ["variant", "top-1 agree", "top-5 agree", "cosine"]) + ["Conv MACs", "bytes"]
    for t in args.threads:
        headers += [f"ms {t}T", f"speedup {t}T"]
    table = []
    for r in rows:
        line = [r["variant"]] + [r[q] for q in quality] + [r["conv_macs"], r["bytes"]]
        for t in args.threads:
            line += [r[f"ms_{t}t"], r[f"speedup_{t}t"]]
        table.append(line)
    elapsed = time.perf_counter() - start
    what = (f"{args.dataset} test images (top-1 accuracy)" if args.dataset != "photos"
            else "photo crops (agreement with fp32)")
    print(f"machine: {machine}")
    print(f"model {args.model} ; {len(x_test)} {what} ; {args.calib} calibration inputs")
    print(format_table(headers, table))
    for r in rows:
        if r.get("note"):
            print(f"  {r['variant']}: {r['note']}")
    print(f"benchmark took {elapsed:.0f} s")

    out.with_suffix(".json").write_text(json.dumps({"model": str(args.model), "machine": machine, "rows": rows, "seconds": elapsed}, indent=2))
    with open(out.with_suffix(".csv"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=sorted({k for r in rows for k in r}))
        writer.writeheader()
        writer.writerows(rows)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for t, marker in zip(args.threads, "os^"):
        for r in rows:
            ax.scatter(r[f"speedup_{t}t"], 100 * r["top1"], marker=marker)
            ax.annotate(f"{r['variant']} ({t}T)", (r[f"speedup_{t}t"], 100 * r["top1"]), fontsize=7)
    ax.set_xlabel("speedup against ORT fp32 (median latency, batch 1)")
    ax.set_ylabel("top-1 accuracy (%)" if args.dataset != "photos" else "top-1 agreement with fp32 (%)")
    ax.set_title(args.model.name)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"wrote {out}.json, .csv, .png")


if __name__ == "__main__":
    main()
