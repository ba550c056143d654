"""PENNI on a whole model: top-1 (MNIST models) or agreement with fp32 (ImageNet
models, photo crops) against the reduction of Conv MACs, data-free and
calibrated, over a grid of (d bases, coefficient sparsity). Conv MACs count
every Conv of the model (layers left alone at full cost) and, for rewritten
layers, the basis stage (active maps x kh x kw) plus the non-zero coefficients,
per output position. Optionally times the original and the best calibrated
model (1 and 2 threads, interleaved) and prints the per-layer report of it.

    python bench/bench_penni_accuracy.py --model models/digits_cnn.onnx --bases 3 4 5 --sparsity 0.5 0.7 0.85
    python bench/bench_penni_accuracy.py --model models/mobilenet_v2.onnx --dataset photos --bases 4 5 \
        --sparsity 0.5 0.7 --time
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from onnxcompress.evaluation import bench_models, evaluate_accuracy  # noqa: E402
from onnxcompress.model_io import prepare_for_runtime  # noqa: E402
from onnxcompress.optimizer import optimize  # noqa: E402
from onnxcompress.table import format_table  # noqa: E402
from _modelbench import eval_data, logits  # noqa: E402


def mac_totals(report) -> tuple[int, int, int, int]:
    """(Conv MACs before, after, basis stage, coefficient stage) at batch 1."""
    before = after = basis = coef = 0
    for r in report.layers:
        macs = r.get("macs") or 0
        before += macs
        if r["status"] == "rewritten":
            pos = macs / r["macs_per_position_before"]
            basis += pos * r["macs_per_position_basis_stage"]
            coef += pos * r["macs_per_position_coef_stage"]
            after += pos * (r["macs_per_position_basis_stage"] + r["macs_per_position_coef_stage"])
        else:
            after += macs
    return int(before), int(after), int(basis), int(coef)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "models" / "digits_cnn.onnx")
    ap.add_argument("--dataset", choices=["mnist", "fashion", "photos"], default="mnist")
    ap.add_argument("--bases", type=int, nargs="+", default=[3, 4, 5])
    ap.add_argument("--sparsity", type=float, nargs="*", default=[0.5, 0.7, 0.85, 0.9])
    ap.add_argument("--mac-reduction", type=float, nargs="*", default=[],
                    help="also: settings allocated per layer for these model-wide Conv MAC reductions "
                         "(d up to max(--bases))")
    ap.add_argument("--modes", nargs="+", default=["data-free", "calibrated"], choices=["data-free", "calibrated"])
    ap.add_argument("--calib", type=int, default=256, help="calibration images")
    ap.add_argument("--calib-rows", type=int, default=50000)
    ap.add_argument("--basis-iterations", type=int, default=0)
    ap.add_argument("--eval-limit", type=int, default=None)
    ap.add_argument("--time", action="store_true", help="time original vs best calibrated (1 and 2 threads)")
    ap.add_argument("--json", dest="json_out", type=Path)
    ap.add_argument("-v", "--verbose", action="store_true", help="log the passes' progress")
    args = ap.parse_args()
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    start = time.perf_counter()

    original = onnx.load(str(args.model))
    name = original.graph.input[0].name
    calib, x_test, y_test = eval_data(args.dataset, args.calib, args.eval_limit)
    if args.dataset != "photos":
        base_quality = evaluate_accuracy(original, x_test, y_test).top1
    else:
        reference = logits(original, x_test)
        base_quality = 1.0
    feeds = [{name: calib[i:i + 16]} for i in range(0, len(calib), 16)]

    def quality(model):
        if args.dataset != "photos":
            return evaluate_accuracy(model, x_test, y_test).top1
        return float(np.mean(logits(model, x_test).argmax(1) == reference.argmax(1)))

    settings = [dict(bases=d, coef_sparsity=s) for d in args.bases for s in args.sparsity]
    settings += [dict(bases=max(args.bases), mac_reduction=r) for r in args.mac_reduction]
    rows, best = [], None
    for mode in args.modes:
        for setting in settings:
            t0 = time.perf_counter()
            kw = dict(setting, calib_rows=args.calib_rows)
            if mode == "calibrated":
                model, report = optimize(original, "penni", calib_feeds=feeds,
                                         basis_iterations=args.basis_iterations, **kw)
            else:
                model, report = optimize(original, "penni", **kw)
            q = quality(model)
            before, after, basis, coef = mac_totals(report)
            d = setting["bases"] if "mac_reduction" not in setting else f"<={setting['bases']}"
            s = setting.get("coef_sparsity", f"alloc {setting.get('mac_reduction')}")
            row = dict(mode=mode, bases=d, sparsity=s, quality=q, drop=base_quality - q,
                       mac_reduction=1 - after / before, macs_before=before, macs_after=after,
                       macs_basis=basis, macs_coef=coef,
                       bytes_before=report.totals["initializer_bytes_before"],
                       bytes_after=report.totals["initializer_bytes_after"], seconds=time.perf_counter() - t0)
            rows.append(row)
            print(f"{mode:>10} d={d} S={s}: quality {q:.4f} (drop {base_quality - q:+.4f}), "
                  f"Conv MACs -{row['mac_reduction']:.1%}, {row['seconds']:.0f} s", flush=True)
            if mode == "calibrated" and round(base_quality - q, 6) <= 0.005 and \
                    (best is None or row["mac_reduction"] > best[0]["mac_reduction"]):
                best = (row, model, report)

    what = "top-1" if args.dataset != "photos" else "top-1 agreement with fp32"
    print(f"\nmodel {args.model}; {len(x_test)} test inputs; {args.calib} calibration inputs; original {what} "
          f"{base_quality:.4f}")
    print(format_table(["mode", "d", "coef sparsity", what, "drop (points)", "Conv MACs -%", "basis-stage MACs",
                        "coef-stage MACs", "bytes after"],
                       [[r["mode"], r["bases"], r["sparsity"], round(r["quality"], 4), round(100 * r["drop"], 2),
                         round(100 * r["mac_reduction"], 1), r["macs_basis"], r["macs_coef"], r["bytes_after"]]
                        for r in rows]))
    out = {"model": str(args.model), "dataset": args.dataset, "original_quality": base_quality, "rows": rows}
    if best is not None:
        row, model, report = best
        print(f"\nbest calibrated within 0.5 points: d={row['bases']} S={row['sparsity']}: {what} "
              f"{row['quality']:.4f}, Conv MACs -{row['mac_reduction']:.1%}")
        table = []
        for r in report.layers:
            if r["status"] != "rewritten":
                table.append([r["name"], r.get("kernel"), r.get("macs"), "-", "-", "-", "-", "-", "-",
                              "skipped: " + r["reason"]])
                continue
            pos = (r.get("macs") or 0) / r["macs_per_position_before"]
            table.append([r["name"], r.get("kernel"), r.get("macs"), int(pos * r["macs_per_position_basis_stage"]),
                          int(pos * r["macs_per_position_coef_stage"]), f"{r['params_before']}->"
                          f"{r['params_after_nonzero']}", f"{r['bytes_before']}->{r['bytes_after']}",
                          round(r["retained_energy"], 4), round(r["coef_sparsity"], 3),
                          round(r.get("output_cosine", float("nan")), 4)])
        print(format_table(["layer", "kernel", "MACs", "basis MACs", "coef MACs", "params (nnz)", "bytes",
                            "energy", "sparsity", "cosine"], table))
        out["best"] = {"row": row, "layers": report.layers}
        if args.time:
            feed = {name: x_test[:1]}
            for t in (1, 2):
                lat = bench_models([prepare_for_runtime(original).SerializeToString(),
                                    prepare_for_runtime(model).SerializeToString()], feed, t, runs=100, warmup=10)
                print(f"latency {t} thread(s): original {lat[0].median_ms:.3f} ms, penni {lat[1].median_ms:.3f} ms, "
                      f"speedup {lat[1].ratio_to_first:.2f}x")
                out[f"latency_{t}t"] = [lat[0].median_ms, lat[1].median_ms]
    print(f"took {time.perf_counter() - start:.0f} s")
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
