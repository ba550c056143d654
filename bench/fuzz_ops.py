"""The full fuzz run of issue 13: >= 10,000 seeded cases over the four ai.onnxcompress ops
and the CLI, against the installed library and against the AddressSanitizer + UBSan
build, with a table of outcomes per target and the time each run took.

    python bench/fuzz_ops.py                      # 10,000 cases, plain and ASan (builds build/asan)
    python bench/fuzz_ops.py --cases 2000 --modes plain
    python bench/fuzz_ops.py --asan-lib build/asan/libonnxcompress_ops.so --jobs 2

Failing cases are kept under --keep (default bench/results/fuzz-failures/) and
replay with `python -m tests.fuzz.replay CASE [--asan LIB]`; the records go to
--json (default bench/results/fuzz_ops.json). Known open defect classes
(tests/fuzz/known.py) are named as such. Exit status 1 when any case failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fuzz import harness, known  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=10000, help="cases per mode")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--modes", default="plain,asan", help="plain and/or asan")
    ap.add_argument("--targets", default=",".join(harness.TARGETS))
    ap.add_argument("--asan-lib", help="a library built by tests/fuzz/build_asan.sh (default: build it)")
    ap.add_argument("--jobs", type=int, default=1, help="fork servers in parallel")
    ap.add_argument("--mem-mb", type=int, default=1024)
    ap.add_argument("--keep", default=str(REPO / "bench" / "results" / "fuzz-failures"))
    ap.add_argument("--json", dest="json_out", default=str(REPO / "bench" / "results" / "fuzz_ops.json"))
    args = ap.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    targets = tuple(t for t in args.targets.split(",") if t)
    Path(args.keep).mkdir(parents=True, exist_ok=True)
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)

    print(f"# fuzz_ops: {args.cases} cases per mode, seed {args.seed}, targets {', '.join(targets)}")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
          f"{args.jobs} job(s), memory limit {args.mem_mb} MiB per case")
    results, failed = {}, False
    for mode in modes:
        lib = None
        if mode == "asan":
            lib = args.asan_lib
            if not lib:
                t = time.monotonic()
                lib = subprocess.run([str(REPO / "tests" / "fuzz" / "build_asan.sh")], check=True,
                                     capture_output=True, text=True).stdout.strip().splitlines()[-1]
                print(f"# built {lib} in {time.monotonic() - t:.0f} s")
        s = harness.campaign(args.cases, seed=args.seed, targets=targets, asan=lib, keep=args.keep,
                             jobs=args.jobs, mem_mb=args.mem_mb, progress=True)
        unknown, found = known.classify(s.records)
        print(f"\n## {mode}: {len(s.records)} cases in {s.seconds:.0f} s "
              f"({1000 * s.seconds / max(len(s.records), 1):.0f} ms per case)")
        print(s.table())
        if s.failures():
            print("\nfailures by class:")
            print(s.failure_classes())
        for name, rs in found.items():
            print(f"known open defect class {name}: {len(rs)} cases")
        failed |= bool(s.failures())
        results[mode] = {"seconds": s.seconds, "counts": {t: dict(c) for t, c in s.counts().items()},
                         "unknown_failures": len(unknown), "known": {n: len(r) for n, r in found.items()},
                         "records": s.records}
    Path(args.json_out).write_text(json.dumps(results, indent=1))
    print(f"\nrecords: {args.json_out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
