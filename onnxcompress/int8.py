"""INT8 as one more per-layer choice: static quantization (QDQ, per-channel
weights, activation ranges calibrated on the given calibration inputs) of
chosen Conv nodes, with ONNX Runtime's own quantization tool
(onnxruntime.quantization: quant_pre_process, its calibrators, quantize_static
with nodes_to_quantize / nodes_to_exclude / op_types_to_quantize), so that
one model can hold INT8 Convs, our ops (domain ai.onnxcompress) and fp32 Convs.

Order: rewrite with onnxcompress first, quantize after. The other order does
not work: our rewriting passes need a Conv's weight as a constant, and after
QDQ quantization it is the output of a DequantizeLinear; and the planner's
techniques fit to the fp32 model's activations.

ORT's quantizer copes with our nodes once two of its steps run in sessions
that know our ops: it opens plain onnxruntime sessions (without our custom-op
library) for quant_pre_process's graph optimisation and for calibration,
and a model holding ai.onnxcompress nodes fails to load in them. So here
- pre-processing runs quant_pre_process's ORT_ENABLE_BASIC optimisation in a
  session with our library registered (exactly its settings), then
  quant_pre_process itself with skip_optimization for the shape inference
  (onnx's, which knows our ops once onnxcompress.schemas are registered);
- calibration uses ORT's calibrator classes (MinMax / Entropy / Percentile /
  Distribution, the same ones quantize_static builds) with only their
  session creation replaced by one that registers our library; the ranges
  they compute go to quantize_static through its calibration cache
  (calibration_cache_path), so quantize_static quantizes with them and runs
  no calibration session of its own.
Models without our nodes take the same path (the sessions are then plain ORT
sessions plus an unused library).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx

from . import DOMAIN, schemas
from ._runtime import session_options
from .errors import OnnxCompressError
from .fitting.int8_rounding import QMAX, QMAX_REDUCED

log = logging.getLogger("onnxcompress")

CALIBRATION_METHODS = ("minmax", "entropy", "percentile", "distribution")
ACTIVATIONS = ("Relu", "Clip")
# Not quantized as `other_ops`: layers are chosen one by one (Conv); normalisations (folded by
# canonicalisation where they can be); ops on indices or control, where INT8 saves nothing.
_NOT_OTHER_OPS = ("Conv", "ConvTranspose", "BatchNormalization", "InstanceNormalization", "LayerNormalization",
                  "EmbedLayerNormalization", "ArgMax", "TopK", "Gather", "GatherElements", "CumSum", "Where")


def quantizable_op_types() -> list[str]:
    """The op types ORT's static quantizer quantizes by default (its QDQ and QLinear registries)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QDQRegistry) | set(QLinearOpsRegistry))


def _calibration_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    table = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile, "distribution": CalibrationMethod.Distribution}
    key = str(name).lower()
    if key not in table:
        raise OnnxCompressError(f"unknown calibration method '{name}'; choose one of {', '.join(CALIBRATION_METHODS)}")
    return table[key]


def conv_names(model: onnx.ModelProto) -> list[str]:
    """Names of the standard ONNX Conv nodes of `model` (our ops are not among them)."""
    return [n.name for n in model.graph.node if n.op_type == "Conv" and n.domain in ("", "ai.onnx")]


def int8_convs(model: onnx.ModelProto) -> list[str]:
    """Conv nodes that run in INT8 in a QDQ model: their input and weight both come from DequantizeLinear."""
    producer = {o: n for n in model.graph.node for o in n.output}

    def dequantized(tensor: str) -> bool:
        p = producer.get(tensor)
        return p is not None and p.op_type == "DequantizeLinear"

    return [n.name for n in model.graph.node
            if n.op_type == "Conv" and n.domain in ("", "ai.onnx") and len(n.input) > 1
            and dequantized(n.input[0]) and dequantized(n.input[1])]


