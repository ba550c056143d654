"""TabConv on whole models: accuracy (MNIST) or agreement with fp32 (ImageNet
photo crops) against arithmetic work and latency, beside TabConv's published
MNIST rows, with ORT fp32 and ORT INT8 (QDQ per-channel) as peers.

Per setting (codebook size S, priority masking, optionally the classifier and
masking by residual block): the model is rewritten with
--method tabconv (tree encoder, 8-bit tables unless --bits 32), then

- accuracy on held-out digits (or top-1 / top-5 agreement and logit cosine
  with the fp32 model on photo crops),
- arithmetic work of the Conv layers and the final classifier (Gemm/MatMul)
  at batch 1, counted honestly: the original's MACs (2 operations each:
  multiply, add) against, for every
  rewritten layer, the encoder's comparisons, one addition per table lookup
  (C per output: C-1 between entries plus the bias), one multiply per output
  for the 8-bit scale, plus the MACs of the layers kept exact; lookups
  (memory reads) are listed apart, and bytes of tables against weights,
- median latency of the whole model, 1 and 2 threads, interleaved with the
  original and ORT INT8 (bench_models).

The paper's figures (TabConv, CF 2024): ResNet-18 / MNIST 99.4% and NIN /
MNIST 98.9% fewer arithmetic operations, keeping over 93% of the original
accuracy; its count does not charge the encoding in full.

    python bench/bench_tabconv_models.py --model models/digits_cnn.onnx
    python bench/bench_tabconv_models.py --model models/resnet18_mnist.onnx --settings 9:0 18:0 9:0.2 9:0:fc
    python bench/bench_tabconv_models.py --model models/mobilenet_v2.onnx --dataset photos --settings 9:c0.99
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's BLAS threads must not spin beside the timed runs
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from onnxcompress.analysis import analyse_convs  # noqa: E402
from onnxcompress.evaluation import bench_models, evaluate_accuracy  # noqa: E402
from onnxcompress.model_io import load_model, prepare_for_runtime  # noqa: E402
from onnxcompress.optimizer import optimize  # noqa: E402
from onnxcompress.table import format_table  # noqa: E402
from _modelbench import eval_data, fidelity, logits  # noqa: E402

PAPER = {"resnet18_mnist": "99.4% fewer ops, >93% of accuracy kept", "nin_mnist": "98.9% fewer ops, >93% kept"}


def parse_setting(text: str) -> dict:
    """'S:P' (subspace S, keep-exact fraction P) or 'S:cX' (min cosine X), then optional ':fc'
    (the classifier too), ':block' (mask by residual block), ':rX' (fixed ridge X)."""
    s, _, rest = text.partition(":")
    mask, *flags = rest.split(":") if rest else [""]
    out = {"subspace": int(s)}
    if mask.startswith("c"):
        out["min_cosine"] = float(mask[1:])
    elif mask and float(mask) > 0:
        out["keep_exact"] = float(mask)
    for flag in flags:
        if flag == "fc":
            out["classifier"] = True
        elif flag == "block":
            out["mask_unit"] = "block"
        elif flag.startswith("r"):
            out["ridge"] = float(flag[1:])
        else:
            raise SystemExit(f"unknown setting flag {flag!r} in {text!r}")
    return out


def setting_label(opts: dict) -> str:
    return (f"tabconv S={opts['subspace']}" + (f" keep {opts['keep_exact']:.0%}" if "keep_exact" in opts else "")
            + (f" cos>={opts['min_cosine']}" if "min_cosine" in opts else "")
            + (" +fc" if opts.get("classifier") else "") + (" by block" if opts.get("mask_unit") == "block" else "")
            + (f" ridge {opts['ridge']:g}" if "ridge" in opts else ""))


def classifier_macs(model) -> int:
    """MACs of the final Gemm/MatMul at batch 1 (0 when the output does not come from one)."""
    from onnxcompress.analysis import inferred_shapes
    from onnxcompress.graph import to_graph
    from onnxcompress.passes.tabconv import classifier_constants, find_classifier

    node, _ = find_classifier(to_graph(model))
    if node is None:
        return 0
    got, _ = classifier_constants(node, inferred_shapes(model))
    return int(got[0].size) if got else 0


def work(report, macs_before: int, fc_macs: int, bits: int) -> dict:
    """Arithmetic operations at batch 1 (see the module doc); macs_before: the Conv layers'."""
    ops = lookups = 0
    table_bytes = weight_bytes = 0
    fc_counted = False
    for r in report.layers:
        macs = r.get("macs") or 0
        w = r.get("work")
        fc_counted |= bool(r.get("classifier"))
        if r["status"] == "rewritten" and w:
            outputs = w["dequant_mults"]  # one per output value
            ops += w["encoder_comparisons"] + 2 * w["encoder_macs"] + w["additions"] + (outputs if bits == 8 else 0)
            lookups += w["lookups"]
            table_bytes += r["table_bytes"] + r.get("encoder_bytes", 0)
            weight_bytes += r["weight_bytes"]
        else:
            ops += 2 * macs
    if not fc_counted:
        ops += 2 * fc_macs  # the classifier stayed exact
    before = 2 * (macs_before + fc_macs)
    return {"ops_after": ops, "ops_before": before, "lookups": lookups,
            "fewer_ops": 1 - ops / max(before, 1), "table_bytes": table_bytes,
            "replaced_weight_bytes": weight_bytes}


