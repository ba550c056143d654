"""Running models side by side in ONNX Runtime (our library registered):
output agreement and interleaved latency."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnx

from ._runtime import InferenceSession
from .errors import OnnxCompressError


def open_session(model, threads: int | None = None, spinning: bool = True):
    try:
        return InferenceSession(model, threads=threads, spinning=spinning)
    except Exception as exc:
        name = model if isinstance(model, str) else "model"
        raise OnnxCompressError(f"{name}: ONNX Runtime cannot load it: {exc}") from None


def run_session(session, feed: dict[str, np.ndarray], outputs=None) -> list:
    """session.run, with ONNX Runtime's complaints about the inputs as our error."""
    try:
        return session.run(outputs, feed)
    except Exception as exc:
        shapes = {k: tuple(np.shape(v)) for k, v in feed.items()}
        raise OnnxCompressError(f"running the model on inputs {shapes} failed: {exc}") from None


@dataclass
class OutputAgreement:
    name: str
    max_abs_error: float
    mean_abs_error: float
    cosine: float
    top1_agreement: float | None  # for [N, classes] score outputs
    samples: int


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(a @ b / (na * nb))


_REGRESSION_WORDS = ("box", "bbox", "reg", "landmark", "offset", "coord", "delta", "kpt", "keypoint")


def looks_like_scores(name: str, a: np.ndarray) -> bool:
    """Whether an output is class scores, for which top-1 agreement means something: 2-D
    [N, C] float with C >= 2, and a name that does not suggest a regression (box, bbox, landmark,
    offset, coordinate, ...; those are 2-D [N, 4] or [N, 10] too)."""
    lowered = name.lower()
    return (a.ndim == 2 and a.shape[1] >= 2 and np.issubdtype(a.dtype, np.floating)
            and not any(w in lowered for w in _REGRESSION_WORDS))


def compare_models(model_a, model_b, feeds: list[dict[str, np.ndarray]], threads: int | None = None) -> list[OutputAgreement]:
    """Runs both models on every feed and compares each output by position."""
    sa, sb = open_session(model_a, threads), open_session(model_b, threads)
    outs_a = [o.name for o in sa.get_outputs()]
    outs_b = [o.name for o in sb.get_outputs()]
    if len(outs_a) != len(outs_b):
        raise OnnxCompressError(f"the models have {len(outs_a)} and {len(outs_b)} outputs; cannot compare")
    ya, yb = [[] for _ in outs_a], [[] for _ in outs_a]
    for feed in feeds:
        for i, (a, b) in enumerate(zip(run_session(sa, feed), run_session(sb, feed))):
            if np.shape(a) != np.shape(b):
                raise OnnxCompressError(f"output {outs_a[i]}: shapes differ, {np.shape(a)} vs {np.shape(b)}")
            ya[i].append(np.asarray(a))
            yb[i].append(np.asarray(b))
    results = []
    for i, name in enumerate(outs_a):
        a, b = np.concatenate(ya[i]), np.concatenate(yb[i])
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64)) if a.size else np.zeros(1)
        top1 = None
        if looks_like_scores(name, a):
            top1 = float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1)))
        samples = a.shape[0] if a.ndim >= 1 else len(feeds)
        results.append(OutputAgreement(name, float(diff.max()), float(diff.mean()), _cosine(a, b), top1, samples))
    return results


@dataclass
class Latency:
    model: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    ratio_to_first: float  # median of the first model / median of this one (>1: faster)


