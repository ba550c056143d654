"""The layout tax: what ONNX Runtime's blocked NCHWc layout costs our ops in a model.

At ORT_ENABLE_ALL, ONNX Runtime's NchwcTransformer turns its Convs (and the
pooling, Add and activations next to them) into `com.microsoft.nchwc` ops on a
channel-blocked layout (block 8 on AVX2, 16 on AVX-512) and puts
ReorderInput / ReorderOutput nodes wherever a tensor passes between that
layout and plain NCHW. Our ops read and write NCHW, so every one of them in a
chain of ORT Convs forces reorders out of and back into the blocked layout,
and the Add / Relu that ORT fused into its NCHWc Conv run on their own again.

For a model and a rewrite (`--method` with options, or `--rewritten FILE`)
this script reports:

1. where ORT placed the reorders: ORT's own optimized graphs (dumped through
   SessionOptions.optimized_model_filepath) of the original and the rewritten
   model, at ORT_ENABLE_ALL and at ORT_ENABLE_EXTENDED (no NCHWc, for
   reference): counts of ReorderInput / ReorderOutput, NCHWc Convs, plain
   Convs and our nodes, and for each of our nodes what feeds it and what it
   feeds (a reorder, an NCHWc op, a plain op);
2. the time spent in them: ORT's profiler (SessionOptions.enable_profiling),
   the JSON trace parsed, per-node kernel times (median over the runs) summed
   by op type, for the four sessions, at 1 and 2 threads;
3. the model-level speedup against the layer-level ones: each of our nodes
   against the ORT node it replaced (same profiles), the sum of the time saved
   in those nodes, the speedup that sum predicts, and the speedup measured end
   to end (plain sessions without profiling, runs interleaved, medians); the
   difference split into reorders, ops ORT had fused and now runs alone, and
   the rest.

    python bench/bench_layout_tax.py --model models/digits_cnn.onnx --method falcon --opt select=all
    python bench/bench_layout_tax.py --model models/resnet18_mnist.onnx --method penni \\
        --opt bases=3 --opt coef_sparsity=0.9 --opt basis_iterations=1
    python bench/bench_layout_tax.py --model models/mobilenet_v2.onnx --calib photos --method falcon --opt select=all
    python bench/bench_layout_tax.py --model models/digits_cnn.onnx --rewritten digits_cnn.falcon.onnx
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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

from onnxcompress._runtime import session_options  # noqa: E402
from onnxcompress.errors import OnnxCompressError  # noqa: E402
from onnxcompress.inputs import calibration_feeds  # noqa: E402
from _modelbench import machine_summary as _modelbench_summary  # noqa: E402
from onnxcompress.model_io import load_model, prepare_for_runtime  # noqa: E402
from onnxcompress.optimizer import optimize  # noqa: E402
from onnxcompress.schemas import DOMAIN  # noqa: E402
from onnxcompress.table import format_table  # noqa: E402

NCHWC = "com.microsoft.nchwc"
LEVELS = {"ALL": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
          "EXTENDED": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}

def machine_summary() -> str:
    """_modelbench's summary (CPU, ISA, cores, ORT, load) and the NCHWc block ORT uses on it."""
    flags = set()
    try:
        flags = next((set(line.split(":", 1)[1].split()) for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), set())
    except OSError:
        pass
    block = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    return f"{_modelbench_summary()}; ORT NCHWc block {block}"


def load_note() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min) on {os.cpu_count()} CPUs"


def parse_opt(text: str):
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--opt takes key=value, got '{text}'")
    for cast in (int, float):
        try:
            return key.replace("-", "_"), cast(value)
        except ValueError:
            pass
    if value.lower() in ("true", "false"):
        return key.replace("-", "_"), value.lower() == "true"
    return key.replace("-", "_"), value


def options(threads: int, level: str, *, dump: str | None = None, profile: str | None = None) -> ort.SessionOptions:
    opts = session_options(threads, spinning=threads == 1)
    opts.graph_optimization_level = LEVELS[level]
    if dump:
        opts.optimized_model_filepath = dump
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile
    opts.log_severity_level = 3  # the NCHWc serialisation warning is expected here
    return opts


# ---------------------------------------------------------------- graph placement


