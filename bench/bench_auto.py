"""--method auto against the best single-method setting at the same budget.

For each model: a seeded class-balanced calibration sample of the training set (mnist, or
fashion with --dataset fashion), and one seeded class-balanced sample of its test set
split into a selection part (--eval: 5,000 Fashion-MNIST images or 2,000 of mnist-test by
default; auto plans on half of it and holds the other half out to confirm the written
model on, its --confirm-fraction; the best single setting is picked on all of it) and a
disjoint test part (reported, never used to choose); every other image of the test set
is reported too ("rest": 4,000 Fashion-MNIST images, 1,000 of mnist-test by default), the
precise check, since a drop on 1,000 images carries about +-0.5 points of noise. Every single-method setting
of the planner's ladder is run as `optimize --method M` would run it (sequential
fit on a fitting part like auto's: a seeded 256 of
the --calib inputs, the rest being what auto validates on), and so is ORT's static INT8 (QDQ, per-channel,
the same calibration inputs: what a user picks instead) twice: with ORT's defaults (quant_pre_process,
then quantize_static on every op type it quantizes: Conv, Add, Gemm, pools) and on every Conv only (what
the planner's INT8 stage starts from); auto runs as the command line does, in a
child process, so that its planning time and peak RSS are its own. Speedups are
whole-model medians, interleaved, batch 1, at 1 and 2 threads.

    python bench/bench_auto.py                       # digits_cnn and resnet18_mnist
    python bench/bench_auto.py models/digits_cnn.onnx --max-drop 0.5 --candidates falcon,penni
    python bench/bench_auto.py models/resnet18_fashion.onnx --dataset fashion --max-drop 1 --int8-only

--int8-only: of the single settings only the two ORT INT8 ones, timed with the original and
auto in one interleaved run (so "auto / INT8" is a ratio within one run).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from onnxcompress.evaluation import bench_models, evaluate_accuracy  # noqa: E402
from onnxcompress.inputs import AUTO_CALIB_LIMIT, dataset_arrays  # noqa: E402
from onnxcompress.model_io import load_model, prepare_for_runtime, save_model  # noqa: E402
from onnxcompress.optimizer import optimize  # noqa: E402
from onnxcompress.plan.candidates import KINDS, candidate_list  # noqa: E402
from onnxcompress.plan.stages import STAGES, split_kinds  # noqa: E402
from onnxcompress.sampling import sample_indices  # noqa: E402
from onnxcompress.table import format_table  # noqa: E402
from _modelbench import machine_summary, ort_int8_defaults  # noqa: E402


def top1(path, x, y) -> float:
    return evaluate_accuracy(str(path), x, y, batch=64, threads=2).top1


def speedups(original, candidate, x1, runs, block=1) -> dict:
    out = {}
    for t in (1, 2):
        lat = bench_models([str(original), str(candidate)], {"input": x1}, t, runs=runs, warmup=5, block=block)
        out[t] = lat[1].ratio_to_first
    return out


def run_auto(model_path, out_path, report_path, calib_npz, eval_npz, args) -> dict:
    cmd = [sys.executable, "-m", "onnxcompress.cli", "optimize", str(model_path), "-o", str(out_path),
           "--method", "auto", "--calib", str(calib_npz), "--calib-limit", str(args.calib),
           "--eval", str(eval_npz), "--eval-limit", str(args.eval), "--max-drop", str(args.max_drop),
           "--report", str(report_path), "--timing-cache", args.timing_cache]
    if args.candidates:
        cmd += ["--candidates", args.candidates]
    if args.grow:
        cmd += ["--grow"]
    if args.path_refit:
        cmd += ["--path-refit"]
    if args.confirm_fraction is not None:
        cmd += ["--confirm-fraction", str(args.confirm_fraction)]
    start = time.perf_counter()
    log = Path(report_path).with_suffix(".log")
    with open(log, "w") as fh:  # progress lines (stderr) and the report (stdout), as they come
        proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=fh, stderr=fh)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"auto failed on {model_path}:\n{log.read_text()[-3000:]}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child so far: this one
    return {"seconds": seconds, "peak_rss_mb": peak_kb / 1024, "report": json.loads(Path(report_path).read_text())}


def bench_model(path: Path, args, work: Path) -> list[list]:
    model = load_model(path)
    xc, yc = dataset_arrays(f"{args.dataset}-train", args.calib, seed=0, model=model)
    # the test set read once: a seeded class-balanced sample of it split into the selection and test
    # parts (as dataset_arrays(name, count, seed=0) samples), and every other image (the precise check)
    xa, ya = dataset_arrays(f"{args.dataset}-test", model=model)
    count = args.eval + args.test
    taken = sample_indices(len(xa), count, ya, 0) if count < len(xa) else np.arange(len(xa))
    xs, ys = xa[taken], ya[taken]
    xe, ye, xt, yt = xs[:args.eval], ys[:args.eval], xs[args.eval:], ys[args.eval:]
    rest = np.ones(len(xa), bool)
    rest[taken] = False
    xo, yo = xa[rest], ya[rest]
    calib_npz, eval_npz = work / "calib.npz", work / "eval.npz"
    np.savez(calib_npz, input=xc, y=yc)
    np.savez(eval_npz, input=xe, y=ye)
    x1 = xt[:1]
    base_e, base_t, base_o = top1(path, xe, ye), top1(path, xt, yt), top1(path, xo, yo)
    rows = [[path.name, "original", f"{100 * base_e:.2f}", f"{100 * base_t:.2f}", f"{100 * base_o:.2f}", "1", "1",
             "", "", ""]]
    print(f"{path.name}: original top-1 {100 * base_e:.2f} (selection, {len(xe)}) / {100 * base_t:.2f} "
          f"(test, {len(xt)}) / {100 * base_o:.2f} (every other test image, {len(xo)})", flush=True)

    auto_out, auto_rep = work / f"{path.stem}.auto.onnx", work / f"{path.stem}.auto.json"
    auto = run_auto(path, auto_out, auto_rep, calib_npz, eval_npz, args)
    plan = auto["report"]["plan"]
    sp = speedups(path, auto_out, x1, args.runs, args.block) if not args.int8_only else None
    a_e, a_t, a_o = top1(auto_out, xe, ye), top1(auto_out, xt, yt), top1(auto_out, xo, yo)
    print(f"  auto: planned in {auto['seconds']:.0f} s, peak RSS {auto['peak_rss_mb']:.0f} MB"
          + (f"; speedup {sp[1]:.3f}x / {sp[2]:.3f}x" if sp else ""), flush=True)
    held, ach = plan.get("confirmed"), plan["achieved"]
    print(f"  auto's drop: {ach['eval_drop']:.2f} on the {ach['eval_samples']} selection images it planned on"
          + (f", {held['drop']:.2f} (<= {held['drop_upper']:.2f} at 95%, {held['looks']} look(s)) on the "
             f"{held['samples']} it held out of planning" if held else ""), flush=True)

    from onnxcompress.plan.budget import split_feeds

    calib_feeds = split_feeds([{"input": xc[i:i + 8]} for i in range(0, len(xc), 8)], seed=0)[0]  # 256, as auto fits to
    best = None
    per_layer, stages = split_kinds(args.candidates)
    settings = [] if args.int8_only else [
        (c.label, lambda c=c: optimize(model, c.kind, calib_feeds=calib_feeds, **c.opts)[0])
        for c in candidate_list(per_layer)]
    # what a user picks instead: ORT's static INT8 with its defaults (every op type it quantizes), and on
    # every Conv only (what the planner's INT8 stage starts from); same calibration inputs
    if "int8" in stages or args.int8_only:
        from onnxcompress.int8 import quantize_convs, u8s8_saturates
        from onnxcompress.plan.planner import _canonical

        settings.append(("ORT int8 (defaults, every op)", lambda: ort_int8_defaults(model, calib_feeds)))
        if u8s8_saturates():  # what ORT's quantization guide has a user of this CPU do
            settings.append(("ORT int8 (reduce_range, every op)",
                             lambda: ort_int8_defaults(model, calib_feeds, reduce_range=True)))
        settings.append(("ORT int8 (all Convs)", lambda: quantize_convs(_canonical(model), calib_feeds)))
    made = []
    for label, make in settings:
        start = time.perf_counter()
        out = make()
        seconds = time.perf_counter() - start
        p = work / f"{path.stem}.{label.replace(' ', '_').replace('/', '-').replace(',', '')}.onnx"
        save_model(prepare_for_runtime(out), str(p))
        made.append((label, p, seconds))
    if args.int8_only:  # the original, the INT8 settings and auto in one interleaved run
        sp, per = {}, {}
        for t in (1, 2):
            lat = bench_models([str(path)] + [str(p) for _, p, _ in made] + [str(auto_out)], {"input": x1}, t,
                               runs=args.runs, warmup=5, block=args.block)
            sp[t] = lat[-1].ratio_to_first
            per[t] = [r.ratio_to_first for r in lat[1:-1]]
            print(f"  medians at {t} thread(s), ms: original {lat[0].median_ms:.4f}, "
                  + ", ".join(f"{label} {r.median_ms:.4f}" for (label, _, _), r in zip(made, lat[1:-1]))
                  + f", auto {lat[-1].median_ms:.4f}", flush=True)
        for i, (label, _, _) in enumerate(made):
            print(f"  auto / {label} in the same run: {sp[1] / per[1][i]:.3f}x (1 thread) / "
                  f"{sp[2] / per[2][i]:.3f}x (2 threads)", flush=True)
    for i, (label, p, seconds) in enumerate(made):
        s_e, s_t, s_o = top1(p, xe, ye), top1(p, xt, yt), top1(p, xo, yo)
        meets = base_e - s_e <= args.max_drop / 100 + 1e-9
        sp_c = {1: per[1][i], 2: per[2][i]} if args.int8_only else speedups(path, p, x1, args.runs, args.block)
        rows.append([path.name, label, f"{100 * s_e:.2f}", f"{100 * s_t:.2f}", f"{100 * s_o:.2f}", f"{sp_c[1]:.3f}",
                     f"{sp_c[2]:.3f}", "yes" if meets else "no", f"{seconds:.0f}", ""])
        print(f"  {label}: {100 * s_e:.2f} / {100 * s_t:.2f}, {sp_c[1]:.3f}x / {sp_c[2]:.3f}x", flush=True)
        if meets and (best is None or sp_c[1] > best[1]):
            best = (label, sp_c[1])
    rows.append([path.name, f"auto ({plan['layers_replaced']}/{plan['conv_layers']} layers)", f"{100 * a_e:.2f}",
                 f"{100 * a_t:.2f}", f"{100 * a_o:.2f}", f"{sp[1]:.3f}", f"{sp[2]:.3f}",
                 "yes" if base_e - a_e <= args.max_drop / 100 + 1e-9 else "no", f"{auto['seconds']:.0f}",
                 f"{auto['peak_rss_mb']:.0f}"])
    verdict = (f"best single setting within {args.max_drop} points: {best[0]} at {best[1]:.3f}x (1 thread); auto "
               f"{sp[1]:.3f}x" if best else f"no single setting within {args.max_drop} points; auto {sp[1]:.3f}x")
    rows.append([path.name, verdict, "", "", "", "", "", "", "", ""])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=[str(REPO / "models/digits_cnn.onnx"),
                                                 str(REPO / "models/resnet18_mnist.onnx")])
    ap.add_argument("--calib", type=int, default=AUTO_CALIB_LIMIT)
    ap.add_argument("--dataset", choices=("mnist", "fashion"), default="mnist",
                    help="calibration from <dataset>-train, selection and test parts from <dataset>-test")
    ap.add_argument("--eval", type=int, default=None,
                    help="test-set images auto and the best setting select on (auto holds --confirm-fraction of "
                         "them out of planning) [default: 5000 for fashion, 2000 for mnist, whose test set holds "
                         "4,000]")
    ap.add_argument("--confirm-fraction", type=float, default=None, help="auto's --confirm-fraction")
    ap.add_argument("--test", type=int, default=1000, help="further test-set images, reported only")
    ap.add_argument("--int8-only", action="store_true",
                    help="of the single settings only ORT INT8, timed in one run with the original and auto")
    ap.add_argument("--max-drop", type=float, default=0.5)
    ap.add_argument("--candidates", default=None, help=f"kinds (default: {','.join(list(KINDS) + list(STAGES))})")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--grow", action="store_true", help="auto's --grow (step 5b of the planner)")
    ap.add_argument("--path-refit", action="store_true", help="auto's --path-refit (step 5a of the planner)")
    ap.add_argument("--block", type=int, default=1,
                    help="runs of one model back to back per round (onnxcompress.evaluation.bench_models)")
    ap.add_argument("--timing-cache", default=str(Path(tempfile.gettempdir()) / "onnxcompress_bench_timings.json"))
    ap.add_argument("--out", default=None, help="folder for the models and reports (default: a temporary one)")
    args = ap.parse_args()
    if args.eval is None:
        args.eval = 5000 if args.dataset == "fashion" else 2000
    print(machine_summary(), flush=True)
    print(f"os.getloadavg() at start: {os.getloadavg()}", flush=True)
    work = Path(args.out or tempfile.mkdtemp(prefix="bench_auto_"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for m in args.models:
        rows += bench_model(Path(m), args, work)
    print(f"os.getloadavg() at end: {os.getloadavg()}")
    print(format_table(["model", "setting", "top-1 sel. %", "top-1 test %", "top-1 rest %", "speedup 1T", "speedup 2T",
                        f"within {args.max_drop} pt (sel.)", "time s", "peak RSS MB"], rows))
    print(f"(auto's time and RSS: the whole `optimize --method auto` process; single settings: fit time; "
          f"models and reports in {work})")


if __name__ == "__main__":
    main()