def int8_model(path: Path, calib: np.ndarray, name: str) -> bytes | None:
    try:
        from peer_table import int8_qdq

        return int8_qdq(path, calib, name)
    except Exception as exc:  # quantization tooling missing or failing: say so, keep going
        print(f"ORT INT8 unavailable: {exc}")
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "models" / "digits_cnn.onnx")
    ap.add_argument("--dataset", choices=["mnist", "fashion", "photos"], default="mnist")
    ap.add_argument("--settings", nargs="+", default=["9:0", "18:0", "9:0.2", "18:c0.99"])
    ap.add_argument("--bits", type=int, default=8, choices=[8, 32])
    ap.add_argument("--encoder", default="tree", choices=["tree", "exhaustive"])
    ap.add_argument("--calib", type=int, default=256, help="calibration inputs")
    ap.add_argument("--calib-rows", type=int, default=30000, help="rows per layer for the fit")
    ap.add_argument("--eval-limit", type=int, default=None)
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--json", dest="json_out", type=Path)
    args = ap.parse_args()
    start = time.perf_counter()
    original = load_model(args.model)
    name = original.graph.input[0].name
    calib, x_test, y_test = eval_data(args.dataset, args.calib, args.eval_limit)
    feeds = [{name: calib[i:i + 16]} for i in range(0, len(calib), 16)]
    macs = sum(c.macs or 0 for c in analyse_convs(original))
    fc_macs = classifier_macs(original)
    fp32 = prepare_for_runtime(original).SerializeToString()

    def quality(model) -> dict:
        if args.dataset != "photos":
            return {"top1": evaluate_accuracy(model, x_test, y_test).top1}
        return fidelity(ref_logits, logits(model, x_test))

    ref_logits = None
    if args.dataset == "photos":
        ref_logits = logits(fp32, x_test)
    rows = [{"variant": "ORT fp32", "model": fp32, **quality(fp32), "fewer_ops": 0.0,
             "ops_after": 2 * (macs + fc_macs), "rewritten": 0}]
    int8 = int8_model(args.model, calib, name)
    if int8 is not None:
        rows.append({"variant": "ORT int8 QDQ", "model": int8, **quality(int8), "fewer_ops": float("nan"),
                     "ops_after": 2 * (macs + fc_macs), "rewritten": 0, "note": "int8 MACs"})
    for text in args.settings:
        opts = parse_setting(text)
        t0 = time.perf_counter()
        out, report = optimize(original, "tabconv", calib_feeds=feeds, encoder=args.encoder, table_bits=args.bits,
                               calib_rows=args.calib_rows, **opts)
        fit_s = time.perf_counter() - t0
        model = prepare_for_runtime(out).SerializeToString()
        w = work(report, macs, fc_macs, args.bits)
        label = setting_label(opts)
        rows.append({"variant": label, "model": model, **quality(model), **w,
                     "rewritten": report.totals["rewritten"], "fit_seconds": fit_s, "notes": report.notes,
                     "layers": report.layers})
        print(f"{label}: {report.totals['rewritten']} layers rewritten, fit {fit_s:.0f} s; {report.notes}", flush=True)
    feed = {name: x_test[:1]}
    for t in args.threads:
        for r, lat in zip(rows, bench_models([r["model"] for r in rows], feed, t, runs=args.runs, warmup=10)):
            r[f"ms_{t}t"] = lat.median_ms
            r[f"speedup_{t}t"] = lat.ratio_to_first
    qcols = ["top1"] if args.dataset != "photos" else ["top1", "top5", "cosine"]
    base_q = rows[0]["top1"]
    headers = ["variant", "layers"] + (["top-1", "kept"] if args.dataset != "photos" else
                                       ["top-1 agree", "top-5 agree", "cosine"])
    headers += ["ops (M)", "fewer ops", "lookups (M)"]
    for t in args.threads:
        headers += [f"ms {t}T", f"x {t}T"]
    table = []
    for r in rows:
        line = [r["variant"], r["rewritten"]] + [r[q] for q in qcols]
        if args.dataset != "photos":
            line.append(f"{r['top1'] / base_q:.1%}")
        line += [f"{r['ops_after'] / 1e6:.2f}", f"{r['fewer_ops']:.1%}" if r["fewer_ops"] == r["fewer_ops"] else "-",
                 f"{r.get('lookups', 0) / 1e6:.2f}"]
        for t in args.threads:
            line += [r[f"ms_{t}t"], r[f"speedup_{t}t"]]
        table.append(line)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"model {args.model} ; {len(x_test)} test inputs ; {args.calib} calibration inputs ; encoder {args.encoder}, "
          f"{args.bits}-bit tables ; load: {load}")
    print(format_table(headers, table))
    stem = args.model.stem
    if stem in PAPER:
        print(f"paper (TabConv, CF 2024) for {stem}: {PAPER[stem]}")
    print(f"took {time.perf_counter() - start:.0f} s")
    if args.json_out:
        for r in rows:
            del r["model"]
        args.json_out.write_text(json.dumps({"model": str(args.model), "rows": rows, "load": load}, indent=1,
                                            default=float))


if __name__ == "__main__":
    main()