def _check_names(model: onnx.ModelProto, names: Iterable[str], what: str) -> list[str]:
    names = list(names)
    convs = set(conv_names(model))
    ours = {n.name: n.op_type for n in model.graph.node if n.domain == DOMAIN}
    for name in names:
        if not isinstance(name, str):
            raise OnnxCompressError(f"{what}: node names must be strings, got {name!r}")
        if name in ours:
            raise OnnxCompressError(f"{what}: '{name}' is an onnxcompress {ours[name]}, not a Conv; "
                                    "INT8 applies to the Convs left to ONNX Runtime")
        if name not in convs:
            shown = ", ".join(sorted(convs)[:8]) + (" ..." if len(convs) > 8 else "")
            raise OnnxCompressError(f"{what}: the model has no Conv node named '{name}' (its Conv nodes: "
                                    f"{shown or 'none'})")
    return names


def _following_activation(model: onnx.ModelProto, conv: str) -> str | None:
    """The Relu / Clip that is the only consumer of node `conv`'s output, if any: quantized with it,
    ORT's QDQ quantizer folds it into the Conv's output range instead of running it in fp32."""
    node = next(n for n in model.graph.node if n.name == conv)
    consumers = [n for n in model.graph.node if node.output[0] in n.input]
    outputs = {o.name for o in model.graph.output}
    if len(consumers) == 1 and consumers[0].op_type in ACTIVATIONS and node.output[0] not in outputs:
        return consumers[0].name or None
    return None


