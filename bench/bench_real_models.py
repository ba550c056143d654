"""Every method on real exported models (bench/realmodels.py): `onnxcompress
inspect`, `optimize --verify` data-free and calibrated on rendered inputs saved
as .npz, `compare`, and the task metric before and after. Everything goes
through the command line, each command in its own process, so what a user
would see is what the table records: the outcome (k of n Conv rewritten, left
unchanged with the reason, or the CLI's `error:` line), the metric, the output
cosine, the time.

    python bench/bench_real_models.py                       # every installed model, every method
    python bench/bench_real_models.py --models ppocr-cls orientation --methods cluspa penni
    python bench/bench_real_models.py --quick --markdown results.md

A command that ends in anything but exit 0 or a one-line `error:` with exit 2
(a traceback, a signal) is marked CRASH in the table, one that runs past
--timeout TIMEOUT, and the script then exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import realmodels  # noqa: E402

# (name in the table, method, extra CLI arguments, calibrated?)
VARIANTS = [
    ("falcon", "falcon", [], False),
    ("falcon+calib", "falcon", [], True),
    ("cluspa", "cluspa", [], False),
    ("cluspa+calib", "cluspa", [], True),
    ("penni", "penni", [], False),
    ("penni+calib", "penni", [], True),
    ("tabconv+calib", "tabconv", [], True),
    ("auto", "auto", [], True),  # the default: per-layer techniques + ORT INT8 within the default budget
]

# Samples per model: (evaluation, calibration, compare); the detectors are large.
SIZES = {"ppocr-det": (24, 8, 4), "dddd-det": (40, 16, 8), "ppocr-rec": (96, 32, 16),
         "dddd-rec": (96, 32, 16), "ppocr-cls": (128, 64, 16), "orientation": (96, 48, 16)}
# --method auto takes its own, larger calibration set: 256 are fitted to and the rest show the budget
# (top-1 agreement >= 0.99 at 95% needs >= 299 held-out inputs; the classifiers' outputs are scores)
AUTO_CALIB = {"ppocr-det": None, "dddd-det": None, "ppocr-rec": 384, "dddd-rec": 384, "ppocr-cls": 1280,
              "orientation": 640}
QUICK = {"ppocr-det": (8, 4, 2), "dddd-det": (12, 8, 4), "ppocr-rec": (32, 16, 8),
         "dddd-rec": (32, 16, 8), "ppocr-cls": (48, 32, 8), "orientation": (32, 16, 8)}


def cli(args: list[str], timeout: float) -> tuple[int, str, str, float]:
    """(exit status, stdout, stderr, seconds) of `onnxcompress ARGS` in a new process."""
    cmd = [sys.executable, "-m", "onnxcompress.cli", *args]
    start = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "PYTHONWARNINGS": "ignore"})
        return p.returncode, p.stdout, p.stderr, time.perf_counter() - start
    except subprocess.TimeoutExpired:
        return -999, "", f"timed out after {timeout:.0f} s", time.perf_counter() - start


def failure(rc: int, stderr: str) -> tuple[str, bool]:
    """(the line to show, whether it is a clean `error:` exit)."""
    if rc == -999:
        return f"TIMEOUT: {stderr}", False
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    if rc == 2 and errors and "Traceback" not in stderr:
        return errors[-1], True
    last = lines[-1] if lines else f"exit {rc}"
    return f"CRASH (exit {rc}): {last[:300]}", False


def outcome(report: dict) -> str:
    """'rewritten k of n Conv' or 'left unchanged', with the reasons layers were left alone (counted)."""
    t = report["totals"]
    plan = report.get("plan")
    if plan:  # --method auto: what the plan wrote
        return (f"auto wrote {plan['plan']}: {plan['layers_replaced']} of {plan['conv_layers']} Conv, "
                f"{plan['speedup'].get('1', 1.0):.2f}x at 1 thread (planner's timing)")
    skipped = [r for r in report["layers"] if r["status"] != "rewritten" and r.get("op", "Conv") == "Conv"]
    reasons = Counter(_reason(r.get("reason") or "?") for r in skipped)
    why = "; ".join(f"{n}x {reason}" for reason, n in reasons.most_common(2))
    if len(reasons) > 2:
        why += f"; {sum(n for _, n in reasons.most_common()[2:])}x other"
    if t["rewritten"] == 0 and not t.get("other_rewritten"):
        return f"left unchanged ({why or 'no Conv'})"
    text = f"rewritten {t['rewritten']} of {t['conv_layers']} Conv"
    if t.get("other_rewritten"):
        text += f" (+{t['other_rewritten']} other)"
    return text + (f" (left: {why})" if why else "")


def _reason(text: str) -> str:
    """A skip reason without its per-layer numbers, so that equal reasons count together."""
    import re

    text = text.split(";")[0].split(" (")[0]
    return re.sub(r"[0-9]+(\.[0-9]+)?", "N", text)[:80]


def headline(key: str, metrics: dict | None) -> str:
    if not metrics:
        return "-"
    m = realmodels.MODELS[key].metric
    extra = f" cer {metrics['cer']:.3f}" if "cer" in metrics else ""
    return f"{metrics[m]:.3f}{extra}"


def check_output(path: Path) -> str | None:
    """None if the written model loads and passes the full onnx.checker (our schemas)."""
    import onnx

    from onnxcompress.schemas import register_schemas

    try:
        register_schemas()
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    except Exception as exc:  # noqa: BLE001 - recorded in the table
        return f"onnx.checker: {str(exc).splitlines()[0][:200]}"
    return None


def run_model(key: str, variants, sizes, work: Path, timeout: float, seed: int,
              calib_rows: int | None = None) -> list[dict]:
    model = realmodels.model_path(key)
    n_eval, n_calib, n_compare = sizes[key]
    rows = []
    rc, out, err, secs = cli(["inspect", str(model)], timeout)
    inspect_line = (out.strip().splitlines() or ["?"])[-1] if rc == 0 else failure(rc, err)[0]
    print(f"\n## {key}: {realmodels.MODELS[key].description} ({model.name})\ninspect: "
          f"{' '.join(inspect_line.split())} ({secs:.1f} s)", flush=True)
    rows.append({"model": key, "method": "inspect", "outcome": "ok" if rc == 0 else inspect_line,
                 "clean": rc == 0 or failure(rc, err)[1], "before": None, "after": None, "cosine": None,
                 "seconds": secs})

    data = realmodels.task_data(key, n_eval, seed)
    before = realmodels.evaluate(key, model, data=data)
    calib = work / f"{key}.calib.npz"
    np.savez(calib, **realmodels.calibration_arrays(key, n_calib, seed + 1000))
    compare = work / f"{key}.compare.npz"
    np.savez(compare, **realmodels.calibration_arrays(key, n_compare, seed + 2000))
    print(f"metric before: {before}", flush=True)
    auto_calib = None
    if AUTO_CALIB.get(key) and any(v[1] == "auto" for v in variants):
        auto_calib = work / f"{key}.auto-calib.npz"
        np.savez(auto_calib, **realmodels.calibration_arrays(key, AUTO_CALIB[key], seed + 3000))

    for name, method, extra, calibrated in variants:
        out_path = work / f"{key}.{name}.onnx"
        report_path = work / f"{key}.{name}.json"
        args = ["optimize", str(model), "-o", str(out_path), "--method", method, "--verify",
                "--report", str(report_path), *extra]
        if calibrated and method == "auto" and auto_calib is not None:
            args += ["--calib", str(auto_calib), "--calib-limit", str(AUTO_CALIB[key])]
        elif calibrated:
            args += ["--calib", str(calib), "--calib-limit", str(n_calib)]
            if calib_rows and method != "falcon":
                args += ["--calib-rows", str(calib_rows)]
        rc, out, err, secs = cli(args, timeout)
        row = {"model": key, "method": name, "before": before, "after": None, "cosine": None, "seconds": secs,
               "clean": True}
        if rc != 0:
            row["outcome"], row["clean"] = failure(rc, err)
        else:
            report = json.loads(report_path.read_text())
            row["outcome"] = outcome(report)
            problem = check_output(out_path)
            if problem:
                row["outcome"] += f"; {problem}"
                row["clean"] = False
            try:
                row["after"] = realmodels.evaluate(key, out_path, data=data)
            except Exception as exc:  # noqa: BLE001 - a written model that does not run is a defect
                row["outcome"] += f"; CRASH running the output: {str(exc).splitlines()[0][:200]}"
                row["clean"] = False
            crc, cout, cerr, _ = cli(["compare", str(model), str(out_path), "--data", str(compare), "--json"],
                                     timeout)
            if crc == 0:
                row["cosine"] = json.loads(cout)[0]["cosine"]
            else:
                line, clean = failure(crc, cerr)
                row["cosine"] = f"compare {line}"
                row["clean"] &= clean
        rows.append(row)
        cos = row["cosine"] if isinstance(row["cosine"], str) or row["cosine"] is None else f"{row['cosine']:.4f}"
        print(f"{name:14s} {row['outcome']} | {headline(key, before)} -> {headline(key, row['after'])} | "
              f"cosine {cos} | {secs:.1f} s", flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | method | outcome | metric before | metric after | output cosine | time (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["method"] == "inspect":
            continue
        cos = r["cosine"] if isinstance(r["cosine"], str) or r["cosine"] is None else f"{r['cosine']:.4f}"
        lines.append(f"| {r['model']} | {r['method']} | {r['outcome'].replace('|', '/')} | "
                     f"{headline(r['model'], r['before'])} | {headline(r['model'], r['after'])} | {cos} | "
                     f"{r['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(realmodels.MODELS), choices=list(realmodels.MODELS))
    ap.add_argument("--methods", nargs="+", help="variants to run, by their names in the table (default all): " +
                    ", ".join(v[0] for v in VARIANTS))
    ap.add_argument("--quick", action="store_true", help="fewer samples")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per command")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calib-rows", type=int, help="--calib-rows for the calibrated fits (default: the CLI's)")
    ap.add_argument("--work", help="folder for the written models (default: a temporary one)")
    ap.add_argument("--markdown", help="also write the table to this file")
    args = ap.parse_args()

    variants = [v for v in VARIANTS if not args.methods or v[0] in args.methods]
    sizes = QUICK if args.quick else SIZES
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for key in args.models:
            reason = realmodels.missing_reason(key)
            if reason:
                print(f"\n## {key}: skipped, {reason}")
                continue
            rows += run_model(key, variants, sizes, work, args.timeout, args.seed, args.calib_rows)
    table = markdown(rows)
    print("\n" + table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    crashes = [r for r in rows if not r["clean"]]
    print(f"\n{len(rows)} commands, {len(crashes)} not clean (crash, traceback, checker or run failure)")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
