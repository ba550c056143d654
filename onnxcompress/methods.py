"""The methods `optimize` offers: every registered technique
(onnxcompress.techniques: falcon, cluspa, penni, tabconv, and any registered
later) and `auto`, the planner. A method is its name, its options (also the
command-line flags), whether it needs calibration data, and its rewriting
passes. Adding a technique = one module registering a Technique."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterator

from .errors import OnnxCompressError
from .plan.budget import (DEFAULT_CONFIDENCE, DEFAULT_CONFIRM_FRACTION, DEFAULT_EVAL_LIMIT, DEFAULT_VAL_FRACTION,
                          EVAL_INPUT_BYTES)
from .techniques import TECHNIQUES, Technique
from .techniques.base import (  # noqa: F401 - the options shared by several methods, importable from here
    CALIB_ROWS, COMMON_OPTIONS, CRITERION, DATA_FREE, MIN_COSINE, PORTABLE, SEED, THREADS, Option,
)

Method = Technique  # a method is anything with a technique's name, summary, options and passes


class _Auto(Technique):
    name = "auto"
    summary = ("plans every Conv across the techniques: the fastest model (measured) within a budget measured on "
               "validation inputs held out of the calibration data")
    options = (
        Option("max_drop", float, None, "auto: the budget as top-1 points lost on the labelled --eval data"),
        Option("min_agreement", float, None, "auto: the budget as top-1 agreement with the original on the "
               "validation inputs (default for score-vector outputs: 0.99)"),
        MIN_COSINE,
        Option("eval", str, None, "auto: labelled held-out data (.npz with labels, or a dataset name such as "
               "mnist-val) that the model was not trained on: --max-drop is measured on it, and an agreement or "
               "cosine budget must be shown on it too, as on the validation inputs; the plan is chosen on it, so "
               "report accuracy on other data"),
        Option("eval_limit", int, None, f"auto: evaluation samples (seeded, class-balanced sample) [default: as "
               f"many as the data holds up to {DEFAULT_EVAL_LIMIT}, fewer where their inputs would take over "
               f"{EVAL_INPUT_BYTES >> 30} GiB]"),
        Option("confirm_fraction", float, DEFAULT_CONFIRM_FRACTION, "auto with --max-drop: share of the --eval "
               "samples (seeded, class-balanced) held out of planning and looked at once, for the written model: "
               "the drop the report states is measured there; where it misses the budget, layers are given back "
               "until it holds, each a further look that the stated bound allows for; 0: judge and report the "
               "drop on the --eval samples planning chose on"),
        Option("grow", bool, False, "auto: where the sequentially fitted plan meets the budget with every layer, "
               "fit the layers it would take next into it one at a time, each kept while the budget holds (more "
               "layers, judged again on the same validation and --eval data: off by default, see "
               "docs/results.md)", is_flag=True),
        Option("path_refit", bool, False, "auto: where the sequential fit of the path step chosen on independent "
               "fits meets the budget with every layer, bisect the later steps again, each fitted sequentially "
               "(step 5a: more layers, judged again on the same validation and --eval data: off by default, see "
               "docs/results.md)", is_flag=True),
        Option("val_fraction", float, DEFAULT_VAL_FRACTION, "auto: share of the calibration inputs held out for "
               "validation (seeded by --calib-seed), or all but 256 when that is more; the rest is what the "
               "techniques fit to"),
        Option("confidence", float, DEFAULT_CONFIDENCE, "auto: the budget on the validation inputs must be shown "
               "at this one-sided confidence (agreement: Clopper-Pearson lower bound; cosine: Student-t lower bound "
               "of the mean), not merely met by the sample; 0 judges the sample's own values"),
        Option("candidates", str, None, "auto: comma-separated candidate kinds to weigh (default: every kind: "
               "falcon, cluspa, penni, tabconv per layer, and int8, ORT's static INT8 quantization of the Convs "
               "the plan leaves to ORT, tried after the per-layer plan and on the original alone)"),
        Option("timing_cache", str, None, "auto: the file caching in-model timings (default: "
               "~/.cache/onnxcompress/layer_timings.json; 'off' for none)"),
        THREADS,
        SEED,
    )
    needs_calibration = True

    def passes(self, opts: dict[str, Any]) -> list:
        raise OnnxCompressError("--method auto plans per layer (onnxcompress.plan), it has no fixed pipeline")


AUTO = _Auto()


class _Methods(Mapping):
    """name -> method: the registered techniques, as they are now, then auto."""

    def __getitem__(self, name: str) -> Technique:
        if name == AUTO.name:
            return AUTO
        return TECHNIQUES[name]

    def __iter__(self) -> Iterator[str]:
        yield from TECHNIQUES
        yield AUTO.name

    def __len__(self) -> int:
        return len(TECHNIQUES) + 1


METHODS: Mapping[str, Technique] = _Methods()


def all_options() -> dict[str, Option]:
    """Every option of every method, by name (a name shared by methods must agree)."""
    out = {o.name: o for o in COMMON_OPTIONS}
    for m in METHODS.values():
        for o in m.options:
            out.setdefault(o.name, o)
    return out


def resolve_options(method: str, given: dict[str, Any]) -> tuple[Technique, dict[str, Any]]:
    """The method and its complete options; an option of another method is an error.

    `given` maps option names to values, None meaning "not given".
    """
    if method not in METHODS:
        raise OnnxCompressError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
    m = METHODS[method]
    own = {o.name: o for o in tuple(m.options) + COMMON_OPTIONS}
    for name, value in given.items():
        if value is not None and value is not False and name not in own:
            raise OnnxCompressError(f"{'--' + name.replace('_', '-')} does not apply to --method {method}")
    opts = {name: (given[name] if given.get(name) is not None else o.default) for name, o in own.items()}
    return m, opts