def at_least_opset_13(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` converted to ONNX opset 13 if it is older: per-channel QDQ needs the `axis` of
    QuantizeLinear / DequantizeLinear (opset 13), and ORT's quantizer writes it whatever the
    model's opset (an opset-11 model then fails to load)."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset >= 13:
        return model
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, 13)
    except Exception as exc:  # the converter raises several kinds
        raise OnnxCompressError(f"quantize: INT8 with per-channel weights needs opset 13; converting the model "
                                f"from opset {opset} failed: {exc}") from None
    # the converter's adapters add nodes without names (PP-OCR cls: 3); ORT's quantizer selects nodes by
    # name, so they are named, the names already there kept
    from .passes.name_nodes import name_nodes

    return name_nodes(converted)[0]


def _pre_process(model: onnx.ModelProto, workdir: Path) -> onnx.ModelProto:
    """quant_pre_process with its ORT optimisation step run in a session that knows our ops."""
    import onnxruntime as ort
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .model_io import prepare_for_runtime

    src, optimized, out = workdir / "input.onnx", workdir / "basic.onnx", workdir / "pre.onnx"
    onnx.save(prepare_for_runtime(onnx.ModelProto.FromString(model.SerializeToString())), str(src))
    opts = session_options()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(optimized)
    try:
        ort.InferenceSession(str(src), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise OnnxCompressError(f"quantize: ONNX Runtime cannot load the model: {exc}") from None
    quant_pre_process(str(optimized), str(out), skip_optimization=True, skip_symbolic_shape=True)
    return onnx.load(str(out))


# The pre-processed model and its activation ranges, by (model, feeds, calibration settings): the
# ranges of a static QDQ quantization are those of the fp32 model's tensors, whichever subset of
# Convs is quantized, so the planner's give-back trials (one subset each) calibrate once, not once
# per trial (MobileNetV2: 52 trials). Calibration covers every Conv and activation of the model.
_PREPARED: OrderedDict = OrderedDict()
_PREPARED_ENTRIES = 2


def _fingerprint(model: onnx.ModelProto, feeds, method, extra: dict) -> str:
    h = hashlib.sha1(model.SerializeToString())
    h.update(repr((str(method), sorted((k, repr(v)) for k, v in extra.items()))).encode())
    for f in feeds:
        for k in sorted(f):
            a = np.ascontiguousarray(f[k])
            h.update(f"{k}{a.dtype}{a.shape}".encode())
            h.update(a.data)
    return h.hexdigest()


def _calibrate(model_path: Path, op_types: list[str], feeds: list[dict[str, np.ndarray]], method, workdir: Path,
               extra: dict):
    """ORT's calibrator for `method`, its session opened with our library; returns its TensorsData."""
    import onnxruntime as ort
    from onnxruntime.quantization import calibrate as cal

    classes = {cal.CalibrationMethod.MinMax: cal.MinMaxCalibrater, cal.CalibrationMethod.Entropy: cal.EntropyCalibrater,
               cal.CalibrationMethod.Percentile: cal.PercentileCalibrater,
               cal.CalibrationMethod.Distribution: cal.DistributionCalibrater}

    class WithOurOps(classes[method]):
        def create_inference_session(self):
            opts = session_options()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            self.infer_session = ort.InferenceSession(self.augmented_model_path, sess_options=opts,
                                                      providers=self.execution_providers)

    kwargs = {}
    if method == cal.CalibrationMethod.MinMax:
        kwargs.update(symmetric=extra.get("symmetric", False), moving_average=extra.get("moving_average", False),
                      averaging_constant=extra.get("averaging_constant", 0.01), per_channel=False)
    elif method == cal.CalibrationMethod.Entropy:
        kwargs.update(symmetric=extra.get("symmetric", False), num_bins=extra.get("num_bins", 128),
                      num_quantized_bins=extra.get("num_quantized_bins", 128))
    elif method == cal.CalibrationMethod.Percentile:
        kwargs.update(symmetric=extra.get("symmetric", True), num_bins=extra.get("num_bins", 2048),
                      percentile=extra.get("percentile", 99.999))
    else:
        kwargs.update(num_bins=extra.get("num_bins", 2048), scenario=extra.get("scenario", "same"))
    calibrator = WithOurOps(str(model_path), op_types, str(workdir / "augmented.onnx"), **kwargs)
    calibrator.augment_graph()
    calibrator.create_inference_session()
    calibrator.collect_data(_Reader(feeds))
    return calibrator.compute_data()


class _Reader:
    """A CalibrationDataReader over a list of feeds (defined lazily so that importing this module
    does not import onnxruntime.quantization)."""

    def __new__(cls, feeds):
        from onnxruntime.quantization import CalibrationDataReader

        class Reader(CalibrationDataReader):
            def __init__(self, items):
                self.items = list(items)
                self.position = 0

            def get_next(self):
                if self.position >= len(self.items):
                    return None
                self.position += 1
                return self.items[self.position - 1]

            def __len__(self):
                return len(self.items)

            def set_range(self, start_index, end_index):
                self.items = self.items[start_index:end_index]
                self.position = 0

        return Reader(feeds)


def _probe_model(channels: int, maps: int, kernel: int, side: int, y_scale: float, group: int = 1) -> onnx.ModelProto:
    """One QLinearConv: u8 input (scale 1, zero point 0), s8 weights all 127 (scale 1), u8 output
    (scale `y_scale`), no padding, `group` groups."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.array(1.0, np.float32), "xs"),
             numpy_helper.from_array(np.array(0, np.uint8), "xz"),
             numpy_helper.from_array(np.full((maps, channels // group, kernel, kernel), 127, np.int8), "w"),
             numpy_helper.from_array(np.ones(maps, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(maps, np.int8), "wz"),
             numpy_helper.from_array(np.array(y_scale, np.float32), "ys"),
             numpy_helper.from_array(np.array(0, np.uint8), "yz")]
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"], name="probe",
                            group=group)
    graph = helper.make_graph([node], "u8s8_probe",
                              [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, channels, side, side])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@functools.lru_cache(maxsize=1)
def u8s8_saturates() -> bool:
    """Whether ONNX Runtime's u8 x s8 convolution on this CPU saturates: measured, not guessed from
    the CPU's flags. Without VNNI, ORT's x86 kernels add adjacent u8 x s8 products in int16
    (`vpmaddubsw`), and 255 * 127 twice is past 32,767; ORT's quantization guide names 7-bit
    weights (`reduce_range`) as the remedy. A QLinearConv of 255s and 127s, whose exact result
    fits the output, is run in a plain ORT session (its default optimisations, which re-lay it out
    as the models' Convs are) at a stem's shape and at a 16-channel one; True where either result
    is not the exact one."""
    return _probe_saturates(((1, 16, 3, 5, 1), (16, 16, 3, 5, 1)))


@functools.lru_cache(maxsize=1)
def depthwise_u8s8_saturates() -> bool:
    """u8s8_saturates() for a depthwise QLinearConv (one input channel per group, channel
    multiplier 1), which ORT runs with a kernel of its own: on an AVX2 CPU without VNNI that one
    widens to int32 before adding, so its weights can keep 8 bits where the others need 7."""
    return _probe_saturates(((16, 16, 3, 5, 16), (32, 32, 3, 9, 32)))


def _probe_saturates(shapes) -> bool:
    """Whether any probe QLinearConv (channels, maps, kernel, side, group) of `shapes` gives other
    than the exact result."""
    import onnxruntime as ort

    for channels, maps, kernel, side, group in shapes:
        exact = channels // group * kernel * kernel * 255 * 127
        y_scale = exact / 200.0  # the exact result quantizes to 200
        probe = _probe_model(channels, maps, kernel, side, y_scale, group)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        try:
            sess = ort.InferenceSession(probe.SerializeToString(), sess_options=opts,
                                        providers=["CPUExecutionProvider"])
            y = sess.run(None, {"x": np.full((1, channels, side, side), 255, np.uint8)})[0]
        except Exception as exc:  # an ORT without a u8 x s8 QLinearConv: nothing to protect against
            log.info("int8: the u8 x s8 saturation probe could not run (%s)", exc)
            return False
        if np.any(np.abs(y.astype(np.int32) - 200) > 1):
            return True
    return False


def quantize_convs(model: onnx.ModelProto, calib_feeds: list[dict[str, np.ndarray]],
                   nodes: Iterable[str] | None = None, *, exclude: Iterable[str] = (),
                   calibrate_method: str = "minmax", per_channel: bool = True,
                   fold_activations: bool = True, extra_options: dict | None = None,
                   fuse_basis: bool = True, other_ops: bool = False,
                   refine_weights: bool = False, bias_correction: bool = False,
                   reduce_range: bool | None = None) -> onnx.ModelProto:
    """Static INT8 quantization (QDQ) of the chosen Conv nodes of `model`, others left alone.

    nodes: names of the Conv nodes to quantize (None: every standard Conv of the model);
    exclude: Conv names to leave in fp32 (applied after `nodes`). Our ai.onnxcompress nodes
    are never quantized, and naming one, or a name that is no Conv, is an error.
    calib_feeds: calibration inputs (a list of {input name: array}), the same the rewrite used.
    calibrate_method: 'minmax' (default), 'entropy', 'percentile' or 'distribution' (ORT's).
    per_channel: per-output-channel weight scales (s8 weights, u8 activations).
    fold_activations: also hand ORT's quantizer the Relu / Clip right after each chosen Conv,
    which it folds into the Conv's output quantization (ORT then runs Conv+Relu as one
    QLinearConv) instead of running them in fp32 between a DequantizeLinear and a QuantizeLinear.
    extra_options: passed to quantize_static (and the calibrator's settings read from it).
    fuse_basis: the basis stage of each penni portable layer quantized here (d depthwise
    QLinearConvs and their Concat) becomes one QLinearBasisMaps of ours
    (passes/fuse_quantized_basis.py).
    other_ops: also quantize every other node of a type ORT's quantizer handles by default (Add,
    pools, Gemm, Concat, Reshape, ...; not normalisations nor ops on indices), as quantize_static
    with its default op types does; the Convs not chosen, the Relu / Clip right after them and
    our nodes stay as they are. ORT then runs Add as QLinearAdd and so on, between INT8 Convs,
    instead of converting to fp32 and back around each.
    refine_weights: the s8 weights of each quantized Conv rounded to minimise the error of its
    output on the calibration inputs instead of to nearest, and its int32 bias moved by the mean
    shift the rounding leaves (fitting/int8_rounding.py); ORT's scales are kept.
    bias_correction: ORT's rounding kept, and the int32 bias of each quantized Conv moved by the
    mean shift that rounding leaves, (W - Wq) E[x] per output channel, E[x] the mean of the Conv's
    unfolded input over the calibration inputs in the fp32 model (implied by refine_weights). A
    Conv without a bias (none after BatchNormalization folding) keeps none.
    reduce_range: s8 weights in [-64, 64] (quantize_static's `reduce_range`), so that no pair of
    u8 x s8 products passes an int16; None (default): where ORT's u8 x s8 convolution on this CPU
    saturates (`u8s8_saturates()`, measured once per process), and then not for depthwise Convs
    (channel multiplier 1) where ORT's depthwise kernel does not (`depthwise_u8s8_saturates()`):
    those get 8-bit weights (quantized again from the fp32 weights, bias on the new scale).

    Returns the quantized model; `int8_convs(result)` lists the Convs that run in INT8.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    from .model_io import prepare_for_runtime

    schemas.register_schemas()
    if not calib_feeds:
        raise OnnxCompressError("quantize: INT8 needs calibration inputs for the activation ranges")
    method = _calibration_method(calibrate_method)
    chosen = _check_names(model, conv_names(model) if nodes is None else nodes, "quantize")
    excluded = set(_check_names(model, exclude, "quantize: exclude"))
    chosen = [n for n in dict.fromkeys(chosen) if n not in excluded]
    if not chosen:
        return onnx.ModelProto.FromString(model.SerializeToString())
    if len({n.name for n in model.graph.node}) != len(model.graph.node):
        raise OnnxCompressError("quantize: node names must be unique (ORT's quantizer selects nodes by name)")
    extra = dict(extra_options or {})
    auto_range = reduce_range is None
    if auto_range:
        reduce_range = u8s8_saturates()
    model = at_least_opset_13(model)
    with tempfile.TemporaryDirectory(prefix="onnxcompress-int8-") as tmp:
        workdir = Path(tmp)
        key = _fingerprint(model, calib_feeds, method, extra)
        pre_path, cache = workdir / "pre.onnx", workdir / "ranges.json"
        if key in _PREPARED:
            _PREPARED.move_to_end(key)
            pre_bytes, ranges_json, means = _PREPARED[key]
            pre = onnx.ModelProto.FromString(pre_bytes)
            pre_path.write_bytes(pre_bytes)
            cache.write_text(ranges_json)
        else:
            pre = _pre_process(model, workdir)
            onnx.save(pre, str(pre_path))
            # every kind `other_ops` may quantize: the ranges serve either selection
            handled = set(quantizable_op_types())
            kinds = sorted({n.op_type for n in pre.graph.node if n.op_type in handled} | {"Conv"})
            save_tensors_data(_calibrate(pre_path, kinds, calib_feeds, method, workdir, extra), cache)
            means = {}
            _PREPARED[key] = (pre_path.read_bytes(), cache.read_text(), means)
            while len(_PREPARED) > _PREPARED_ENTRIES:
                _PREPARED.popitem(last=False)
        missing = [n for n in chosen if n not in set(conv_names(pre))]
        if missing:
            raise OnnxCompressError(f"quantize: ONNX Runtime's pre-processing removed or renamed Conv(s) {missing}")
        selected = list(chosen)
        op_types = ["Conv"]
        if fold_activations:
            acts = [a for a in (_following_activation(pre, c) for c in chosen) if a]
            selected += acts
            op_types += sorted({n.op_type for n in pre.graph.node if n.name in acts})
        ours = [n.name for n in pre.graph.node if n.domain == DOMAIN]
        if other_ops:
            # not taken: our nodes, the Convs not chosen and the Relu / Clip after them (they are not
            # in `selected`, which is what quantize_static quantizes)
            picked = set(chosen)
            left = [n for n in conv_names(pre) if n not in picked]
            kept_as_is = set(ours) | set(left) | {a for a in (_following_activation(pre, c) for c in left) if a}
            handled = set(quantizable_op_types()) - set(_NOT_OTHER_OPS)
            others = [n for n in pre.graph.node if n.domain in ("", "ai.onnx") and n.name not in kept_as_is
                      and n.op_type in handled]
            selected = list(dict.fromkeys(selected + [n.name for n in others]))
            op_types = sorted(set(op_types) | {n.op_type for n in others})
        out = workdir / "int8.onnx"
        try:
            quantize_static(str(pre_path), str(out), None, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=op_types, per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_quantize=selected, nodes_to_exclude=ours, calibrate_method=method,
                            reduce_range=bool(reduce_range), extra_options=extra,
                            calibration_cache_path=str(cache))
        except (ValueError, RuntimeError, KeyError) as exc:
            raise OnnxCompressError(f"quantize: ONNX Runtime's quantizer failed: {exc}") from None
        result = onnx.load(str(out))
        # 7-bit weights only where ORT's kernel saturates: its depthwise one may not
        wide = (_depthwise_convs(pre, chosen) if auto_range and reduce_range and not depthwise_u8s8_saturates()
                else set())
        if wide:
            result = _widen_weights(result, pre, wide)
        if refine_weights or bias_correction:
            result = _refine_weights(result, pre, calib_feeds, chosen, rounding=refine_weights,
                                     qmax=QMAX_REDUCED if reduce_range else QMAX, means=means, wide=wide)
    result = prepare_for_runtime(result)
    if fuse_basis:
        from .passes.fuse_quantized_basis import fuse_quantized_basis

        result, _ = fuse_quantized_basis(result)
    return result


class _QdqGraph:
    """Where a QDQ model keeps each Conv's quantized weight and bias: initializers by name, the
    producer of each tensor, how many nodes read each tensor."""

    def __init__(self, q: onnx.ModelProto):
        self.inits = {t.name: t for t in q.graph.initializer}
        self.producer = {o: n for n in q.graph.node for o in n.output}
        self.uses: dict[str, int] = {}
        for n in q.graph.node:
            for t in n.input:
                self.uses[t] = self.uses.get(t, 0) + 1

    def dq_parts(self, tensor: str):
        """(values, scale, zero point or None) initializer names of the DequantizeLinear making
        `tensor`, or None."""
        dq = self.producer.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear" or not all(i in self.inits for i in dq.input[:2]):
            return None
        return dq.input[0], dq.input[1], dq.input[2] if len(dq.input) > 2 and dq.input[2] else None


def _depthwise_convs(pre: onnx.ModelProto, names: list[str]) -> set[str]:
    """The Convs of `names` with one input channel per group and channel multiplier 1 (W [C, 1, kH, kW],
    group C), which ORT runs with its depthwise u8 kernel."""
    shapes = {t.name: tuple(t.dims) for t in pre.graph.initializer}
    picked, out = set(names), set()
    for n in pre.graph.node:
        if n.op_type != "Conv" or n.name not in picked or len(n.input) < 2:
            continue
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        w = shapes.get(n.input[1])
        if w is not None and len(w) == 4 and w[1] == 1 and group == w[0] > 1:
            out.add(n.name)
    return out


def _widen_weights(q: onnx.ModelProto, pre: onnx.ModelProto, names: set[str]) -> onnx.ModelProto:
    """`q` with the weights of the Convs `names`, quantized by quantize_static in 7 bits
    (`reduce_range`), rounded again in 8 ([-127, 127], per output channel, scale max |w| / 127 as
    ORT's symmetric quantizer sets it) from `pre`'s fp32 weights, and their int32 bias put on the new
    scale. A weight shared by two nodes, or not in the per-channel symmetric layout, is left."""
    from onnx import numpy_helper

    from .fitting.int8_rounding import round_to_nearest

    g = _QdqGraph(q)
    pre_nodes = {n.name: n for n in pre.graph.node}
    pre_inits = {t.name: t for t in pre.graph.initializer}
    for node in q.graph.node:
        src = pre_nodes.get(node.name)
        if node.name not in names or node.op_type != "Conv" or src is None or src.input[1] not in pre_inits:
            continue
        w_parts = g.dq_parts(node.input[1])
        if w_parts is None or g.uses.get(w_parts[0], 0) != 1:
            continue
        weight = numpy_helper.to_array(pre_inits[src.input[1]]).astype(np.float64)
        old_scale = numpy_helper.to_array(g.inits[w_parts[1]]).astype(np.float64).reshape(-1)
        zero = numpy_helper.to_array(g.inits[w_parts[2]]) if w_parts[2] else np.zeros(1)
        m = weight.shape[0]
        if weight.ndim != 4 or old_scale.size != m or np.any(zero != 0):
            continue
        peak = np.abs(weight.reshape(m, -1)).max(axis=1)
        scale = np.where(peak > 0, peak / QMAX, old_scale)
        ints = round_to_nearest(weight.reshape(m, -1), scale, QMAX).reshape(weight.shape)
        g.inits[w_parts[0]].CopyFrom(numpy_helper.from_array(ints, w_parts[0]))
        scale_t = numpy_helper.to_array(g.inits[w_parts[1]])
        g.inits[w_parts[1]].CopyFrom(numpy_helper.from_array(scale.astype(scale_t.dtype).reshape(scale_t.shape),
                                                             w_parts[1]))
        b_parts = g.dq_parts(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if b_parts is None:
            continue
        b_scale_t = numpy_helper.to_array(g.inits[b_parts[1]])
        b_scale = b_scale_t.astype(np.float64).reshape(-1)
        if b_scale.size != m or g.uses.get(b_parts[0], 0) != 1:
            continue
        bias = (numpy_helper.to_array(pre_inits[src.input[2]]).astype(np.float64) if len(src.input) > 2
                and src.input[2] in pre_inits else numpy_helper.to_array(g.inits[b_parts[0]]) * b_scale)
        new_b_scale = b_scale * scale / old_scale
        b_int = np.clip(np.rint(bias / new_b_scale), -2 ** 31, 2 ** 31 - 1).astype(np.int32)
        g.inits[b_parts[0]].CopyFrom(numpy_helper.from_array(b_int, b_parts[0]))
        g.inits[b_parts[1]].CopyFrom(numpy_helper.from_array(new_b_scale.astype(b_scale_t.dtype).reshape(
            b_scale_t.shape), b_parts[1]))
    return q


def _refine_weights(q: onnx.ModelProto, pre: onnx.ModelProto, feeds, chosen: list[str],
                    row_budget: int = 2048, seed: int = 0, rounding: bool = True,
                    bias_shift: bool = True, qmax: int = QMAX, means: dict | None = None,
                    wide: frozenset | set = frozenset()) -> onnx.ModelProto:
    """`q` (quantize_static's QDQ model of `pre`) with the s8 weights and int32 biases of the
    chosen INT8 Convs refitted to the layer's output on `feeds` (inputs from the fp32 model `pre`).
    `rounding` / `bias_shift` switch off either part (the ablation in docs/results.md): without
    `rounding` ORT's integers stay and only the bias moves, by the exact mean of each Conv's
    unfolded input (`means`: a cache of those, by Conv name, for `pre` and `feeds`); `qmax` bounds
    the integers, QMAX for the Convs in `wide` (8-bit weights where the rest have 7)."""
    from onnx import numpy_helper

    from .calibration.capture import LayerCapture
    from .calibration.im2col import conv_attrs
    from .calibration.moments import ConvMoments, UnfoldedMean
    from .fitting.int8_rounding import mean_corrected_bias, round_to_output

    qdq = _QdqGraph(q)
    inits, dq_parts, uses = qdq.inits, qdq.dq_parts, qdq.uses
    pre_nodes = {n.name: n for n in pre.graph.node}
    pre_inits = {t.name: t for t in pre.graph.initializer}
    picked = set(chosen)
    sites = []
    for node in q.graph.node:
        if node.name not in picked or node.op_type != "Conv" or node.name not in pre_nodes:
            continue
        src = pre_nodes[node.name]
        w_parts = dq_parts(node.input[1])
        if w_parts is None or src.input[1] not in pre_inits or uses.get(w_parts[0], 0) != 1:
            continue  # (a weight shared by two layers is left as ORT rounded it)
        weight = numpy_helper.to_array(pre_inits[src.input[1]]).astype(np.float32)
        ints = numpy_helper.to_array(inits[w_parts[0]])
        scale = numpy_helper.to_array(inits[w_parts[1]]).astype(np.float64).reshape(-1)
        zero = numpy_helper.to_array(inits[w_parts[2]]) if w_parts[2] else np.zeros(1)
        if ints.shape != weight.shape or weight.ndim != 4 or scale.size != weight.shape[0] or np.any(zero != 0):
            continue  # not the per-channel symmetric 2-D layout this refit is for
        b_parts = dq_parts(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        bias = (numpy_helper.to_array(pre_inits[src.input[2]]).astype(np.float64)
                if b_parts is not None and len(src.input) > 2 and src.input[2] in pre_inits else None)
        if rounding:
            stats = ConvMoments(weight.shape, conv_attrs(src), with_targets=False, row_budget=row_budget, seed=seed)
        elif b_parts is None or bias is None or not bias_shift:
            continue  # ORT's integers, and no bias to move
        elif means is not None and node.name in means:
            stats = means[node.name]
        else:
            stats = UnfoldedMean(weight.shape, conv_attrs(src))
        sites.append((node, src.input[0], weight, scale, ints, w_parts, bias, b_parts, stats))
    if not sites:
        return q
    pending = [s for s in sites if not isinstance(s[-1], list)]
    if pending:
        for values in LayerCapture(pre).stream(feeds, sorted({s[1] for s in pending})):
            for _, x_name, *_, stats in pending:
                stats.update(values[x_name])
    for node, _, weight, scale, ints_ort, w_parts, bias, b_parts, stats in sites:
        m = weight.shape[0]
        flat = weight.reshape(m, -1)
        if isinstance(stats, ConvMoments):
            groups = [(acc.H, acc.mean_x) for acc in stats.groups]
        else:
            if isinstance(stats, UnfoldedMean):
                stats = stats.means
                if means is not None:
                    means[node.name] = stats
            groups = [(None, mean) for mean in stats]
        per = m // len(groups)
        ints = ints_ort.reshape(m, -1).copy()
        new_bias = np.zeros(m, np.float32)
        for g, (H, mean_x) in enumerate(groups):
            rows = slice(g * per, (g + 1) * per)
            if rounding:
                ints[rows] = round_to_output(flat[rows], scale[rows], H, qmax=QMAX if node.name in wide else qmax)
            new_bias[rows] = mean_corrected_bias(None if bias is None else bias[rows], flat[rows],
                                                 ints[rows].astype(np.float64) * scale[rows, None], mean_x)
        if rounding:
            inits[w_parts[0]].CopyFrom(numpy_helper.from_array(ints.reshape(weight.shape), w_parts[0]))
        if b_parts is not None and bias is not None and bias_shift:
            b_scale = numpy_helper.to_array(inits[b_parts[1]]).astype(np.float64).reshape(-1)
            if b_scale.size == m and np.all(b_scale > 0):
                b_int = np.clip(np.rint(new_bias / b_scale), -2 ** 31, 2 ** 31 - 1).astype(np.int32)
                inits[b_parts[0]].CopyFrom(numpy_helper.from_array(b_int, b_parts[0]))
    return q