class OptimizedGraph:
    """ORT's optimized graph of one session, as dumped."""

    def __init__(self, model: onnx.ModelProto):
        self.nodes = list(model.graph.node)
        self.by_name = {n.name: n for n in self.nodes}
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers = defaultdict(list)
        for n in self.nodes:
            for i in n.input:
                self.consumers[i].append(n)
        self.graph_inputs = {i.name for i in model.graph.input}
        self.graph_outputs = {o.name for o in model.graph.output}
        self.aliases: dict[str, list[str]] = {}  # Conv name -> its tensors in the model ORT was given

    @staticmethod
    def kind(node) -> str:
        if node.domain == NCHWC:
            return node.op_type if node.op_type.startswith("Reorder") else f"nchwc.{node.op_type}"
        if node.domain == DOMAIN:
            return f"ours.{node.op_type}"
        return node.op_type if not node.domain else f"{node.domain}.{node.op_type}"

    def counts(self) -> dict:
        c = defaultdict(int)
        for n in self.nodes:
            c["nodes"] += 1
            if n.domain == NCHWC and n.op_type == "ReorderInput":
                c["ReorderInput"] += 1
            elif n.domain == NCHWC and n.op_type == "ReorderOutput":
                c["ReorderOutput"] += 1
            elif n.domain == NCHWC and n.op_type == "Conv":
                c["nchwc Conv"] += 1
            elif n.domain == NCHWC:
                c["other nchwc"] += 1
            elif n.domain == DOMAIN:
                c["ours"] += 1
            elif n.op_type in ("Conv", "FusedConv"):
                c["plain Conv"] += 1
        return c

    def sources(self, node) -> str:
        """What feeds the activation input of `node` (its first input)."""
        t = node.input[0]
        if t in self.graph_inputs:
            return "graph input"
        p = self.producer.get(t)
        return self.kind(p) if p is not None else "initializer"

    def sinks(self, node) -> str:
        kinds = sorted({self.kind(c) for o in node.output for c in self.consumers.get(o, [])})
        if any(o in self.graph_outputs for o in node.output):
            kinds.append("graph output")
        return ", ".join(kinds) or "-"

    def counterpart(self, node):
        """The node of this (original) graph that computes what `node` of a rewritten graph replaced:
        same name (a Conv ORT left alone or fused in NCHW), or the NCHWc Conv ORT named after
        the output tensor, or the producer of the same output tensor. A node of ours that took in
        the residual Add and the Relu has the Relu's output: the original Conv of its name is found
        through `aliases` (its output and the Relu's, which ORT names its NCHWc Conv after)."""
        out = node.output[0]
        names = [f"{t}_nchwc" for t in [out] + self.aliases.get(node.name, [])]
        for candidate in [self.by_name.get(node.name)] + [self.by_name.get(n) for n in names] + [self.producer.get(out)]:
            if candidate is not None and candidate.op_type in ("Conv", "FusedConv"):
                return candidate
        return None


