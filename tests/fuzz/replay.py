"""Replays a kept fuzz case in a fresh interpreter (no fork server).

    python -m tests.fuzz.replay CASE_DIR [--asan LIB] [--timeout S] [--mem-mb N]

CASE_DIR is a folder the harness kept (case.json, model.onnx / model/, feeds.npz).
An op case is run as `python -m tests.fuzz.runner op ...`; a CLI case as the
`onnxcompress` command itself would run (same arguments, from CASE_DIR). A case
found under ASan (case.json "asan": true) needs --asan LIB to reproduce a
sanitizer report. Prints the outcome and the process's stderr; exit status 1
when the case still crashes, hangs or goes over the memory limit.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from . import runner, sanitizer

REPO = Path(__file__).resolve().parents[2]


def replay(case_dir: str | os.PathLike, asan: str | None = None, timeout: float | None = None,
           mem_mb: int = 1024) -> tuple[str, str, str]:
    """(outcome, detail, stderr) of the kept case run afresh."""
    case_dir = Path(case_dir).resolve()
    case = json.loads((case_dir / "case.json").read_text())
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("OMP_NUM_THREADS", "1")
    if asan:
        env = sanitizer.environment(asan, env, max_allocation_mb=mem_mb)
    timeout = timeout or (240.0 if asan else 90.0)
    env["ONNXCOMPRESS_FUZZ_DUMP_AFTER"] = str(max(timeout - 2, 0.8 * timeout))
    limit = (mem_mb << 20) + (3 << 30)  # address space: the limit plus what the interpreter and ORT map

    def limits():
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if not asan:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    with tempfile.TemporaryDirectory() as tmp:
        if case["target"] == "cli":
            work = Path(tmp) / "case"
            import shutil

            shutil.copytree(case_dir, work, symlinks=True)
            cmd = [sys.executable, "-m", "tests.fuzz.runner", "cli", *case["argv"]]
            kind, result_path = "cli", None
        else:
            work = case_dir
            result_path = Path(tmp) / "result.json"
            from onnxcompress import get_library_path

            library = env.get("ONNXCOMPRESS_LIBRARY") or get_library_path()
            cmd = [sys.executable, "-m", "tests.fuzz.runner", "op", str(case_dir / "model.onnx"),
                   str(case_dir / "feeds.npz"), str(case.get("threads", 2)), library, str(result_path)]
            kind = "op"
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        err_path = Path(tmp) / "stderr.txt"
        with open(err_path, "w") as err, open(Path(tmp) / "stdout.txt", "w") as out:
            proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=out, stderr=err, preexec_fn=limits)
            end = runner.watch(proc.pid, timeout, (mem_mb << 20) + (1 << 30))
        stderr = err_path.read_text(errors="replace")
        result = json.loads(result_path.read_text()) if result_path and result_path.exists() else None
        held = None
        y_bytes = None
        if kind == "op":
            held, y_bytes = case.get("held_bytes"), case.get("y_bytes")
        # the runner measures its own growth from the start of the case (imports excluded)
        outcome, detail = runner.judge(kind, status=end["status"], signum=end["signum"], stderr=stderr,
                                       result=result, timed_out=end["timed_out"], over_memory=end["over_memory"],
                                       held_bytes=held, y_bytes=y_bytes, limit_bytes=mem_mb << 20,
                                       peak_bytes=(result or {}).get("peak_extra", 0))
        return outcome, detail, stderr


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("case")
    p.add_argument("--asan", metavar="LIB")
    p.add_argument("--timeout", type=float)
    p.add_argument("--mem-mb", type=int, default=1024)
    args = p.parse_args(argv)
    case = json.loads((Path(args.case) / "case.json").read_text())
    print(f"case: {case['target']} {case.get('op', '')} seed {case['seed']} index {case['index']}")
    for line in case.get("log", []):
        print(f"  mutation: {line}")
    if case.get("argv"):
        print("  command: onnxcompress " + " ".join(case["argv"]))
    if case.get("asan") and not args.asan:
        print("  (found under ASan: give --asan LIB to see the sanitizer report)")
    outcome, detail, stderr = replay(args.case, args.asan, args.timeout, args.mem_mb)
    if stderr.strip():
        print("--- stderr (last 60 lines)")
        print("\n".join(stderr.rstrip().splitlines()[-60:]))
    print(f"outcome: {outcome}: {detail}")
    return 1 if outcome in runner.FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