def bench_models(models: list[str], feed: dict[str, np.ndarray], threads: int | None, runs: int = 50,
                 warmup: int = 5, block: int = 1) -> list[Latency]:
    """Latency of each model on the same feed; the runs are interleaved (A B C A B C ...)
    so that machine noise hits every model alike. With several threads, idle pool
    threads do not spin: each session has its own pool, and a spinning one would
    steal the cores of the session that runs next.

    block: runs of one model back to back in each round (A A A B B B ...), the first
    of each block, which follows the other models' runs, not counted; `runs` are the
    counted runs per model. With block 1 every run follows the other models' runs, so
    a small model's weights and buffers are partly out of cache: what a model called
    between other work sees. A larger block measures a model called over and over
    (on ResNet-20 Fashion at 1 thread, ORT's INT8 took 0.42 ms interleaved run by
    run, 0.28 ms in blocks of 5, 0.27 ms alone; docs/results.md)."""
    if runs < 1 or warmup < 0 or block < 1:
        raise OnnxCompressError("runs and block must be >= 1 and warmup >= 0")
    sessions = [open_session(m, threads, spinning=threads == 1) for m in models]
    for _ in range(warmup):
        for s in sessions:
            run_session(s, feed)
    times = [[] for _ in sessions]
    counted = max(block - 1, 1)
    for _ in range(-(-runs // counted)):
        for i, s in enumerate(sessions):
            for k in range(block):
                start = time.perf_counter()
                s.run(None, feed)
                if block == 1 or k > 0:
                    times[i].append(time.perf_counter() - start)
    medians = [float(np.median(t)) for t in times]
    return [
        Latency(str(m), 1e3 * med, 1e3 * float(np.percentile(t, 10)), 1e3 * float(np.percentile(t, 90)), medians[0] / med)
        for m, med, t in zip(models, medians, times)
    ]


def tensor_zero_fractions(model: onnx.ModelProto, names: list[str], feeds: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Fraction of exact zeros in each named intermediate tensor over the feeds."""
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = open_session(probe)
    zeros = dict.fromkeys(names, 0)
    total = dict.fromkeys(names, 0)
    for feed in feeds:
        values = dict(zip([o.name for o in session.get_outputs()], run_session(session, feed)))
        for name in names:
            v = values[name]
            zeros[name] += int(np.count_nonzero(v == 0))
            total[name] += v.size
    return {n: zeros[n] / max(total[n], 1) for n in names}


@dataclass
class Accuracy:
    samples: int
    top1: float
    top5: float | None


def evaluate_accuracy(model, x: np.ndarray, y: np.ndarray, batch: int = 64, threads: int | None = None,
                      progress: bool = False) -> Accuracy:
    """Top-1 (and top-5 when there are more than 5 classes) of `model`'s first output on labelled data."""
    if len(x) != len(y) or len(x) == 0:
        raise OnnxCompressError(f"need as many labels as inputs, got {len(x)} inputs and {len(y)} labels")
    session = open_session(model, threads)
    name = session.get_inputs()[0].name
    correct1 = correct5 = 0
    steps = range(0, len(x), batch)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="eval", unit="batch", leave=False)
    classes = None
    for start in steps:
        scores = run_session(session, {name: x[start:start + batch]})[0]
        scores = scores.reshape(len(scores), -1)
        classes = scores.shape[1]
        labels = y[start:start + batch]
        order = np.argsort(-scores, axis=1)
        correct1 += int(np.sum(order[:, 0] == labels))
        correct5 += int(np.sum(np.any(order[:, :5] == labels[:, None], axis=1)))
    return Accuracy(len(x), correct1 / len(x), correct5 / len(x) if classes and classes > 5 else None)


@dataclass
class LayerAgreement:
    layer: str
    op_a: str
    op_b: str
    tensor: str
    cosine: float | None
    max_abs_error: float | None
    note: str = ""


def _fused_tail(node, fused_node) -> tuple[str | None, list[str]]:
    """The tensor of model A that `fused_node` (model B's node of the same name) outputs where it
    took in the ops after A's `node`: the residual Add (its input Z), then the Relu / Clip (its
    activation). (None, []) when B's node fused nothing or A's graph does not have those ops."""
    from .schemas import residual_index

    index = residual_index(fused_node.op) if fused_node.domain else None
    steps = []
    if index is not None and len(fused_node.inputs) > index and fused_node.inputs[index].name:
        steps.append(("Add",))
    if fused_node.attrs.get("activation"):
        steps.append(("Relu", "Clip"))
    tensor, fused = node.outputs[0], []
    for ops in steps:
        consumers = list(tensor.outputs)
        if len(consumers) != 1 or consumers[0].op not in ops:
            return None, []
        fused.append(consumers[0].op)
        tensor = consumers[0].outputs[0]
    return (tensor.name, fused) if fused else (None, [])


def compare_layers(model_a: onnx.ModelProto, model_b: onnx.ModelProto, feeds: list[dict[str, np.ndarray]],
                   threads: int | None = 1) -> list[LayerAgreement]:
    """Each Conv of `model_a` (and each op of ours) against the same layer of `model_b` on the same
    inputs: the cosine and the largest difference of its output over all feeds. Layers are matched
    by the output tensor's name; where `model_b` fused the following residual Add and / or Relu/Clip
    into its node (so the tensor is gone), by node name, comparing the last fused op's output in
    `model_a`. Both models
    are canonicalised first (BatchNorm folded), as rewritten models are."""
    from .calibration.capture import LayerCapture
    from .graph import to_graph
    from .passes import PassManager, canonicalize

    # both canonicalised (BatchNorm folded into the Conv, as a rewritten model has it)
    model_a = PassManager(canonicalize()).run(model_a)[0]
    model_b = PassManager(canonicalize()).run(model_b)[0]
    ga, gb = to_graph(model_a), to_graph(model_b)
    ga.toposort()
    tensors_b = {name for name, t in gb.tensors().items() if getattr(t, "inputs", None)}
    nodes_b = {n.name: n for n in gb.nodes if n.name}
    pairs, rows = [], []
    for node in ga.nodes:
        if not (node.op == "Conv" or (node.domain and "Conv" in node.op)):
            continue
        op_a = node.op if not node.domain else f"{node.domain}.{node.op}"
        t = node.outputs[0].name
        if t in tensors_b:
            producer = next(iter(gb.tensors()[t].inputs))
            op_b = producer.op if not producer.domain else f"{producer.domain}.{producer.op}"
            pairs.append((node.name, op_a, op_b, t, t, ""))
            continue
        nb = nodes_b.get(node.name)
        tail, fused = _fused_tail(node, nb) if nb is not None else (None, [])
        if tail is not None:
            pairs.append((node.name, op_a, f"{nb.domain}.{nb.op}", tail, nb.outputs[0].name,
                          f"after the {' and '.join(fused)} that B fused"))
        else:
            rows.append(LayerAgreement(node.name, op_a, "-", t, None, None, "no tensor or node of that name in B"))
    if not pairs:
        return rows
    cap_a, cap_b = LayerCapture(model_a, threads), LayerCapture(model_b, threads)
    names_a = [p[3] for p in pairs]
    names_b = [p[4] for p in pairs]
    dot = np.zeros(len(pairs))
    na = np.zeros(len(pairs))
    nb_ = np.zeros(len(pairs))
    worst = np.zeros(len(pairs))
    shapes: dict[int, str] = {}
    for feed in feeds:
        va, vb = cap_a.run(feed, names_a), cap_b.run(feed, names_b)
        for i, (ta, tb) in enumerate(zip(names_a, names_b)):
            a, b = va[ta].astype(np.float64).ravel(), vb[tb].astype(np.float64).ravel()
            if va[ta].shape != vb[tb].shape:
                dot[i] = np.nan
                shapes[i] = (f"shapes differ: {list(va[ta].shape)} in A, {list(vb[tb].shape)} in B (B may have "
                             "removed channels nobody reads)")
                continue
            dot[i] += a @ b
            na[i] += a @ a
            nb_[i] += b @ b
            worst[i] = max(worst[i], float(np.max(np.abs(a - b))) if a.size else 0.0)
    out = []
    for i, (layer, op_a, op_b, ta, tb, note) in enumerate(pairs):
        if np.isnan(dot[i]):
            out.append(LayerAgreement(layer, op_a, op_b, ta, None, None, shapes.get(i, "shapes differ")))
            continue
        den = np.sqrt(na[i] * nb_[i])
        cos = 1.0 if den == 0 and na[i] == nb_[i] else float(dot[i] / den) if den > 0 else 0.0
        out.append(LayerAgreement(layer, op_a, op_b, ta, cos, float(worst[i]), note))
    order = {n.name: i for i, n in enumerate(ga.nodes)}
    return sorted(out + rows, key=lambda r: order.get(r.layer, 0))
