"""A fuzz campaign: cases spread over fork servers, outcomes counted per target.

    python -m tests.fuzz.harness --cases 400 [--seed 1] [--asan build/asan/libonnxcompress_ops.so]
                                 [--targets SparseInputConv,BasisConv,ClusteredSparseConv,LutConv,cli]
                                 [--keep fuzz-failures] [--jobs 1]

Targets: the four ops (one malformed node each, tests/fuzz/opcases.py) and
`cli` (a damaged model file through inspect/optimize/compare,
tests/fuzz/clicases.py). Case i of a campaign goes to target i mod the number
of targets, with index i // targets: a (seed, target, index) always names the
same case. Exit status 1 when any case crashed, hung or went over the memory
limit (or the fuzzer itself failed on a case); failing cases are kept for
`python -m tests.fuzz.replay`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from . import clicases, opcases, runner, sanitizer

REPO = Path(__file__).resolve().parents[2]
TARGETS = (*opcases.OPS, "cli")
COLUMNS = ("ok", "rejected", "crash", "hang", "over-limit", "harness-error")


@dataclass
class Summary:
    records: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    asan: bool = False

    def counts(self) -> dict[str, Counter]:
        table: dict[str, Counter] = defaultdict(Counter)
        for r in self.records:
            table[r.get("op") or r["target"]][r["outcome"]] += 1
        return table

    def failures(self) -> list[dict]:
        return [r for r in self.records if r["outcome"] in (*runner.FAILURES, "harness-error")]

    def failure_classes(self, examples: int = 2) -> str:
        """Failures grouped by signature, with a count and replay commands for the first few."""
        groups: dict[tuple, list[dict]] = defaultdict(list)
        for r in self.failures():
            groups[(r["outcome"], r.get("op") or r["target"], r.get("signature") or r["detail"][:80])].append(r)
        lines = []
        for (outcome, target, sig), rs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            lines.append(f"{len(rs):5d} {outcome} {target}: {sig}")
            for r in rs[:examples]:
                where = f"python -m tests.fuzz.replay {r['case_dir']}" if r.get("case_dir") else "(not kept)"
                lines.append(f"        index {r['index']}: {where}")
        return "\n".join(lines)

    def table(self) -> str:
        counts = self.counts()
        rows = [[t] + [counts[t][c] for c in COLUMNS] + [sum(counts[t].values())] for t in TARGETS if t in counts]
        total = Counter()
        for t in counts:
            total.update(counts[t])
        rows.append(["total"] + [total[c] for c in COLUMNS] + [sum(total.values())])
        headers = ["target", *COLUMNS, "cases"]
        widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
        lines = ["  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(r, widths)))
                 for r in [headers, *rows]]
        return "\n".join(lines)


class Server:
    """One `python -m tests.fuzz.server` subprocess."""

    def __init__(self, env: dict):
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fuzz.server"], cwd=REPO, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        ready = self.proc.stdout.readline()
        if not ready:
            raise RuntimeError("the fuzz server did not start (see its stderr above)")
        self.info = json.loads(ready)

    def run(self, req: dict) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the fuzz server died")
        return json.loads(line)

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except Exception:  # noqa: BLE001
            self.proc.kill()


def plan(cases: int, targets: tuple[str, ...], start: int = 0) -> list[tuple[str, int]]:
    return [(targets[i % len(targets)], i // len(targets)) for i in range(start, start + cases)]


def campaign(cases: int, seed: int = 1, targets: tuple[str, ...] = TARGETS, asan: str | None = None,
             keep: str | os.PathLike | None = None, jobs: int = 1, timeout: float | None = None,
             cli_timeout: float | None = None, mem_mb: int = 1024, corpus: str | os.PathLike | None = None,
             progress: bool = False, start: int = 0) -> Summary:
    """Runs `cases` cases of `targets` (round robin); asan: path of a sanitized library to load."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("OMP_NUM_THREADS", "1")
    if asan:
        env = sanitizer.environment(asan, env, max_allocation_mb=mem_mb, symbolize=False)
    timeout = timeout or (60.0 if asan else 20.0)
    cli_timeout = cli_timeout or (240.0 if asan else 90.0)
    work = Path(tempfile.mkdtemp(prefix="onnxcompress-fuzz-"))
    corpus = Path(corpus) if corpus else work / "corpus"
    if "cli" in targets:
        clicases.prepare_corpus(corpus)
    todo = plan(cases, targets, start)
    summary = Summary(asan=bool(asan))
    lock = threading.Lock()
    started = time.monotonic()
    next_item = iter(todo)
    errors: list[BaseException] = []

    def worker() -> None:
        server = None
        try:
            server = Server(env)
            while True:
                with lock:
                    item = next(next_item, None)
                if item is None:
                    return
                target, index = item
                req = {"target": "cli" if target == "cli" else "op", "seed": seed, "index": index,
                       "timeout": cli_timeout if target == "cli" else timeout, "mem_mb": mem_mb,
                       "keep": str(keep) if keep else None, "tmp": str(work), "corpus": str(corpus)}
                if target != "cli":
                    req["op"] = target
                record = server.run(req)
                with lock:
                    summary.records.append(record)
                    if progress and len(summary.records) % 100 == 0:
                        print(f"  {len(summary.records)}/{len(todo)} cases, {time.monotonic() - started:.0f} s",
                              file=sys.stderr, flush=True)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            if server:
                server.close()

    threads = [threading.Thread(target=worker) for _ in range(max(jobs, 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    summary.seconds = time.monotonic() - started
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    if errors:
        raise errors[0]
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=500)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--start", type=int, default=0, help="skip the first START cases of the plan")
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--asan", metavar="LIB", help="load this sanitized library (tests/fuzz/build_asan.sh)")
    p.add_argument("--keep", default="fuzz-failures", help="folder for failing cases")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--mem-mb", type=int, default=1024)
    p.add_argument("--json", help="write every case's record here")
    args = p.parse_args(argv)
    targets = tuple(t for t in args.targets.split(",") if t)
    unknown = set(targets) - set(TARGETS)
    if unknown:
        p.error(f"unknown targets {sorted(unknown)}; choose from {TARGETS}")
    s = campaign(args.cases, args.seed, targets, args.asan, args.keep, args.jobs, mem_mb=args.mem_mb,
                 progress=True, start=args.start)
    print(s.table())
    print(f"{len(s.records)} cases in {s.seconds:.1f} s ({'ASan+UBSan' if s.asan else 'no sanitizer'})")
    print(s.failure_classes())
    if args.json:
        Path(args.json).write_text(json.dumps(s.records, indent=1))
    return 1 if s.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
