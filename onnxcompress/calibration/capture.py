"""Capturing intermediate tensors of a model on calibration inputs, batch by batch.

`LayerCapture(model).stream(feeds, names)` runs each feed (a dict input name ->
array) through ONNX Runtime, our custom-op library registered, and yields one
dict name -> array per feed. The model it runs is a probe: a copy whose graph
outputs are exactly the requested tensors, with the nodes they do not depend on
removed, so a capture early in the network does not pay for the rest of it.
Only one feed's tensors are alive at a time; callers that reduce them (moments)
never hold more than a batch.

Sequential capture for layer-by-layer refits: `conv_io_batches(original, conv,
feeds, current=rewritten)` yields, per feed, the Conv's input X as computed by
the model already rewritten up to that layer (errors of earlier layers
included) and its target output Y from the original model. Nodes are found by
name, which rewriting passes keep, so tensor names may differ between the two.
The original should be the canonical model (BatchNorm folded) so that the
Conv's output is the layer the refit replaces.
"""

from __future__ import annotations

from collections import OrderedDict

import os
from typing import Iterable, Iterator, Mapping

import numpy as np
import onnx

from .._runtime import InferenceSession
from ..errors import OnnxCompressError
from ..graph import to_graph, to_model
from ..model_io import prepare_for_runtime

__all__ = ["LayerCapture", "conv_names", "conv_io_batches"]

Feed = Mapping[str, np.ndarray]


def _as_model(model) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        return onnx.ModelProto.FromString(bytes(model))
    if isinstance(model, (str, os.PathLike)):
        return onnx.load(str(model))
    raise TypeError(f"expected an onnx.ModelProto, bytes or a path, got {type(model).__name__}")


def conv_names(model) -> list[str]:
    """Names of the (standard-domain) Conv nodes in topological order."""
    graph = to_graph(_as_model(model))
    graph.toposort()
    return [n.name for n in graph.nodes if n.op == "Conv" and not n.domain]


class LayerCapture:
    """Runs a model (ours or plain ONNX) and returns named intermediate tensors.

    model: onnx.ModelProto, serialized bytes or a path. threads: ORT intra-op threads.
    Probe sessions are cached per set of requested names, the most recent
    `max_sessions` of them: a layer loop needs one or two at a time, and every
    cached ONNX Runtime session keeps its memory arena.
    """

    max_sessions = 2

    def __init__(self, model, threads: int | None = 1):
        self.model = _as_model(model)
        self.threads = threads
        self._graph = to_graph(self.model)
        self._inputs = {t.name for t in self._graph.inputs}
        self._sessions: OrderedDict[tuple[str, ...], object] = OrderedDict()

    def node_io(self, node_name: str) -> tuple[str, str]:
        """(first input, first output) tensor names of the node called node_name."""
        found = [node for node in self._graph.nodes if node.name == node_name] if node_name else []
        if len(found) > 1:  # finding "the" node by name would pick one of them at random
            raise OnnxCompressError(f"{len(found)} nodes are named '{node_name}'; layers are found by name, "
                                    f"give the nodes unique names first (passes.NameNodes)")
        if not found:
            raise OnnxCompressError(f"no node named '{node_name}' in the model")
        return found[0].inputs[0].name, found[0].outputs[0].name

    def probe(self, names: Iterable[str]) -> onnx.ModelProto:
        """A copy of the model whose outputs are the named (non-input) tensors, dead nodes removed."""
        graph = to_graph(self.model)
        tensors = graph.tensors()
        wanted = [n for n in dict.fromkeys(names) if n not in self._inputs]
        missing = [n for n in wanted if n not in tensors]
        if missing:
            raise OnnxCompressError(f"no tensor named {missing} in the model")
        constants = [n for n in wanted if not hasattr(tensors[n], "inputs") or not tensors[n].inputs]
        if constants:
            raise OnnxCompressError(f"{constants} are not computed by a node; nothing to capture")
        graph.outputs = [tensors[n] for n in wanted]
        graph.cleanup(remove_unused_graph_inputs=False)
        probe = to_model(graph, self.model)
        # Leave the outputs' type to ONNX Runtime: graphsurgeon may not know it.
        del probe.graph.output[:]
        probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in wanted)
        return prepare_for_runtime(probe)

    def _session(self, wanted: tuple[str, ...]):
        if wanted in self._sessions:
            self._sessions.move_to_end(wanted)
        else:
            while len(self._sessions) >= self.max_sessions:
                self._sessions.popitem(last=False)
            try:
                self._sessions[wanted] = InferenceSession(self.probe(wanted), threads=self.threads)
            except OnnxCompressError:
                raise
            except Exception as exc:
                raise OnnxCompressError(f"ONNX Runtime cannot run the capture model: {exc}") from None
        return self._sessions[wanted]

    def run(self, feed: Feed, names: Iterable[str]) -> dict[str, np.ndarray]:
        """The named tensors for one feed."""
        names = list(dict.fromkeys(names))
        wanted = tuple(n for n in names if n not in self._inputs)
        values: dict[str, np.ndarray] = {}
        if wanted:
            values.update(zip(wanted, self._session(wanted).run(list(wanted), dict(feed))))
        for n in names:
            if n in self._inputs:
                if n not in feed:
                    raise OnnxCompressError(f"the feed has no value for the input '{n}'")
                values[n] = np.asarray(feed[n])
        return {n: values[n] for n in names}

    def stream(self, feeds: Iterable[Feed], names: Iterable[str]) -> Iterator[dict[str, np.ndarray]]:
        """Yields, for each feed in turn, a dict name -> captured tensor."""
        names = list(dict.fromkeys(names))
        for feed in feeds:
            yield self.run(feed, names)

    def conv_batches(self, conv: str, feeds: Iterable[Feed]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yields (input, output) of the node called `conv` for each feed."""
        x_name, y_name = self.node_io(conv)
        for values in self.stream(feeds, [x_name, y_name]):
            yield values[x_name], values[y_name]


def conv_io_batches(original, conv: str, feeds: Iterable[Feed], current=None,
                    threads: int | None = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields (X, Y) per feed for the node called `conv`: Y is its output in `original`;
    X is its input in `current` (sequential mode: the model rewritten up to that
    layer, our ops included) or in `original` when current is None.

    original / current: models (ModelProto, bytes, path) or LayerCapture objects,
    which keep their probe sessions between calls.
    """
    orig = original if isinstance(original, LayerCapture) else LayerCapture(original, threads)
    if current is None:
        yield from orig.conv_batches(conv, feeds)
        return
    cur = current if isinstance(current, LayerCapture) else LayerCapture(current, threads)
    x_name, _ = cur.node_io(conv)
    _, y_name = orig.node_io(conv)
    for feed in feeds:
        y = orig.run(feed, [y_name])[y_name]
        x = cur.run(feed, [x_name])[x_name]
        yield x, y
