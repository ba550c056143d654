"""The technique protocol: what the optimizer, the analysis, the command line
and the planner need to know of a compression technique, in one class.

A technique is a `Technique` subclass instance registered with
`onnxcompress.techniques.register`. Modelled on a rewrite rule (a check that
says why it does not apply, then a rewrite) driven by a pass:

- what it is: `name`, `summary`, `options` (its command-line flags), whether
  it `needs_calibration`, and the ops it owns (`ops`: each op's onnx schema,
  the one place the op's signature is written, and how to read the dense
  layer's shape back from a node of it);
- per layer: `applies_to(layer, graph, opts)` -> None, or the reason it does
  not; `fit_layer(layer, batches, opts)` -> the fitted parameters (plain
  numpy, by the functions of onnxcompress.fitting), `batches` being the
  layer's captured (input, target output) pairs or None when it fits without
  data; `build(layer, fitted, graph, opts)` -> the nodes replacing the layer
  (their constants as gs.Constant inputs; one named like the layer, which is
  found by name; together they take over the layer's outputs); `details(layer, fitted, opts)` ->
  what the report says of the layer; `count(details, macs)` -> the work left
  (MACs, additions, lookups, comparisons, bytes);
- the passes it runs (`passes(opts)`; default: one `TechniqueRewrite`, which
  drives the per-layer protocol through the shared sequential fit,
  onnxcompress.calibration.sequential);
- for the planner: a `ladder` of settings, their `label`, `quick` options
  for a cheap fit with the same run-time structure, `exact`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np


@dataclass(frozen=True)
class Option:
    """One option of a technique; `name` is the keyword (flag: --name with - for _)."""

    name: str
    type: Any
    default: Any
    help: str
    choices: tuple | None = None
    is_flag: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class OpSpec:
    """An op of our domain that a technique owns.

    schema: () -> onnx.defs.OpSchema (registered with onnx so that the checker and shape
    inference accept the op). dense_shape: (node) -> [M, C/group, kH, kW] of the Conv a
    gs.Node of this op computes or approximates, or None when it cannot be read."""

    name: str
    schema: Callable[[], Any]
    dense_shape: Callable[[Any], list | None]


@dataclass
class Layer:
    """One Conv node a technique is asked about: its node (graphsurgeon), constant weight
    [M, C/group, kH, kW] and bias, and its place among the layers of the pass (seeds)."""

    node: Any
    weight: np.ndarray
    bias: np.ndarray | None
    index: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # what a technique keeps between its steps

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def attrs(self) -> dict:
        return dict(self.node.attrs)

    @property
    def group(self) -> int:
        return int(self.node.attrs.get("group", 1))


@dataclass(frozen=True)
class Work:
    """The work and storage a rewritten layer costs (at batch 1; None: not counted)."""

    macs: int | None = None
    additions: int | None = None
    lookups: int | None = None
    comparisons: int | None = None
    bytes: int | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if v is not None and k != "note"}
        out.setdefault("macs", None)
        if self.note:
            out["note"] = self.note
        return out


class Technique:
    """Base class; see the module docstring. Subclasses set the class attributes and
    implement the per-layer methods their passes (or the default TechniqueRewrite) use."""

    name: str = ""
    summary: str = ""
    options: tuple[Option, ...] = ()
    needs_calibration: bool = False
    ops: tuple[OpSpec, ...] = ()
    # the planner's candidate kind (no ladder: not a candidate of --method auto)
    ladder: tuple[dict[str, Any], ...] = ()
    quick: dict[str, Any] | None = None
    exact: bool = False
    plan_summary: str = ""

    # ------------------------------------------------------------ pipeline
    def passes(self, opts: dict[str, Any]) -> list:
        """The rewriting passes run between canonicalisation and activation fusion."""
        from ..passes.technique_rewrite import TechniqueRewrite

        return [TechniqueRewrite(self, opts)]

    # ------------------------------------------------------------ per layer
    def applies_to(self, layer: Layer, graph, opts: dict[str, Any]) -> str | None:
        """None when the technique may rewrite `layer`, else the reason it may not."""
        return None

    def fit_layer(self, layer: Layer, batches: Iterable[tuple[np.ndarray, np.ndarray]] | None,
                  opts: dict[str, Any]) -> Any:
        """The fitted parameters of `layer`. batches: per calibration batch, (the layer's input
        [N, C, H, W] in the model as compressed so far, its target output [N, M, OH, OW]), or
        None without calibration data."""
        raise NotImplementedError(f"technique {self.name} does not fit single layers")

    def build(self, layer: Layer, fitted: Any, graph, opts: dict[str, Any]) -> list:
        """The gs.Nodes replacing `layer`: one of them named like it (layers are found by name), and
        together they take over its outputs (passes.conv_rewrite.make_custom_conv does both)."""
        raise NotImplementedError(f"technique {self.name} does not build single layers")

    def details(self, layer: Layer, fitted: Any, opts: dict[str, Any]) -> dict[str, Any]:
        """What the report says of a rewritten layer (its LayerRecord details)."""
        return {}

    def count(self, details: dict[str, Any], macs: int) -> Work:
        """The work left in a layer rewritten by this technique, from its report details and the
        dense layer's MACs (batch 1)."""
        return Work(macs=None)

    # ------------------------------------------------------------ planner
    def label(self, opts: dict[str, Any]) -> str:
        shown = " ".join(f"{k}={v}" for k, v in sorted(opts.items()))
        return f"{self.name} {shown}".strip()

    def __repr__(self) -> str:
        return f"<technique {self.name}>"


# ------------------------------------------------------------ options several techniques share
CRITERION = Option("criterion", str, None, "cluspa/penni: which weights or coefficients to prune: second-order "
                   "(default with calibration) or magnitude", choices=("second-order", "magnitude"))
PORTABLE = Option("portable", bool, False, "cluspa/penni: write standard ONNX Conv nodes instead of our op (runs "
                  "without our library)", is_flag=True)
DATA_FREE = Option("data_free", bool, False, "cluspa/penni: ignore calibration data for fitting", is_flag=True)
CALIB_ROWS = Option("calib_rows", int, 50000, "calibration rows (output positions) per layer at most")
SEED = Option("seed", int, 0, "seed of the calibration subsampling (results are deterministic per seed)")
# Shared by tabconv (its priority masking) and auto (the budget): one flag, one meaning.
MIN_COSINE = Option("min_cosine", float, None, "auto: the budget as the model output's mean cosine to the "
                    "original on the validation inputs (default for outputs that are not score vectors: 0.99); "
                    "tabconv: keep the most harmful layers exact until the output cosine on the calibration data "
                    "reaches this")
THREADS = Option("threads", int, 1, "falcon/auto: intra-op threads used when timing layers and models")
# Every technique accepts these.
COMMON_OPTIONS = (
    Option("allow_dynamic_weights", bool, False, "leave Conv nodes with run-time weights alone instead of failing",
           is_flag=True),
    Option("layers", str, None, "comma-separated names of the Conv nodes the method may rewrite (default: every "
           "Conv; names as `onnxcompress inspect` shows them)"),
)
