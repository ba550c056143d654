"""INT8 as a part, not a rival: ORT fp32, ORT INT8, PENNI, and PENNI with INT8 on the Convs it
left alone, in one run.

Variants, all calibrated on the same seeded sample of the training digits:
- ORT fp32 (ORT_ENABLE_ALL);
- ORT INT8, every Conv (onnxcompress.int8.quantize_convs: ORT's quantizer, QDQ, s8 per-channel
  weights, u8 activations, MinMax ranges, the Relu after each Conv folded into its output range);
- the same with the stem (the Conv reading the model input) left fp32;
- ORT INT8 as bench/peer_table.py makes it (quant_pre_process, then quantize_static on every op
  type ORT quantizes: Conv, Add, Gemm, ...): what a user of ORT gets with its defaults;
- quantize_convs(other_ops=True): the same op types through our path (what the planner's INT8
  stage widens to), with every Conv and with the stem left fp32;
- PENNI d=3, 90% coefficient sparsity, one basis iteration (BasisConv);
- PENNI + INT8: the same PENNI model, then the Convs PENNI left to ORT (the stem and any other)
  quantized with quantize_convs;
- PENNI's portable form with dense coefficients (--portable-bases, default d=2 and d=3):
  standard Convs only (d depthwise Convs + Concat + a 1x1 Conv per layer), in fp32 and with
  every Conv of it quantized by quantize_convs: the composition with INT8 the planner makes.

Models whose file name says "fashion" are calibrated on Fashion-MNIST training images and
evaluated on its test images; the others on the MNIST digits.

Accuracy: top-1 on a seeded sample of the held-out digits, balanced over the labels (the
held-out set is stored by label, so its first N are not a sample). Latency: batch 1, all
variants interleaved (A B C A B C ...), medians, 1 and 2 threads; the load average is printed
before each timing run (the machine may be shared).

    python bench/bench_int8_mix.py [--models models/resnet18_mnist.onnx models/digits_cnn.onnx]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from onnxcompress import DOMAIN  # noqa: E402
from onnxcompress.analysis import analyse_convs  # noqa: E402
from onnxcompress.errors import OnnxCompressError  # noqa: E402
from onnxcompress.evaluation import evaluate_accuracy, open_session  # noqa: E402
from onnxcompress.inputs import calibration_feeds, dataset_arrays  # noqa: E402
from onnxcompress.int8 import conv_names, int8_convs, quantize_convs  # noqa: E402
from onnxcompress.model_io import load_model, prepare_for_runtime  # noqa: E402
from onnxcompress.optimizer import optimize  # noqa: E402
from onnxcompress.table import format_table  # noqa: E402
from bench_layout_tax import load_note, machine_summary  # noqa: E402
from _modelbench import ort_int8_defaults  # noqa: E402

DEFAULT_MODELS = ["models/resnet18_mnist.onnx", "models/digits_cnn.onnx"]


def interleaved(models: list[bytes], feed: dict, threads: int, runs: int, warmup: int = 10):
    """Median wall time and median CPU time of this thread (ms) per model, runs interleaved
    (as onnxcompress.evaluation.bench_models). At 1 thread ORT runs the model on the calling
    thread, so its CPU time is the latency with the preemption by other jobs left out."""
    sessions = [open_session(m, threads, spinning=threads == 1) for m in models]
    for _ in range(warmup):
        for sess in sessions:
            sess.run(None, feed)
    wall, cpu = [[] for _ in sessions], [[] for _ in sessions]
    for _ in range(runs):
        for i, sess in enumerate(sessions):
            start, start_cpu = time.perf_counter(), time.thread_time()
            sess.run(None, feed)
            wall[i].append(time.perf_counter() - start)
            cpu[i].append(time.thread_time() - start_cpu)
    return [1e3 * float(np.median(w)) for w in wall], [1e3 * float(np.median(c)) for c in cpu]


def composition(model: onnx.ModelProto) -> str:
    ours = sum(n.domain == DOMAIN for n in model.graph.node)
    int8 = len(int8_convs(model))
    fp32 = len(conv_names(model)) - int8
    return f"{int8} int8 / {ours} ours / {fp32} fp32"


def penni_without(original: onnx.ModelProto, feeds: list[dict], keep: set[str], args) -> onnx.ModelProto:
    """The same PENNI pipeline as optimize(model, 'penni', ...) (canonicalise, PenniRewrite,
    RemoveDeadChannels, FuseActivation, EliminateDeadCode), with the Convs named in `keep` left
    out of the plan: they stay ORT Convs through the fit, so the layers after them are fitted to
    their exact outputs (putting an exact stem back after PENNI's sequential refit does not work:
    the next layers were fitted to the rank-d features of the basis stem)."""
    from onnxcompress.methods import resolve_options
    from onnxcompress.passes import EliminateDeadCode, FuseActivation, PassContext, PassManager, canonicalize
    from onnxcompress.passes.penni import PenniRewrite
    from onnxcompress.passes.remove_dead_channels import RemoveDeadChannels

    class PenniExcept(PenniRewrite):
        def _check(self, layer, graph):
            if layer.name in keep:
                return "left to INT8 by the plan"
            return super()._check(layer, graph)

    _, opts = resolve_options("penni", {"bases": args.bases, "coef_sparsity": args.sparsity,
                                        "basis_iterations": args.basis_iterations})
    rewrite = PenniExcept(bases=opts["bases"], energy=opts["energy"], coef_sparsity=opts["coef_sparsity"],
                          mac_reduction=opts["mac_reduction"], criterion=opts["criterion"],
                          basis_iterations=opts["basis_iterations"], calib_rows=opts["calib_rows"], seed=opts["seed"])
    manager = PassManager(canonicalize() + [rewrite, RemoveDeadChannels(), FuseActivation(), EliminateDeadCode()])
    model, _ = manager.run(original, PassContext(options={**opts, "calib_feeds": feeds}))
    return model


def stem_name(model: onnx.ModelProto) -> str | None:
    inp = model.graph.input[0].name
    return next((n.name for n in model.graph.node if n.op_type == "Conv" and n.input[0] == inp), None)


def build_variants(path: Path, feeds: list[dict], args) -> list[dict]:
    original = load_model(path)
    rows = []

    def add(name, model, seconds, note=""):
        rows.append({"variant": name, "model": prepare_for_runtime(model).SerializeToString(),
                     "convs": composition(model), "build_s": seconds, "note": note})

    add("ORT fp32", original, 0.0)
    start = time.perf_counter()
    add("ORT INT8 all Convs", quantize_convs(original, feeds), time.perf_counter() - start)
    stem = stem_name(original)
    if stem:  # ORT's u8 Conv on the 1-3 channel stem is what the planner's INT8 stage may leave fp32
        start = time.perf_counter()
        add("ORT INT8 all Convs but the stem", quantize_convs(original, feeds, exclude=[stem]),
            time.perf_counter() - start, f"{stem} fp32")
    start = time.perf_counter()
    add("ORT INT8 all ops (peer_table)", ort_int8_defaults(original, feeds), time.perf_counter() - start,
        "Add / Gemm / pools quantized too")
    start = time.perf_counter()
    add("INT8 all ops (other_ops)", quantize_convs(original, feeds, other_ops=True), time.perf_counter() - start,
        "quantize_convs(other_ops=True): what the planner's INT8 stage widens to")
    if stem:
        start = time.perf_counter()
        add("INT8 all ops but the stem (other_ops)", quantize_convs(original, feeds, exclude=[stem], other_ops=True),
            time.perf_counter() - start, f"{stem} and its Relu fp32")
    if args.no_penni:
        return rows
    start = time.perf_counter()
    penni, report = optimize(original, "penni", calib_feeds=feeds, bases=args.bases, coef_sparsity=args.sparsity,
                             basis_iterations=args.basis_iterations)
    t_penni = time.perf_counter() - start
    macs = sum(c.macs or 0 for c in analyse_convs(original))
    after = sum((r.get("macs") or 0) * (r.get("macs_ratio", 1.0) if r["status"] == "rewritten" else 1.0)
                for r in report.layers)
    note = f"Conv MACs {macs:,} -> {int(after):,}"
    add(f"penni d={args.bases} s={args.sparsity}", penni, t_penni, note)
    left = conv_names(penni)
    start = time.perf_counter()
    add(f"penni d={args.bases} s={args.sparsity} + INT8 rest", quantize_convs(penni, feeds, left),
        t_penni + time.perf_counter() - start, f"INT8: {', '.join(left) or 'none'}")
    for d in args.portable_bases:
        start = time.perf_counter()
        portable, _ = optimize(original, "penni", calib_feeds=feeds, bases=d, coef_sparsity=0.0, portable=True)
        t_portable = time.perf_counter() - start
        add(f"penni portable d={d} dense", portable, t_portable, "standard Convs")
        start = time.perf_counter()
        add(f"penni portable d={d} dense + INT8 all", quantize_convs(portable, feeds),
            t_portable + time.perf_counter() - start, "every Conv of the portable form in INT8")
    if stem and stem not in left and not args.no_stem_variant:
        start = time.perf_counter()
        plan = penni_without(original, feeds, {stem}, args)
        left = conv_names(plan)
        add(f"penni d={args.bases} s={args.sparsity} but stem + INT8 rest", quantize_convs(plan, feeds, left),
            time.perf_counter() - start, f"stem kept out of PENNI's plan; INT8: {', '.join(left)}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", type=Path, default=[REPO / m for m in DEFAULT_MODELS])
    parser.add_argument("--calib", type=int, default=256, help="seeded training digits for calibration")
    parser.add_argument("--eval", type=int, default=2000, help="held-out digits, balanced over the labels")
    parser.add_argument("--bases", type=int, default=3)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--basis-iterations", type=int, default=1)
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds; the median is reported")
    parser.add_argument("--portable-bases", type=int, nargs="*", default=[2, 3],
                        help="d of the portable dense PENNI variants (none: leave them out)")
    parser.add_argument("--no-stem-variant", action="store_true",
                        help="skip the variant that keeps the stem out of PENNI's plan (a second PENNI fit)")
    parser.add_argument("--no-penni", action="store_true", help="the fp32 and INT8 variants only")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    try:
        run(args)
    except OnnxCompressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def run(args) -> None:
    print(machine_summary())
    results = {"machine": machine_summary(), "models": {}}
    built, held_out = {}, {}
    for path in args.models:
        data = "fashion" if "fashion" in path.name else "mnist"
        x_eval, y_eval = dataset_arrays(f"{data}-test", args.eval, seed=0)  # seeded, class-balanced
        held_out[path] = (x_eval, y_eval)
        original = load_model(path)
        feeds = calibration_feeds(original, f"{data}-train", args.calib, batch=16)  # seeded, class-balanced
        rows = build_variants(path, feeds, args)
        for r in rows:
            r["top1"] = evaluate_accuracy(r["model"], x_eval, y_eval).top1
        built[path] = rows
    # timings last, after every model is built and evaluated
    for path, rows in built.items():
        x_eval, _ = held_out[path]
        name = load_model(path).graph.input[0].name
        feed = {name: x_eval[:1]}
        for t in args.threads:
            walls, cpus = [], []
            for _ in range(args.rounds):
                print(f"{path.name}, {t} thread(s): {load_note()}")
                w, c = interleaved([r["model"] for r in rows], feed, t, args.runs)
                walls.append(w)
                cpus.append(c)
            per, spread = np.median(np.array(walls), axis=0), np.ptp(np.array(walls), axis=0)
            for r, ms, sp, c in zip(rows, per, spread, np.median(np.array(cpus), axis=0)):
                r[f"ms_{t}t"], r[f"spread_{t}t"] = float(ms), float(sp)
                if t == 1:
                    r["cpu_ms_1t"] = float(c)
        base = rows[0]
        int8 = rows[1]
        table = []
        for r in rows:
            line = [r["variant"], r["convs"], 100 * r["top1"], 100 * (r["top1"] - base["top1"])]
            for t in args.threads:
                line += [r[f"ms_{t}t"], base[f"ms_{t}t"] / r[f"ms_{t}t"], int8[f"ms_{t}t"] / r[f"ms_{t}t"]]
                if t == 1:
                    line += [r["cpu_ms_1t"], base["cpu_ms_1t"] / r["cpu_ms_1t"], int8["cpu_ms_1t"] / r["cpu_ms_1t"]]
            table.append(line)
        headers = ["variant", "Convs int8/ours/fp32", "top-1 %", "pts vs fp32"]
        for t in args.threads:
            headers += [f"ms {t}t", f"x fp32 {t}t", f"x int8 {t}t"]
            if t == 1:
                headers += ["CPU ms 1t", "x fp32 CPU", "x int8 CPU"]
        print(f"\n== {path.name}: {len(x_eval)} held-out test images (balanced, seed 0), {args.calib} calibration "
              f"images; latency batch 1, median of {args.rounds} interleaved rounds of {args.runs} runs")
        print(format_table(headers, table))
        for r in rows:
            spreads = ", ".join(f"{t}t {r[f'spread_{t}t']:.3f} ms" for t in args.threads)
            print(f"  {r['variant']}: built in {r['build_s']:.0f} s; spread of round medians {spreads}"
                  + (f"; {r['note']}" if r["note"] else ""))
        results["models"][str(path)] = [{k: v for k, v in r.items() if k != "model"} for r in rows]
    print(f"\nafter timing: {load_note()}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
