"""The techniques `optimize` offers: each is a name, its options (also the
command-line flags), and the rewriting passes it runs between canonicalisation
and activation fusion. Adding a technique = one pass file + one entry here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import OnnxCompressError
from .fitting.penni import DEFAULT_BASES, DEFAULT_COEF_SPARSITY
from .passes import FalconRewrite, Pass


@dataclass(frozen=True)
class Option:
    """One option of a method; `name` is the keyword (flag: --name with - for _)."""

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
class Method:
    name: str
    summary: str
    rewrite: Callable[[dict[str, Any]], list[Pass]]  # options (defaults filled in) -> passes
    options: tuple[Option, ...] = ()
    needs_calibration: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _falcon(opts: dict[str, Any]) -> list[Pass]:
    return [FalconRewrite(threshold=opts["threshold"], dense_below_zero_fraction=opts["dense_below_zero_fraction"],
                          allow_dynamic_weights=opts["allow_dynamic_weights"], select=opts["select"],
                          min_speedup=opts["min_speedup"], threads=opts["threads"])]


def _cluspa(opts: dict[str, Any]) -> list[Pass]:
    from .passes.cluspa import ClusteredSparseRewrite

    return [ClusteredSparseRewrite(
        clusters=opts["clusters"], sparsity=opts["sparsity"], weight_threshold=opts["weight_threshold"],
        per_channel=opts["per_channel"], criterion=opts["criterion"], allocation=opts["allocation"],
        portable=opts["portable"], data_free=opts["data_free"], calib_rows=opts["calib_rows"], seed=opts["seed"],
        allow_dynamic_weights=opts["allow_dynamic_weights"])]


def _penni(opts: dict[str, Any]) -> list[Pass]:
    from .passes.penni import PenniRewrite
    from .passes.remove_dead_channels import RemoveDeadChannels

    return [PenniRewrite(
        bases=opts["bases"], energy=opts["energy"], coef_sparsity=opts["coef_sparsity"],
        mac_reduction=opts["mac_reduction"], criterion=opts["criterion"],
        basis_iterations=opts["basis_iterations"], portable=opts["portable"], data_free=opts["data_free"],
        calib_rows=opts["calib_rows"], seed=opts["seed"], allow_dynamic_weights=opts["allow_dynamic_weights"])
    ] + ([] if opts["portable"] else [RemoveDeadChannels()])


# Options several methods share, defined once.
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


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method(
            "falcon", "activation-sparse convolution (exact): skips zero activations at run time",
            _falcon,
            options=(
                Option("threshold", float, 0.0, "falcon: treat |x| < threshold as zero (approximate when > 0)"),
                Option("dense_below_zero_fraction", float, None,
                       "falcon: zero fraction below which the kernel takes its dense path (default: kernel's)"),
                Option("select", str, "measured",
                       "falcon: 'measured' keeps a rewrite only where it times faster than ORT's Conv on a real "
                       "calibration input; 'all' rewrites every ReLU-fed Conv", choices=("measured", "all")),
                Option("min_speedup", float, 1.05, "falcon: with --select measured, the speedup a layer must show"),
                THREADS,
            ),
        ),
        Method(
            "cluspa", "clustered-sparse convolution (approximate): K shared weight values, one of them zero",
            _cluspa,
            options=(
                Option("clusters", int, 16, "cluspa: K, shared values per layer including the zero cluster (2-64)"),
                Option("sparsity", float, None, "cluspa: target fraction of Conv weights pruned, allocated across "
                       "layers (default: the GMM's zero component decides)"),
                Option("weight_threshold", float, None, "cluspa: prune weights with |w| below this (instead of "
                       "--sparsity)"),
                Option("per_channel", bool, False, "cluspa: one set of shared values per output channel",
                       is_flag=True),
                CRITERION,
                Option("allocation", str, "global", "cluspa: sparsity per layer: global (allocated by measured "
                       "sensitivity) or uniform", choices=("global", "uniform")),
                PORTABLE,
                DATA_FREE,
                CALIB_ROWS,
                SEED,
            ),
        ),
        Method(
            "penni", "basis-kernel convolution (approximate): d basis kernels per layer, sparse coefficients",
            _penni,
            options=(
                Option("bases", int, None,
                       f"penni: d, basis kernels per layer (default {DEFAULT_BASES} unless --energy)"),
                Option("energy", float, None, "penni: choose d per layer as the fewest bases retaining this "
                       "fraction of the kernels' energy (0-1]"),
                Option("coef_sparsity", float, None, "penni: fraction of the basis coefficients pruned per layer "
                       f"(default {DEFAULT_COEF_SPARSITY} unless --mac-reduction)"),
                Option("mac_reduction", float, None, "penni: fraction of the model's Conv MACs to remove; d (up to "
                       "--bases) and the coefficient sparsity are chosen per layer from estimated output errors "
                       "(calibration moments when --calib is given)"),
                CRITERION,
                Option("basis_iterations", int, 0, "penni: with calibration, rounds of least-squares refit of "
                       "the bases alternating with the coefficients"),
                PORTABLE,
                DATA_FREE,
                CALIB_ROWS,
                SEED,
            ),
        ),
    ]
}

def _tabconv(opts: dict[str, Any]) -> list[Pass]:
    from .passes.tabconv import TabConvRewrite

    return [TabConvRewrite(
        codebooks=opts["codebooks"], subspace=opts["subspace"], prototypes=opts["prototypes"],
        encoder=opts["encoder"], table_bits=opts["table_bits"], keep_exact=opts["keep_exact"],
        min_cosine=opts["min_cosine"], ridge=opts["ridge"], calib_rows=opts["calib_rows"], seed=opts["seed"],
        allow_dynamic_weights=opts["allow_dynamic_weights"], classifier=opts["classifier"],
        mask_unit=opts["mask_unit"])]


METHODS["tabconv"] = Method(
    "tabconv", "lookup-table convolution (approximate): product-quantised im2col rows, sums of table entries",
    _tabconv,
    options=(
        Option("codebooks", int, None, "tabconv: codebooks C per layer (default: from --subspace)"),
        Option("subspace", int, 9, "tabconv: im2col columns per codebook when --codebooks is not given"),
        Option("prototypes", int, 16, "tabconv: prototypes K per codebook (tree encoder: 16)"),
        Option("encoder", str, "tree", "tabconv: tree (MADDNESS hash tree, 4 comparisons per codebook) or "
               "exhaustive (nearest of K k-means prototypes)", choices=("tree", "exhaustive")),
        Option("table_bits", int, 8, "tabconv: 8 (uint8 tables, one scale per layer) or 32 (fp32 tables)"),
        Option("keep_exact", float, None, "tabconv: fraction of the candidate layers kept exact, the most harmful "
               "first (priority masking)"),
        MIN_COSINE,
        Option("mask_unit", str, "layer", "tabconv: what priority masking measures and keeps exact: single layers "
               "or whole residual blocks (the Conv layers between an Add and the point its two inputs branch from)",
               choices=("layer", "block")),
        Option("classifier", bool, False, "tabconv: approximate the final classifier (the Gemm or MatMul with a "
               "constant 2-D weight computing the output) as a 1x1 LutConv too", is_flag=True),
        Option("ridge", float, None, "tabconv: fixed relative ridge of the table least-squares fit (default: "
               "chosen per layer from 1e-4..1 on 20% of the calibration inputs held out)"),
        CALIB_ROWS,
        SEED,
    ),
    needs_calibration=True,
)

def _auto(opts: dict[str, Any]) -> list[Pass]:
    raise OnnxCompressError("--method auto plans per layer (onnxcompress.plan), it has no fixed pipeline")


METHODS["auto"] = Method(
    "auto", "plans every Conv across the techniques: the fastest model (measured) within a budget measured on "
            "validation inputs held out of the calibration data",
    _auto,
    options=(
        Option("max_drop", float, None, "auto: the budget as top-1 points lost on the labelled --eval data"),
        Option("min_agreement", float, None, "auto: the budget as top-1 agreement with the original on the "
               "validation inputs (default for score-vector outputs: 0.99)"),
        MIN_COSINE,
        Option("eval", str, None, "auto: labelled evaluation data (.npz with labels, or a dataset name such as "
               "mnist-test): its top-1 is reported, and --max-drop is measured on it"),
        Option("eval_limit", int, 1000, "auto: evaluation samples (seeded, class-balanced sample)"),
        Option("val_fraction", float, 0.25, "auto: share of the calibration inputs held out for validation "
               "(seeded by --calib-seed); the rest is what the techniques fit to"),
        Option("candidates", str, None, "auto: comma-separated candidate kinds to weigh (default: every kind: "
               "falcon, cluspa, penni, tabconv per layer, and int8, ORT's static INT8 quantization of the Convs "
               "the plan leaves to ORT, tried after the per-layer plan and on the original alone)"),
        Option("timing_cache", str, None, "auto: the file caching in-model timings (default: "
               "~/.cache/onnxcompress/layer_timings.json; 'off' for none)"),
        THREADS,
        SEED,
    ),
    needs_calibration=True,
)

# Options every method accepts.
COMMON_OPTIONS = (
    Option("allow_dynamic_weights", bool, False, "leave Conv nodes with run-time weights alone instead of failing",
           is_flag=True),
    Option("layers", str, None, "comma-separated names of the Conv nodes the method may rewrite (default: every "
           "Conv; names as `onnxcompress inspect` shows them)"),
)


def all_options() -> dict[str, Option]:
    """Every option of every method, by name (a name shared by methods must agree)."""
    out = {o.name: o for o in COMMON_OPTIONS}
    for m in METHODS.values():
        for o in m.options:
            out.setdefault(o.name, o)
    return out


def resolve_options(method: str, given: dict[str, Any]) -> tuple[Method, dict[str, Any]]:
    """The method and its complete options; an option of another method is an error.

    `given` maps option names to values, None meaning "not given".
    """
    if method not in METHODS:
        raise OnnxCompressError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
    m = METHODS[method]
    own = {o.name: o for o in m.options + COMMON_OPTIONS}
    for name, value in given.items():
        if value is not None and value is not False and name not in own:
            raise OnnxCompressError(f"{'--' + name.replace('_', '-')} does not apply to --method {method}")
    opts = {name: (given[name] if given.get(name) is not None else o.default) for name, o in own.items()}
    return m, opts
