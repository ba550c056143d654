"""Fork server: runs fuzz cases, each in a forked child of its own.

Started by tests/fuzz/harness.py (`python -m tests.fuzz.server`) with the
environment of the campaign (the sanitizer's LD_PRELOAD for an ASan run, and
ONNXCOMPRESS_LIBRARY). It imports numpy, onnx, onnxruntime and onnxcompress
once and never opens a session itself; for each request line (JSON) on stdin
it builds the case, forks, and the child runs it under a memory limit
(RLIMIT_AS when not under ASan, whose shadow memory reserves terabytes of
address space) while this process enforces the timeout and a resident-memory
watchdog. One JSON line per case goes to stdout. A failing case is copied into
the request's `keep` folder with a case.json that tests/fuzz/replay.py replays.
"""

from __future__ import annotations

import ctypes
import faulthandler
import json
import os
import resource
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

from . import runner

runner._set_threads_env()

import numpy as np  # noqa: E402
import onnx  # noqa: E402,F401
import onnxruntime  # noqa: E402,F401

import onnxcompress.cli  # noqa: E402,F401 - imported once, before forking
from onnxcompress import get_library_path  # noqa: E402

from . import clicases, opcases  # noqa: E402

ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")


def _vm_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _prepare(req: dict, work: Path) -> dict:
    """Writes the case's files into `work`; returns what the child needs and what case.json records."""
    if req["target"] == "cli":
        info = clicases.make_case(req["seed"], req["index"], Path(req["corpus"]), work)
        return {"kind": "cli", "argv": info["argv"], "log": info["log"], "base": info["base"]}
    spec = opcases.make_case(req["seed"], req["index"], req["op"])
    model, feeds = opcases.build(spec, seed=req["index"])
    (work / "model.onnx").write_bytes(model)
    np.savez(work / "feeds.npz", **feeds)
    held = len(model) + sum(v.nbytes for v in feeds.values())
    return {"kind": "op", "op": spec.op, "threads": spec.threads, "log": spec.log, "held_bytes": held,
            "y_bytes": opcases.expected_output_bytes(spec)}


def _child(case: dict, work: Path, mem_bytes: int, library: str, timeout: float) -> None:
    """In the forked child: limits, output to files, run, exit. Never returns."""
    try:
        out = os.open(work / "stdout.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        err = os.open(work / "stderr.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, 1)
        os.dup2(err, 2)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        # a hang shows where it hangs: the Python stacks go to stderr shortly before the kill
        faulthandler.dump_traceback_later(max(timeout - 2, 0.8 * timeout), exit=False)
        if not ASAN:
            limit = _vm_bytes() + mem_bytes
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        if case["kind"] == "op":
            result = runner.run_op(str(work / "model.onnx"), str(work / "feeds.npz"), case["threads"], library)
            (work / "result.json").write_text(json.dumps(result))
            code = 0
        else:
            os.chdir(work)
            code = runner.run_cli(case["argv"])
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        code = 3
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def run_one(req: dict, library: str) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="case-", dir=req.get("tmp")))
    record = {k: req[k] for k in ("target", "op", "seed", "index") if k in req}
    record["asan"] = ASAN
    try:
        try:
            case = _prepare(req, tmp)
        except Exception as exc:  # noqa: BLE001 - a fuzzer bug, not a finding; reported as such
            record.update(outcome="harness-error", detail=f"building the case: {type(exc).__name__}: {exc}"[:400])
            return record
        record["log"] = case["log"]
        if case["kind"] == "cli":
            record["argv"] = case["argv"]
        else:
            record.update(threads=case["threads"], held_bytes=case["held_bytes"], y_bytes=case["y_bytes"])
        mem = int(req["mem_mb"]) << 20
        baseline = runner._rss_bytes(os.getpid())
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            _child(case, tmp, mem, library, float(req["timeout"]))
        end = runner.watch(pid, float(req["timeout"]), baseline + mem)
        stderr = (tmp / "stderr.txt").read_text(errors="replace") if (tmp / "stderr.txt").exists() else ""
        result = json.loads((tmp / "result.json").read_text()) if (tmp / "result.json").exists() else None
        peak = max(end["maxrss"] - baseline, 0)
        outcome, detail = runner.judge(case["kind"], status=end["status"], signum=end["signum"], stderr=stderr,
                                       result=result, timed_out=end["timed_out"], over_memory=end["over_memory"],
                                       peak_bytes=peak, held_bytes=case.get("held_bytes"),
                                       y_bytes=case.get("y_bytes"), limit_bytes=mem)
        record.update(outcome=outcome, detail=detail, signature=runner.signature(outcome, detail, stderr), seconds=round(end["seconds"], 3),
                      peak_extra_mb=round(peak / 2**20, 1))
        if outcome in runner.FAILURES and req.get("keep"):
            name = f"{req['target']}-{req.get('op', 'cli')}-s{req['seed']}-i{req['index']}" + ("-asan" if ASAN else "")
            dest = Path(req["keep"]) / name
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(tmp, dest, symlinks=True)
            for leftover in ("result.json", "out.onnx"):
                (dest / leftover).unlink(missing_ok=True)
            (dest / "case.json").write_text(json.dumps({**record, "stderr_tail": stderr[-4000:]}, indent=2))
            record["case_dir"] = str(dest)
        return record
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _warm_up(library: str) -> None:
    """Imports every onnxcompress module (the CLI imports most lazily) and opens and closes one
    session per op, so that each child starts from a process where ONNX Runtime, our library and
    the passes are initialised (40% less time per op case). No session or ORT thread outlives this."""
    import importlib
    import pkgutil

    import onnxcompress

    for info in pkgutil.walk_packages(onnxcompress.__path__, "onnxcompress."):
        try:
            importlib.import_module(info.name)
        except Exception:  # noqa: BLE001 - an optional dependency; the child imports it then
            pass
    with tempfile.TemporaryDirectory() as tmp:
        for op in opcases.OPS:
            model, feeds = opcases.build(opcases.VALID[op](np.random.default_rng(0)))
            (Path(tmp) / "m.onnx").write_bytes(model)
            np.savez(Path(tmp) / "f.npz", **feeds)
            args = (str(Path(tmp) / "m.onnx"), str(Path(tmp) / "f.npz"), 2, library)
            # probe in a child first: a defect that crashes on a valid node must not kill the server
            pid = os.fork()
            if pid == 0:
                os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
                runner.run_op(*args)
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
                runner.run_op(*args)


def main() -> None:
    library = get_library_path()
    ctypes.CDLL(library)  # loaded once here, so every child finds it mapped already
    if os.environ.get("ONNXCOMPRESS_FUZZ_COLD") != "1":
        _warm_up(library)
    print(json.dumps({"ready": True, "asan": ASAN, "library": library}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            record = run_one(req, library)
        except Exception as exc:  # noqa: BLE001
            record = {**{k: req.get(k) for k in ("target", "op", "seed", "index")}, "outcome": "harness-error",
                      "detail": f"{type(exc).__name__}: {exc}"[:400]}
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