def conv_tensors(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Conv name -> its output tensor, and the output of the Relu / Clip that alone reads it."""
    readers = defaultdict(list)
    for n in model.graph.node:
        for i in n.input:
            readers[i].append(n)
    out = {}
    for n in model.graph.node:
        if n.op_type == "Conv" and n.output:
            t = [n.output[0]]
            after = readers.get(n.output[0], [])
            if len(after) == 1 and after[0].op_type in ("Relu", "Clip"):
                t.append(after[0].output[0])
            out[n.name] = t
    return out


def dump_graph(model_bytes: bytes, level: str, workdir: Path, tag: str) -> OptimizedGraph:
    path = workdir / f"{tag}.{level}.opt.onnx"
    ort.InferenceSession(model_bytes, sess_options=options(1, level, dump=str(path)),
                         providers=["CPUExecutionProvider"])
    return OptimizedGraph(onnx.load(str(path)))


# ---------------------------------------------------------------- profiles


def node_medians(trace: list[dict], skip: int) -> dict[str, tuple[str, float]]:
    """{node name: (op name, median kernel time in microseconds)} over the runs after `skip`."""
    times, ops = defaultdict(list), {}
    for e in trace:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            times[name].append(float(e["dur"]))
            ops[name] = e.get("args", {}).get("op_name", "?")
    return {n: (ops[n], statistics.median(t[skip:] if len(t) > skip else t)) for n, t in times.items()}


def run_medians(trace: list[dict], skip: int) -> float:
    runs = [float(e["dur"]) for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    return statistics.median(runs[skip:] if len(runs) > skip else runs)


def profile_sessions(models: dict[str, bytes], feed: dict, threads: int, runs: int, warmup: int,
                     workdir: Path) -> dict[str, dict]:
    """One profiled session per (model, level), runs interleaved; per-node medians and run medians."""
    sessions = {}
    for tag, data in models.items():
        for level in LEVELS:
            prefix = str(workdir / f"prof_{tag}_{level}_{threads}t")
            sessions[(tag, level)] = ort.InferenceSession(
                data, sess_options=options(threads, level, profile=prefix), providers=["CPUExecutionProvider"])
    for _ in range(warmup + runs):
        for s in sessions.values():
            s.run(None, feed)
    out = {}
    for key, s in sessions.items():
        with open(s.end_profiling()) as f:
            trace = json.load(f)
        out[key] = {"nodes": node_medians(trace, warmup), "run_us": run_medians(trace, warmup)}
    return out


def end_to_end(models: dict[str, bytes], feed: dict, threads: int, runs: int, warmup: int) -> dict:
    """Median latency (ms) of plain sessions (no profiler), all runs interleaved."""
    sessions = {(tag, level): ort.InferenceSession(data, sess_options=options(threads, level),
                                                   providers=["CPUExecutionProvider"])
                for tag, data in models.items() for level in LEVELS}
    for _ in range(warmup):
        for s in sessions.values():
            s.run(None, feed)
    times, cpu = defaultdict(list), defaultdict(list)
    for _ in range(runs):
        for key, s in sessions.items():
            start, start_cpu = time.perf_counter(), time.thread_time()
            s.run(None, feed)
            times[key].append(time.perf_counter() - start)
            cpu[key].append(time.thread_time() - start_cpu)
    wall = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    if threads == 1:  # the run happens on this thread: its CPU time is the latency minus preemption
        wall.update({("cpu",) + k: 1e3 * statistics.median(v) for k, v in cpu.items()})
    return wall


def by_op(nodes: dict[str, tuple[str, float]], graph: OptimizedGraph) -> dict[str, float]:
    """Kernel time (us) summed by op kind; the kind from ORT's optimized graph (domain-qualified)."""
    sums = defaultdict(float)
    for name, (op, us) in nodes.items():
        node = graph.by_name.get(name)
        sums[graph.kind(node) if node is not None else op] += us
    return dict(sums)


# ---------------------------------------------------------------- report


def build_rewrite(original: onnx.ModelProto, args, feeds) -> onnx.ModelProto:
    if args.rewritten:
        return load_model(args.rewritten)
    opts = dict(args.opt)
    start = time.perf_counter()
    model, report = optimize(original, args.method, calib_feeds=feeds, **opts)
    print(f"rewrite: --method {args.method} {' '.join(f'{k}={v}' for k, v in opts.items())}: "
          f"{report.totals['rewritten']} of {report.totals['conv_layers']} Conv rewritten "
          f"({time.perf_counter() - start:.0f} s)")
    return model


def placement_tables(graphs: dict, rewritten_tag: str = "rewritten") -> list:
    rows = []
    for (tag, level), g in graphs.items():
        c = g.counts()
        rows.append([tag, level, c["nodes"], c["ReorderInput"], c["ReorderOutput"],
                     c["ReorderInput"] + c["ReorderOutput"], c["nchwc Conv"], c["other nchwc"], c["plain Conv"],
                     c["ours"]])
    print(format_table(["model", "ORT level", "nodes", "ReorderInput", "ReorderOutput", "reorders", "NCHWc Conv",
                        "other NCHWc", "plain Conv", "ours"], rows))
    g, orig = graphs[(rewritten_tag, "ALL")], graphs[("original", "ALL")]
    added = {k: g.counts()[k] - orig.counts()[k] for k in ("ReorderInput", "ReorderOutput")}
    print(f"\nthe rewrite adds {added['ReorderInput']} ReorderInput and {added['ReorderOutput']} ReorderOutput "
          f"at ORT_ENABLE_ALL ({orig.counts()['nchwc Conv']} -> {g.counts()['nchwc Conv']} NCHWc Convs)")
    ours = [n for n in g.nodes if n.domain == DOMAIN]
    between = [n for n in ours if g.sources(n) == "ReorderOutput" or "ReorderInput" in g.sinks(n)]
    print(f"\nour nodes in ORT's ORT_ENABLE_ALL graph: {len(ours)}; next to a reorder: {len(between)}")
    table = []
    for n in ours:
        twin = orig.counterpart(n)
        fused = ""
        if twin is not None:
            extras = [a.s.decode() for a in twin.attribute if a.name == "activation"]
            if twin.domain == NCHWC and len(twin.input) > 3 and twin.input[3]:
                extras.append("Sum")
            fused = "+".join(extras)
        table.append([n.name, n.op_type, g.sources(n), g.sinks(n),
                      (orig.kind(twin) + (f" (+{fused})" if fused else "")) if twin is not None else "-"])
    print(format_table(["our node", "op", "fed by", "feeds", "replaces (original at ALL)"], table))
    return ours


def timing_tables(prof: dict, e2e: dict, graphs: dict, ours: list, threads: int) -> dict:
    keys = list(prof)
    sums = {k: by_op(prof[k]["nodes"], graphs[k]) for k in keys}
    kinds = sorted({op for s in sums.values() for op in s}, key=lambda op: -max(s.get(op, 0) for s in sums.values()))
    rows = [[op] + [sums[k].get(op, 0.0) for k in keys] for op in kinds]
    rows.append(["sum of kernels"] + [sum(sums[k].values()) for k in keys])
    rows.append(["model_run (profiled)"] + [prof[k]["run_us"] for k in keys])
    rows.append(["end to end, no profiler"] + [1e3 * e2e[k] for k in keys])
    if ("cpu",) + keys[0] in e2e:
        rows.append(["  its CPU time (thread_time)"] + [1e3 * e2e[("cpu",) + k] for k in keys])
    print(f"\n-- {threads} thread(s): kernel time by op, us per run (median per node, summed)")
    print(format_table(["op"] + [f"{t} {lvl}" for t, lvl in keys], rows))

    # layer level: each of our nodes against the ORT node it replaced, same profiles (ALL)
    orig_nodes, rew_nodes = prof[("original", "ALL")]["nodes"], prof[("rewritten", "ALL")]["nodes"]
    orig_g = graphs[("original", "ALL")]
    layer_rows, saved, orig_sum, ours_sum = [], 0.0, 0.0, 0.0
    for n in ours:
        twin = orig_g.counterpart(n)
        if twin is None or twin.name not in orig_nodes or n.name not in rew_nodes:
            layer_rows.append([n.name, n.op_type, None, rew_nodes.get(n.name, (None, None))[1], None])
            continue
        a, b = orig_nodes[twin.name][1], rew_nodes[n.name][1]
        saved += a - b
        orig_sum += a
        ours_sum += b
        layer_rows.append([n.name, n.op_type, a, b, a / b if b else None])
    layer_rows.append(["sum", "", orig_sum, ours_sum, orig_sum / ours_sum if ours_sum else None])
    print(f"\n-- {threads} thread(s): layer level, our node against the ORT node it replaced (ALL, us)")
    print(format_table(["our node", "op", "ORT node", "ours", "layer speedup"], layer_rows))

    t_orig, t_rew = prof[("original", "ALL")]["run_us"], prof[("rewritten", "ALL")]["run_us"]
    reorder = {k: sum(v for op, v in sums[k].items() if op.startswith("Reorder")) for k in keys}
    replaced = {n.name for n in ours}
    twins = {orig_g.counterpart(n).name for n in ours if orig_g.counterpart(n) is not None}
    rest_orig = sum(v for name, (_, v) in orig_nodes.items() if name not in twins) - reorder[("original", "ALL")]
    rest_rew = sum(v for name, (_, v) in rew_nodes.items() if name not in replaced) - reorder[("rewritten", "ALL")]
    e_orig, e_rew = e2e[("original", "ALL")], e2e[("rewritten", "ALL")]
    k_orig, k_rew = sum(sums[("original", "ALL")].values()), sum(sums[("rewritten", "ALL")].values())
    d_reorder = reorder[("rewritten", "ALL")] - reorder[("original", "ALL")]
    d_rest = rest_rew - rest_orig
    predicted = e_orig / (e_orig - 1e-3 * saved) if e_orig > 1e-3 * saved else float("inf")
    summary = {
        "threads": threads,
        "saved_in_our_nodes_us": saved,
        "layer_sum_speedup": orig_sum / ours_sum if ours_sum else None,
        "reorder_us_original": reorder[("original", "ALL")],
        "reorder_us_rewritten": reorder[("rewritten", "ALL")],
        "other_nodes_delta_us": d_rest,
        "kernel_sum_us_original": k_orig,
        "kernel_sum_us_rewritten": k_rew,
        "predicted_speedup_from_layers": predicted,
        "kernel_sum_speedup": k_orig / k_rew,
        "measured_speedup_end_to_end": e_orig / e_rew,
        "measured_speedup_cpu_time": (e2e[("cpu", "original", "ALL")] / e2e[("cpu", "rewritten", "ALL")]
                                      if threads == 1 else None),
        "measured_difference_end_to_end_us": 1e3 * (e_orig - e_rew),
        "executor_outside_kernels_us": [t_orig - k_orig, t_rew - k_rew],
        "ort_all_over_extended_original": e2e[("original", "EXTENDED")] / e_orig,
        "rewritten_all_vs_original_extended": e2e[("original", "EXTENDED")] / e_rew,
        "rewritten_extended_vs_original_extended": e2e[("original", "EXTENDED")] / e2e[("rewritten", "EXTENDED")],
    }
    print(f"\n-- {threads} thread(s): model level against the layer-level sum (ALL); "
          "time saved = ORT node - our node, us per run")
    print(format_table(["quantity", "value"], [
        ["time saved in our nodes (sum of the layer-level savings)", saved],
        ["  minus extra reorder time (rewritten - original)", -d_reorder],
        ["  minus extra time in the other nodes (Add / Relu ORT had fused, ...)", -d_rest],
        ["  = kernel time saved (sum of node medians, original - rewritten)", k_orig - k_rew],
        ["end-to-end time saved, no profiler", 1e3 * (e_orig - e_rew)],
        ["speedup of our nodes alone (sum ORT nodes / sum ours)", summary["layer_sum_speedup"]],
        ["model speedup the layer-level saving predicts (end-to-end original)", predicted],
        ["model speedup by kernel sums", k_orig / k_rew],
        ["model speedup measured end to end, no profiler", e_orig / e_rew],
        ["  the same by CPU time of the run (1 thread: preemption left out)",
         e2e[("cpu", "original", "ALL")] / e2e[("cpu", "rewritten", "ALL")] if threads == 1 else None],
        ["executor time outside kernels (profiled run - kernels), original / rewritten",
         f"{t_orig - k_orig:.0f} / {t_rew - k_rew:.0f}"],
        ["ORT fp32 ALL vs EXTENDED (what NCHWc is worth), original", e2e[("original", "EXTENDED")] / e_orig],
        ["rewritten at ALL vs original at EXTENDED", e2e[("original", "EXTENDED")] / e_rew],
        ["rewritten at EXTENDED vs original at EXTENDED", summary["rewritten_extended_vs_original_extended"]],
    ]))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "models" / "digits_cnn.onnx")
    parser.add_argument("--method", default="falcon", help="technique to apply (ignored with --rewritten)")
    parser.add_argument("--opt", type=parse_opt, action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the method, e.g. select=all, bases=3 (repeatable)")
    parser.add_argument("--rewritten", type=Path, help="an already rewritten model instead of --method")
    parser.add_argument("--calib", help="calibration data spec (default: mnist-train, or photos for 224x224 inputs)")
    parser.add_argument("--calib-count", type=int, default=64)
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--runs", type=int, default=50, help="runs per session (interleaved)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args()
    try:
        run(args)
    except OnnxCompressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def run(args) -> None:
    print(machine_summary())
    original = load_model(args.model)
    dims = original.graph.input[0].type.tensor_type.shape.dim
    spec = args.calib or ("photos" if dims and dims[-1].dim_value >= 64 else "mnist-train")
    feeds = calibration_feeds(original, spec, args.calib_count)
    rewritten = build_rewrite(original, args, feeds)
    models = {"original": prepare_for_runtime(original).SerializeToString(),
              "rewritten": prepare_for_runtime(rewritten).SerializeToString()}
    name = original.graph.input[0].name
    feed = {name: np.ascontiguousarray(feeds[0][name][:1])}
    print(f"\n== {args.model.name}: ORT's optimized graphs (batch 1)")
    results = {"model": str(args.model), "machine": machine_summary(), "rewrite": args.rewritten and str(args.rewritten)
               or {"method": args.method, **dict(args.opt)}, "threads": {}}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        graphs = {(tag, level): dump_graph(data, level, workdir, tag) for tag, data in models.items()
                  for level in LEVELS}
        graphs[("original", "ALL")].aliases = conv_tensors(onnx.ModelProto.FromString(models["original"]))
        ours = placement_tables(graphs)
        results["graphs"] = {f"{t}/{lvl}": dict(g.counts()) for (t, lvl), g in graphs.items()}
        for threads in args.threads:
            print(f"\n{load_note()} before timing at {threads} thread(s)")
            e2e = end_to_end(models, feed, threads, args.runs, args.warmup)
            prof = profile_sessions(models, feed, threads, args.runs, args.warmup, workdir)
            results["threads"][threads] = timing_tables(prof, e2e, graphs, ours, threads)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
