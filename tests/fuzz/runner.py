"""Running one fuzz case in the current process, and judging how it ended.

`run_op` and `run_cli` are what a case's own process executes (a child forked
by tests/fuzz/server.py, or a fresh interpreter started by replay); `judge`
turns the process's end (exit status, signal, stderr, the result it wrote, its
peak memory) into one outcome:

- ok:         the node ran / the command succeeded;
- rejected:   a clean refusal: an ONNX Runtime error (op cases), or exactly one
              `error: ...` line on stderr and exit status 2 (CLI cases);
- crash:      a signal, a sanitizer report, an unexpected exit status, or a
              raw Python traceback from the CLI;
- hang:       killed after the timeout;
- over-limit: killed by the memory watchdog, an allocation refused under the
              memory limit that our code asked for (std::bad_alloc, Python
              MemoryError, `error: out of memory`), or a sanitizer
              allocation-size report.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import traceback

OUTCOMES = ("ok", "rejected", "crash", "hang", "over-limit")
FAILURES = ("crash", "hang", "over-limit")

_SANITIZER = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer)|runtime error: |"
                        r"SUMMARY: (AddressSanitizer|UndefinedBehaviorSanitizer)")
_SANITIZER_ALLOC = re.compile(r"allocation-size-too-big|requested allocation size .* exceeds|out-of-memory|"
                              r"rss-limit-exceeded|allocator is out of memory")
_OVER_LIMIT_TEXT = re.compile(r"bad_alloc|MemoryError|error: out of memory|Cannot allocate memory")


_FRAME = re.compile(r"#\d+ 0x[0-9a-f]+ in (\S+).*?(custom_ops/src/[\w./]+:\d+)")
_RAW_FRAME = re.compile(r"#\d+ 0x[0-9a-f]+ +\((\S*libonnxcompress_ops\S*)\+(0x[0-9a-f]+)\)")
_symbols: dict[tuple[str, str], str] = {}


def _symbolize(stderr: str) -> str:
    """Frames of an unsymbolized sanitizer report (module+offset) that fall in our library, as
    "function file:line" lines from addr2line (cached: a campaign meets the same frames often)."""
    import subprocess

    out = []
    for lib, off in _RAW_FRAME.findall(stderr)[:12]:
        key = (lib, off)
        if key not in _symbols:
            try:
                # the return address points after the call: look up the byte before it
                addr = hex(int(off, 16) - 1)
                lines = subprocess.run(["addr2line", "-f", "-C", "-i", "-e", lib, addr], capture_output=True,
                                       text=True, timeout=30).stdout.splitlines()
                pairs = [f"#0 0x0 in {lines[i].replace(' ', '')} {lines[i + 1]}" for i in range(0, len(lines) - 1, 2)]
                _symbols[key] = "\n".join(pairs)
            except (OSError, subprocess.TimeoutExpired):
                _symbols[key] = ""
        out.append(_symbols[key])
    return "\n".join(out)


_PY_FRAME = re.compile(r'File "([^"]*onnxcompress/[^"]+)", line (\d+), in (\S+)')


def signature(outcome: str, detail: str, stderr: str) -> str:
    """A short name of a failure's class, to group cases that fail the same way: the sanitizer's
    error kind and the first frame in custom_ops/src, or the exception and the last onnxcompress frame."""
    if outcome not in FAILURES:
        return ""
    stderr = stderr or ""
    kind = ""
    m = re.search(r"ERROR: AddressSanitizer: ([\w-]+)|(runtime error: [^\n]{0,60})|CHECK failed: ([^\n]{0,60})|"
                  r"terminate called [^\n]{0,80}|ERROR: AddressSanitizer: (SEGV)", stderr)
    if m:
        kind = next((g for g in m.groups() if g), m.group(0)).strip()
    frame = _FRAME.search(stderr) or _FRAME.search(_symbolize(stderr))
    if frame:
        fn = re.sub(r"\(.*", "", frame.group(1))[-60:]
        return f"{kind or detail[:40]} at {frame.group(2).split('custom_ops/src/')[1]} ({fn})"
    if outcome == "hang":
        frames = re.findall(r'File "([^"]*onnxcompress/[^"]+)", line (\d+) in (\S+)', stderr)
        if frames:
            f = frames[0]  # faulthandler prints the innermost frame first
            return f"hang in {f[2]} at {f[0].split('onnxcompress/')[-1]}:{f[1]}"
        return "hang"
    if "Traceback (most recent call last)" in stderr:
        frames = _PY_FRAME.findall(stderr)
        last = stderr.strip().splitlines()[-1][:80]
        where = f" at {frames[-1][0].split('onnxcompress/')[-1]}:{frames[-1][1]}" if frames else ""
        return f"{last.split(':')[0]}{where}"
    return (kind or detail)[:80]


def _set_threads_env() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def run_op(model_path: str, feeds_path: str, threads: int, library: str) -> dict:
    """Creates a session on the one-node model and runs it on the feeds; returns what happened."""
    import numpy as np
    import onnxruntime as ort

    import resource

    stage = "load"
    rss_before = _rss_bytes(os.getpid())

    def grown() -> int:  # peak growth of this process since the case started
        return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before, 0)

    try:
        with np.load(feeds_path, allow_pickle=False) as z:
            feeds = {k: z[k] for k in z.files}
        so = ort.SessionOptions()
        so.register_custom_ops_library(library)
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 4
        stage = "create"
        sess = ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])
        stage = "run"
        out = sess.run(None, feeds)
        del sess
        return {"result": "ok", "stage": stage, "shape": list(out[0].shape), "peak_extra": grown()}
    except MemoryError as exc:
        return {"result": "memory", "stage": stage, "error": f"MemoryError: {exc}"[:500], "peak_extra": grown()}
    except Exception as exc:  # noqa: BLE001 - classified below
        module = type(exc).__module__ or ""
        kind = "ort" if module.startswith("onnxruntime") else "python"
        return {"result": kind, "stage": stage, "error": f"{type(exc).__name__}: {exc}"[:1000],
                "peak_extra": grown()}


def run_cli(argv: list[str]) -> int:
    """Runs `onnxcompress ARGV` as its console script does; returns the exit status.
    An exception escaping main() is printed as Python would print it (exit 1)."""
    from onnxcompress.cli import main

    try:
        main(args=argv, prog_name="onnxcompress", standalone_mode=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - what the interpreter would print
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def op_memory_budget(held_bytes: int, y_bytes: int | None) -> int:
    """What an op case may legitimately add to the process: ORT's own overhead, a small multiple of
    what the case holds (model file and inputs: every allocation at session creation must be
    bounded by the initializers present) and of the Y it asks for. Under ASan, its quarantine of
    freed blocks (64 MiB, tests/fuzz/sanitizer.py) and shadow memory come on top."""
    asan = 96 << 20 if "libasan" in os.environ.get("LD_PRELOAD", "") else 0
    return (128 << 20) + asan + 16 * held_bytes + 5 * (y_bytes or 0)


def judge(kind: str, *, status: int | None, signum: int | None, stderr: str, result: dict | None,
          timed_out: bool = False, over_memory: bool = False, peak_bytes: int = 0, held_bytes: int | None = None,
          y_bytes: int | None = None, limit_bytes: int | None = None) -> tuple[str, str]:
    """(outcome, one-line detail) of a finished case; kind is "op" or "cli"."""
    outcome, detail = _judge(kind, status, signum, stderr, result, timed_out, over_memory)
    if kind != "op" or held_bytes is None:
        return outcome, detail
    legit_huge = y_bytes is not None and limit_bytes is not None and 2 * y_bytes > limit_bytes
    if outcome in ("over-limit", "hang") and legit_huge:
        # the node asks for a Y near or over the fuzz memory limit: refusing or failing to
        # allocate it (or taking long to fill it) is what ONNX Runtime's own Conv would do
        return "rejected", f"legit Y of {y_bytes / 2**20:.0f} MiB is over the fuzz limit ({outcome}: {detail})"[:400]
    budget = op_memory_budget(held_bytes, y_bytes)
    if outcome in ("ok", "rejected") and peak_bytes > budget:
        return "over-limit", (f"peak {peak_bytes / 2**20:.0f} MiB for a case holding {held_bytes / 2**20:.2f} MiB "
                              f"(Y {(y_bytes or 0) / 2**20:.0f} MiB; budget {budget / 2**20:.0f} MiB); "
                              f"{outcome}: {detail}")[:400]
    return outcome, detail


def _judge(kind, status, signum, stderr, result, timed_out, over_memory) -> tuple[str, str]:
    if timed_out:
        return "hang", "killed after the timeout"
    if over_memory:
        return "over-limit", "killed by the memory watchdog"
    report = _SANITIZER.search(stderr or "")
    if report:
        line = next((ln for ln in stderr.splitlines() if _SANITIZER.search(ln)), report.group(0))
        if _SANITIZER_ALLOC.search(stderr):
            return "over-limit", "sanitizer: " + line.strip()[:300]
        return "crash", "sanitizer: " + line.strip()[:300]
    if signum:
        name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else str(signum)
        tail = " | ".join(ln.strip() for ln in (stderr or "").strip().splitlines()[-3:])
        return "crash", f"signal {name}: {tail}"[:400]
    if kind == "op":
        if status != 0 or result is None:
            tail = " | ".join(ln.strip() for ln in (stderr or "").strip().splitlines()[-3:])
            return "crash", f"exit status {status} without a result: {tail}"[:400]
        text = result.get("error", "")
        if result["result"] == "ok":
            return "ok", f"ran, Y {result.get('shape')}"
        if result["result"] == "memory" or _OVER_LIMIT_TEXT.search(text):
            return "over-limit", f"{result['stage']}: {text}"[:400]
        if result["result"] == "ort":
            return "rejected", f"{result['stage']}: {text}"[:400]
        return "crash", f"{result['stage']}: not an ONNX Runtime error: {text}"[:400]
    # CLI
    lines = [ln for ln in (stderr or "").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    if "Traceback (most recent call last)" in (stderr or ""):
        last = lines[-1] if lines else ""
        return "crash", f"raw traceback: {last}"[:400]
    if any(_OVER_LIMIT_TEXT.search(ln) for ln in errors):
        return "over-limit", errors[0][:400]
    if status == 0:
        return "ok", "exit 0"
    if status == 2 and len(errors) == 1:
        return "rejected", errors[0][:400]
    tail = " | ".join(ln.strip() for ln in lines[-3:])
    return "crash", f"exit status {status}, {len(errors)} error lines: {tail}"[:400]


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def watch(pid: int, timeout: float, rss_limit: int) -> dict:
    """Waits for child `pid`, killing it (SIGKILL) after `timeout` seconds or when its resident
    memory passes `rss_limit` bytes. Returns status/signum/timed_out/over_memory/maxrss (bytes)."""
    import time

    start = time.monotonic()
    timed_out = over_memory = False
    delay = 0.001
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - start > timeout:
            timed_out = True
        elif _rss_bytes(pid) > rss_limit:
            over_memory = True
        if timed_out or over_memory:
            os.kill(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            break
        time.sleep(delay)
        delay = min(delay * 1.5, 0.005)
    signum = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    return {"status": code, "signum": None if (timed_out or over_memory) else signum, "timed_out": timed_out,
            "over_memory": over_memory, "maxrss": usage.ru_maxrss * 1024, "seconds": time.monotonic() - start}


def main() -> None:
    """Entry point of a replayed case's fresh interpreter: `runner op MODEL FEEDS THREADS LIB RESULT`
    or `runner cli ARG...` (the exit status is the command's)."""
    _set_threads_env()
    if os.environ.get("ONNXCOMPRESS_FUZZ_DUMP_AFTER"):  # replay of a hang: show where it is
        import faulthandler

        faulthandler.dump_traceback_later(float(os.environ["ONNXCOMPRESS_FUZZ_DUMP_AFTER"]), exit=False)
    what = sys.argv[1]
    if what == "op":
        model, feeds, threads, library, result_path = sys.argv[2:7]
        result = run_op(model, feeds, int(threads), library)
        with open(result_path, "w") as fh:
            json.dump(result, fh)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    os._exit(run_cli(sys.argv[2:]))


if __name__ == "__main__":
    main()
