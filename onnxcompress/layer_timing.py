"""Timing one layer alone: a node (ORT's Conv or one of our ops) with its
initializers in a one-node model, run on a real captured input. Used to decide,
layer by layer, whether a rewrite pays on this machine, and by benchmarks."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import DOMAIN
from ._runtime import InferenceSession
from .model_io import prepare_for_runtime


def single_node_model(op: str, domain: str, inputs: dict[str, np.ndarray | None], attrs: dict,
                      x_shape: tuple[int, ...]) -> onnx.ModelProto:
    """A model computing `op` on input "X"; `inputs` maps the node's other input names
    (in order) to their initializer values (None: omitted optional input)."""
    names = ["X"] + [name if value is not None else "" for name, value in inputs.items()]
    while names and names[-1] == "":
        names.pop()
    node = helper.make_node(op, names, ["Y"], domain=domain, **attrs)
    graph = helper.make_graph(
        [node], "layer", [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inputs.items() if v is not None],
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(DOMAIN, 1)] if domain == DOMAIN else [])
    return prepare_for_runtime(helper.make_model(graph, opset_imports=opsets))


@dataclass
class LayerTiming:
    reference_ms: float
    candidate_ms: float
    runs: int = 0  # the interleaved pairs the medians are of

    @property
    def speedup(self) -> float:
        return self.reference_ms / self.candidate_ms


def time_pair(reference: onnx.ModelProto, candidate: onnx.ModelProto, x: np.ndarray, threads: int = 1,
              runs: int = 30, warmup: int = 5) -> LayerTiming:
    """Median latency of two one-layer models on the same input "X", runs interleaved."""
    return time_models(reference, candidate, {"X": x}, threads, runs, warmup)


# At most this many times `runs` where min_seconds asks for more (a bound on a tiny model).
MAX_RUNS_FACTOR = 40


def time_models(reference: onnx.ModelProto, candidate: onnx.ModelProto, feed: dict[str, np.ndarray],
                threads: int = 1, runs: int = 30, warmup: int = 5, min_seconds: float = 0.0) -> LayerTiming:
    """Median latency of two models on the same feed, runs interleaved: `runs` pairs, or more where
    they would take less than `min_seconds` (the warm-up's pace decides; at most MAX_RUNS_FACTOR x
    runs). On a sub-millisecond model 30 or 60 pairs are a few tens of milliseconds, over which a
    shared machine's load does not average out: the planner's and a benchmark's medians of the same
    two models differed by 5-10% at 2 threads on a 2-vCPU VM."""
    sessions = [InferenceSession(prepare_for_runtime(onnx.ModelProto.FromString(m.SerializeToString())),
                                 threads=threads, spinning=threads == 1) for m in (reference, candidate)]
    paced = max(warmup, 1) if min_seconds > 0 else warmup  # one pair to pace by, where there is no warm-up
    start = time.perf_counter()
    for _ in range(paced):
        for s in sessions:
            s.run(None, feed)
    if min_seconds > 0:
        pair = (time.perf_counter() - start) / paced
        if pair > 0:
            runs = max(runs, min(int(np.ceil(min_seconds / pair)), MAX_RUNS_FACTOR * runs))
    times: list[list[float]] = [[], []]
    for _ in range(runs):
        for i, s in enumerate(sessions):
            start = time.perf_counter()
            s.run(None, feed)
            times[i].append(time.perf_counter() - start)
    return LayerTiming(1e3 * float(np.median(times[0])), 1e3 * float(np.median(times[1])), runs)
