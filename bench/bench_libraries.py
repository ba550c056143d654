"""Two or more builds of the custom-op library on the same rewritten models, in one interleaved run.

A kernel change is only worth what it saves in a model: a node alone, run again and again,
keeps its buffers and weights in cache, which in a model the other nodes have evicted. For
each model, each library build gets its own session (the same graph, the same feed, batch 1);
the sessions run interleaved (A B A B ...) at each thread count, and the table gives the
median latency with p10-p90, the ratio to the first build, and, from ORT's profiler
(separate sessions, after the timed runs, interleaved as well), the median node time of
each op type of ours summed over the model's nodes. The builds' instruction set is the process's (ONNXCOMPRESS_ISA).

    # the library of an earlier commit, against the installed one
    git worktree add /tmp/old <commit> && cmake -S /tmp/old/custom_ops -B /tmp/oldbuild && cmake --build /tmp/oldbuild
    python bench/bench_libraries.py MODEL.onnx --library before=/tmp/oldbuild/libonnxcompress_ops.so \\
        --library after=installed --runs 300
    ONNXCOMPRESS_ISA=avx2 python bench/bench_libraries.py MODEL.onnx --library ... --library ...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_layout_tax import machine_summary, node_medians

from onnxcompress import get_library_path
from onnxcompress.table import format_table

DOMAIN = "ai.onnxcompress"


def library_spec(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH (or NAME=installed), got {text!r}")
    path = get_library_path() if path == "installed" else path
    if not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"{path}: no such library")
    return name, str(Path(path).resolve())


def open_session(model: str, library: str, threads: int, profile: str | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    # interleaved sessions each have a pool: a spinning idle one would steal the other's cores
    if threads > 1:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.register_custom_ops_library(library)
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def feed_for(session: ort.InferenceSession) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feed = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
        if i.type == "tensor(uint8)":  # a quantized model's input, or one op of ours alone
            feed[i.name] = rng.integers(0, 256, shape, dtype=np.uint8)
        else:
            feed[i.name] = rng.random(shape, dtype=np.float32)
    return feed


def our_op_times(model: str, libraries: list[str], threads: int, feed: dict, runs: int,
                 ours: set[str]) -> list[dict[str, float]]:
    """Per library, the median node time of each of our op types summed over its nodes; the
    profiled sessions run interleaved too."""
    with tempfile.TemporaryDirectory() as tmp:
        sessions = [open_session(model, lib, threads, profile=os.path.join(tmp, f"p{i}"))
                    for i, lib in enumerate(libraries)]
        for _ in range(runs):
            for s in sessions:
                s.run(None, feed)
        traces = [json.loads(Path(s.end_profiling()).read_text()) for s in sessions]
    result = []
    for events in traces:
        totals = defaultdict(float)
        for op, us in node_medians(events, skip=runs // 5).values():  # the first fifth as warm-up
            if op in ours:
                totals[op] += us
        result.append(dict(totals))
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--library", type=library_spec, action="append", required=True,
                    help="NAME=PATH of a build (NAME=installed: the installed package's); two or more")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    args = ap.parse_args(argv)
    if len(args.library) < 2:
        ap.error("give two or more --library builds to compare")
    print(machine_summary())
    print(f"ONNXCOMPRESS_ISA={os.environ.get('ONNXCOMPRESS_ISA', 'auto')}; runs {args.runs} interleaved, "
          f"medians; op times: ORT's profiler, median node time summed over the nodes")
    rows = []
    for model in args.models:
        ours = {n.op_type for n in onnx.load(model, load_external_data=False).graph.node if n.domain == DOMAIN}
        for threads in args.threads:
            sessions = [open_session(model, lib, threads) for _, lib in args.library]
            feed = feed_for(sessions[0])
            for _ in range(args.warmup):
                for s in sessions:
                    s.run(None, feed)
            times = [[] for _ in sessions]
            for _ in range(args.runs):
                for i, s in enumerate(sessions):
                    start = time.perf_counter()
                    s.run(None, feed)
                    times[i].append(time.perf_counter() - start)
            del sessions
            base = float(np.median(times[0]))
            op_times = our_op_times(model, [lib for _, lib in args.library], threads, feed,
                                    max(100, args.runs // 3), ours)
            for (name, _), t, ops in zip(args.library, times, op_times):
                med = float(np.median(t))
                rows.append([Path(model).name, threads, name, f"{1e3 * med:.3f}",
                             f"{1e3 * np.percentile(t, 10):.3f}-{1e3 * np.percentile(t, 90):.3f}",
                             f"{base / med:.3f}x", "; ".join(f"{op} {us:.0f}" for op, us in sorted(ops.items()))])
    print(format_table(["model", "thr", "library", "ms", "p10-p90", "x first", "our ops, us"], rows))
    print("load average {:.2f} / {:.2f} / {:.2f} (1 / 5 / 15 min)".format(*os.getloadavg()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
