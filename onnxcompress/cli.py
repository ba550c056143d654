"""The onnxcompress command line: optimize, inspect, compare, bench."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

import click

from .errors import OnnxCompressError
from .methods import METHODS
from .table import format_table


def _fail(message: str, code: int = 2):
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class _Group(click.Group):
    """Turns our errors into one clear line and a non-zero exit."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except OnnxCompressError as exc:
            _fail(str(exc))
        except MemoryError:
            _fail("out of memory", 1)


@click.group(cls=_Group)
@click.option("-v", "--verbose", is_flag=True, help="Log every pass.")
@click.version_option(package_name="onnxcompress")
def main(verbose: bool):
    """Rewrite the Conv layers of a trained ONNX CNN into cheaper custom operators."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")


def _load(path: str):
    from .model_io import load_model

    return load_model(path)


from .inputs import DATASETS, AUTO_CALIB_LIMIT, DEFAULT_CALIB_LIMIT, dataset_arrays as _dataset  # noqa: E402


def _feeds(model, data: str | None, random: int | None, seed: int, limit: int | None = None,
           dataset: str | None = None, batch: int = 1):
    from .inputs import graph_inputs, npz_feeds, random_feeds

    if sum(bool(v) for v in (data, random, dataset)) > 1:
        raise OnnxCompressError("give one of --data, --dataset and --random")
    from .inputs import fit_to_model_batch

    if limit is not None and limit < 1:
        raise OnnxCompressError(f"--limit must be >= 1, got {limit}")
    if batch < 1:
        raise OnnxCompressError(f"--batch must be >= 1, got {batch}")
    if dataset:
        x, _ = _dataset(dataset, limit, seed, model)
        inputs = graph_inputs(model)
        if len(inputs) != 1 or not _fits(x.shape, inputs[0][1]):
            raise OnnxCompressError(f"--dataset {dataset} gives inputs of shape {list(x.shape[1:])}; the model's "
                                    f"inputs are {[d for _, d, _ in inputs]}: give --data with an .npz")
        name = inputs[0][0]
        return fit_to_model_batch(model, [{name: x[i:i + batch]} for i in range(0, len(x), batch)])
    if data:
        return npz_feeds(model, data, limit=limit, batch=batch, seed=seed)
    if random is not None and random < 1:
        raise OnnxCompressError(f"--random needs a count >= 1, got {random}")
    return random_feeds(model, 8 if random is None else random, seed=seed)


def _fits(shape, dims) -> bool:
    return len(shape) == len(dims) and all(d is None or d == s for d, s in zip(dims[1:], shape[1:]))


def _floats(text: str | None, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise OnnxCompressError(f"{what} takes comma-separated numbers (e.g. 0.5,0.5,0.5), got '{text}'") from None


class _MethodChoice(click.Choice):
    """--method: the methods registered when the command runs (a technique registered after this
    module was imported is a choice too)."""

    def __init__(self):
        super().__init__([])

    @property
    def choices(self):
        return sorted(METHODS)

    @choices.setter
    def choices(self, _value):  # click.Choice.__init__ assigns; the registry is the source
        pass


def _method_options(command):
    """Adds every technique's options (onnxcompress.methods) to `command`."""
    from .methods import all_options

    for o in reversed(list(all_options().values())):
        if o.is_flag:
            command = click.option(o.flag, o.name, is_flag=True, default=None, help=o.help)(command)
        else:
            kind = click.Choice(o.choices) if o.choices else o.type
            # one default, stated once: the value when there is one, else the help text says what happens
            shown = f" [default: {o.default}]" if o.default is not None else ""
            command = click.option(o.flag, o.name, type=kind, default=None, help=o.help + shown)(command)
    return command


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the rewritten model.")
@click.option("--method", type=_MethodChoice(),
              default="auto", show_default=True,
              help="The technique (see README). auto (needs --calib) plans every Conv across the techniques: the "
                   "fastest model, as measured, within a budget measured on calibration inputs held out of the "
                   "fit: by default top-1 agreement >= 0.99 with the original for score outputs, output cosine "
                   ">= 0.99 for others, shown at 95% confidence (--max-drop, --min-agreement, --min-cosine, "
                   "--confidence).")
@click.option("--calib", help="Calibration inputs: an .npz, a folder of images, a dataset name "
              f"({', '.join(DATASETS)}) or 'photos'. A seeded, shuffled sample is taken, "
              "class-balanced where labels exist.")
@click.option("--calib-limit", type=int, default=None,
              help=f"Calibration samples to take (fewer if the source holds fewer) [default: {DEFAULT_CALIB_LIMIT}; "
                   f"with --method auto {AUTO_CALIB_LIMIT}: at most 256 are fitted to, the rest validate the budget]")
@click.option("--calib-seed", type=int, default=0, show_default=True, help="Seed of the calibration sample.")
@click.option("--mean", help="With --calib photos or an image folder: per-channel R,G,B mean subtracted after "
              "scaling to [0, 1] (default ImageNet's 0.485,0.456,0.406).")
@click.option("--std", help="With --calib photos or an image folder: per-channel R,G,B std divided by "
              "(default ImageNet's 0.229,0.224,0.225).")
@click.option("--verify", is_flag=True, help="Check the model with onnx.checker and ONNX Runtime after every pass.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the report as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="--method auto: also fit every single setting on every layer and write its validation "
                   "metric against its speedup, and the plan's, as a PNG (needs matplotlib; costs one more fit "
                   "per setting).")
@_method_options
def optimize(model, output, method, calib, calib_limit, calib_seed, mean, std, verify, report_path, plot_path,
             **options):
    """Rewrite MODEL's Conv nodes and write the result to OUTPUT.

    \b
    Which method when:
      auto     (the default, needs --calib) plans every Conv across the others:
               the fastest model, as measured, within the budget
      falcon   exact; for Conv layers fed by ReLU with many zero activations
               (measured per layer; leaves the model alone where it does not pay)
      cluspa   approximate; fewer distinct weights, many of them zero: smaller
               models, modest speedups; works data-free, better with --calib
      penni    approximate; 3x3+ Conv layers with many channels (MACs cut by
               --bases/--coef-sparsity or --mac-reduction); data-free or --calib
      tabconv  approximate; lookup tables instead of MACs, needs --calib; use
               --min-cosine/--keep-exact to hold accuracy
    Check the result with `onnxcompress compare` (and `eval` on labelled data).
    """
    from .inputs import calibration_sample
    from .model_io import has_external_data, save_model
    from .optimizer import CalibrationWarning, optimize as run_optimize

    if Path(output).resolve() == Path(model).resolve():
        raise OnnxCompressError(f"output {output} is the input model; choose another output path")
    proto = _load(model)
    if (mean or std) and not (calib == "photos" or (calib and Path(calib).is_dir())):
        raise OnnxCompressError("--mean/--std apply to --calib photos or an image folder only")
    feeds = None
    if calib:
        if calib_limit is None:
            calib_limit = AUTO_CALIB_LIMIT if method == "auto" else DEFAULT_CALIB_LIMIT
        feeds, what = calibration_sample(proto, calib, calib_limit, mean=_floats(mean, "--mean"),
                                         std=_floats(std, "--std"), seed=calib_seed)
        click.echo(f"calibration: {what}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)  # printed from the report below
        progress = (lambda line: click.echo(line, err=True)) if method == "auto" else None
        out, report = run_optimize(proto, method, verify=verify, calib_feeds=feeds, progress=progress,
                                   settings=bool(plot_path), **options)
    for w in report.warnings:
        click.echo(f"warning: {w}", err=True)
    save_model(out, output, input_path=model, external_data=True if has_external_data(model) else None)
    if report.plan is not None:
        from .plan.report import plot_plan, print_plan

        print_plan(report, click.echo)
        if plot_path:
            written = plot_plan(report.plan, plot_path)
            click.echo(f"wrote {plot_path}" if written else f"note: {plot_path} not written ({written.reason})")
    else:
        _print_report(report)
    if report_path:
        Path(report_path).write_text(json.dumps(report.as_dict(), indent=2))
    click.echo(f"wrote {output}")


def _print_report(report):
    headers = ["layer", "status", "op", "kernel", "stride", "group", "in", "out", "MACs", "zeros", "note"]
    rows = []
    for r in report.layers:
        note = r.get("reason") or "; ".join(
            part for part in (f"input from {r['input_from']}" if r.get("input_from") else "",
                              f"measured {r['measured_speedup']:.2f}x" if r.get("measured_speedup") else "") if part)
        rows.append([r["name"], r["status"], r["op"], r.get("kernel"), r.get("stride"), r.get("group"),
                     r.get("in_channels"), r.get("out_channels"), r.get("macs"),
                     r.get("input_zero_fraction"), note])
    click.echo(format_table(headers, rows))
    t = report.totals
    macs = f"{t['conv_macs']:,}"
    if t.get("conv_macs_unknown"):
        macs = (f"unknown for {t['conv_macs_unknown']} layer(s) (symbolic shapes; `inspect --input-shape` counts "
                f"them)" + (f", {macs} for the rest" if t["conv_macs"] else ""))
    click.echo(f"{t['rewritten']} of {t['conv_layers']} Conv rewritten ({t['skipped']} left alone); "
               f"Conv MACs at batch 1: {macs}; initializer bytes {t['initializer_bytes_before']:,} -> "
               f"{t['initializer_bytes_after']:,}")
    if t.get("other_rewritten"):
        click.echo(f"also rewritten: {t['other_rewritten']} non-Conv node(s) (the classifier)")
    work = t.get("work_after")
    if work:  # counted by the technique (falcon: what skipping zero inputs leaves)
        extra = ", ".join(f"{work[k]:,} {k}" for k in ("additions", "lookups", "comparisons") if work.get(k))
        click.echo(f"Conv work after, as the technique counts it ({work.get('note') or 'MACs'}): "
                   f"{work['macs']:,} MACs ({work['macs'] / max(t['conv_macs'], 1):.1%})"
                   + (f", {extra}" if extra else ""))
    for note in report.notes:
        click.echo(f"note: {note}")
    if report.warnings:
        click.echo(f"{len(report.warnings)} warning(s) (printed to stderr, kept in the report): "
                   "check the written model on held-out data before using it")


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--input-shape", help="Fixed input shape for shape inference, e.g. 1,3,224,224 (for models with "
              "symbolic H and W, whose MACs are unknown otherwise).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect(model, input_shape, as_json):
    """One row per Conv of MODEL: shapes, geometry, MACs (batch 1), parameters, ReLU-fed input."""
    from .analysis import analyse_convs, with_input_shape
    from .passes.name_nodes import name_nodes

    proto = name_nodes(_load(model))[0]  # unnamed nodes shown as optimize names them
    if input_shape:
        shape = _floats(input_shape, "--input-shape")
        if any(v != int(v) for v in shape):
            raise OnnxCompressError(f"--input-shape takes integers, got '{input_shape}'")
        proto = with_input_shape(proto, [int(v) for v in shape])
    rows = analyse_convs(proto)
    unknown = sum(r.macs is None for r in rows)
    total_macs = sum(r.macs or 0 for r in rows)
    total_params = sum(r.params for r in rows)
    if as_json:
        click.echo(json.dumps({"convs": [r.as_dict() for r in rows],
                               "totals": {"convs": len(rows), "macs": None if unknown else total_macs,
                                          "macs_known": total_macs, "convs_with_unknown_macs": unknown,
                                          "params": total_params}}, indent=2))
        return
    headers = ["name", "op", "input", "output", "kernel", "stride", "dilation", "group", "MACs", "params", "relu input"]
    table = [[r.name, r.op, r.input_shape, r.output_shape, r.kernel, r.stride, r.dilation, r.group,
              "unknown" if r.macs is None else r.macs, r.params, r.relu_input or "no"] for r in rows]
    shown = "unknown" if unknown == len(rows) and rows else (f">= {total_macs}" if unknown else total_macs)
    table.append(["total", f"{len(rows)} conv", "", "", "", "", "", "", shown, total_params, ""])
    click.echo(format_table(headers, table))
    if unknown:
        click.echo(f"MACs unknown for {unknown} of {len(rows)} Conv layer(s): their output sizes are not known "
                   f"from the model (symbolic input shape); give --input-shape, e.g. "
                   f"{_example_shape(proto)}")


def _example_shape(model) -> str:
    from .inputs import graph_inputs

    inputs = graph_inputs(model)
    if len(inputs) != 1:
        return "N,C,H,W"
    dims = inputs[0][1]
    guess = [1] + [224] * (len(dims) - 1)
    return ",".join(str(d if d is not None else g) for d, g in zip(dims, guess))


@main.command()
@click.argument("model_a", type=click.Path(dir_okay=False))
@click.argument("model_b", type=click.Path(dir_okay=False))
@click.option("--data", type=click.Path(dir_okay=False), help="Inputs from an .npz (one array per model input).")
@click.option("--dataset", type=click.Choice(DATASETS),
              help="Inputs from a bundled dataset (all of it, or a seeded class-balanced sample of --limit).")
@click.option("--random", type=int, help="Compare on N random inputs (default 8 when no data is given).")
@click.option("--limit", type=int, help="A seeded sample of this many samples of --data/--dataset (class-balanced where labels exist).")
@click.option("--batch", type=int, help="Samples per run for --data/--dataset (default 64; a model with a fixed "
              "batch dimension always gets that).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, help="Intra-op threads.")
@click.option("--min-cosine", type=float, help="Exit with status 1 when any output's cosine is below this.")
@click.option("--min-agreement", type=float, help="Exit with status 1 when any score output's top-1 agreement is "
              "below this (or no output has one).")
@click.option("--per-layer", is_flag=True, help="Compare each Conv's output (matched by its output tensor's name, "
              "or by node name where B fused the activation) instead of the model outputs: where does B diverge?")
@click.option("--json", "as_json", is_flag=True)
def compare(model_a, model_b, data, dataset, random, limit, batch, seed, threads, min_cosine, min_agreement, per_layer,
            as_json):
    """Run MODEL_A and MODEL_B on the same inputs and compare their outputs.

    Top-1 agreement is given for outputs that look like class scores: 2-D [N, C]
    float outputs with C >= 2 whose name does not suggest a regression (box,
    bbox, landmark, offset, coordinate...); '-' elsewhere.
    """
    from .evaluation import compare_layers, compare_models

    proto = _load(model_a)
    proto_b = _load(model_b)
    if (data or dataset) is None and batch is not None:
        raise OnnxCompressError("--batch applies to --data/--dataset")
    per_run = (64 if batch is None else batch) if (dataset or data) else 1
    feeds = _feeds(proto, data, random, seed, limit, dataset, batch=per_run)
    if per_layer:
        layers = compare_layers(proto, proto_b, feeds, threads)
        if as_json:
            click.echo(json.dumps([asdict(r) for r in layers], indent=2))
            return
        click.echo(format_table(["layer", "op in A", "op in B", "tensor", "cosine", "max abs err", "note"],
                                [[r.layer, r.op_a, r.op_b, r.tensor, r.cosine, r.max_abs_error, r.note]
                                 for r in layers]))
        return
    results = compare_models(model_a, model_b, feeds, threads)
    failed = []
    for r in results:
        if min_cosine is not None and not r.cosine >= min_cosine:
            failed.append(f"output {r.name}: cosine {r.cosine:.6f} < --min-cosine {min_cosine}")
        if min_agreement is not None and r.top1_agreement is not None and not r.top1_agreement >= min_agreement:
            failed.append(f"output {r.name}: top-1 agreement {r.top1_agreement:.4f} < --min-agreement {min_agreement}")
    if min_agreement is not None and all(r.top1_agreement is None for r in results):
        failed.append("--min-agreement: no output looks like class scores (2-D [N, C]), nothing to check")
    if as_json:
        click.echo(json.dumps([asdict(r) for r in results], indent=2))
    else:
        click.echo(format_table(
            ["output", "samples", "max abs err", "mean abs err", "cosine", "top-1 agreement"],
            [[r.name, r.samples, r.max_abs_error, r.mean_abs_error, r.cosine,
              "-" if r.top1_agreement is None else r.top1_agreement] for r in results]))
    if failed:
        for line in failed:
            click.echo(f"below threshold: {line}", err=True)
        sys.exit(1)


@main.command(name="eval")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--dataset", type=click.Choice(DATASETS), help="A bundled labelled dataset.")
@click.option("--data", type=click.Path(dir_okay=False), help="Labelled .npz: inputs plus labels under 'y' or 'labels'.")
@click.option("--limit", type=int, help="A seeded class-balanced sample of this many samples.")
@click.option("--batch", type=int, default=64, show_default=True)
@click.option("--threads", type=int, help="Intra-op threads.")
@click.option("--json", "as_json", is_flag=True)
def eval_command(model, dataset, data, limit, batch, threads, as_json):
    """Top-1 (and top-5) accuracy of MODEL on labelled data."""
    import numpy as np

    from .evaluation import evaluate_accuracy
    from .inputs import LABEL_KEYS, check_arrays, fixed_batch, graph_inputs, load_npz
    from .sampling import balanced_indices

    proto = _load(model)
    if bool(dataset) == bool(data):
        raise OnnxCompressError("give exactly one of --dataset and --data")
    if limit is not None and limit < 1:
        raise OnnxCompressError(f"--limit must be >= 1, got {limit}")
    if batch < 1:
        raise OnnxCompressError(f"--batch must be >= 1, got {batch}")
    inputs = graph_inputs(proto)
    if len(inputs) != 1:
        raise OnnxCompressError(f"eval runs single-input models; this one has {len(inputs)} inputs")
    name, dims, _ = inputs[0]
    if dataset:
        x, y = _dataset(dataset, limit, 0, proto)
    else:
        arrays = load_npz(data)
        labels = next((k for k in LABEL_KEYS if k in arrays), None)
        keys = [k for k in arrays if k != labels]
        if labels is None or len(keys) != 1:
            raise OnnxCompressError(f"{data}: needs one input array and labels under 'y' or 'labels' "
                                    f"(found {sorted(arrays)})")
        x, y = arrays[keys[0]], arrays[labels]
        if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
            raise OnnxCompressError(f"{data}: labels '{labels}' must be a 1-D integer array (class indices), "
                                    f"got {y.dtype} {y.shape}")
        y = y.astype(np.int64)
        if limit is not None and limit < len(x) and len(y) == len(x):
            rows = balanced_indices(y, limit, seed=0)  # files are often sorted by class: never the first N
            x, y = x[rows], y[rows]
        check_arrays({name: x}, proto, str(data))
    if not _fits(x.shape, dims):
        raise OnnxCompressError(f"{data or dataset}: inputs of shape {list(x.shape)}, the model's input '{name}' is "
                                f"{['?' if d is None else d for d in dims]}")
    fixed = fixed_batch(proto)
    if fixed and len(x) % fixed:
        click.echo(f"warning: the model takes batches of exactly {fixed}; the last {len(x) % fixed} sample(s) "
                   f"are not evaluated", err=True)
        x, y = x[:len(x) - len(x) % fixed], y[:len(y) - len(y) % fixed]
    acc = evaluate_accuracy(model, x.astype(np.float32), y, batch=fixed or batch, threads=threads,
                            progress=not as_json)
    result = {"model": model, "samples": acc.samples, "top1": acc.top1, "top5": acc.top5}
    if as_json:
        click.echo(json.dumps(result))
    else:
        top5 = f", top-5 {acc.top5:.4f}" if acc.top5 is not None else ""
        click.echo(f"{model}: top-1 {acc.top1:.4f}{top5} on {acc.samples} samples")


@main.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--threads", type=int, multiple=True, default=[1], show_default=True,
              help="Intra-op threads; repeat for several (--threads 1 --threads 2).")
@click.option("--runs", type=int, default=50, show_default=True)
@click.option("--warmup", type=int, default=5, show_default=True)
@click.option("--batch", type=int, default=1, show_default=True, help="Batch size for symbolic batch dimensions.")
@click.option("--data", type=click.Path(dir_okay=False), help="Take the input from an .npz instead of random data.")
@click.option("--block", type=int, default=1, show_default=True,
              help="Runs of one model back to back in each round, the first of each not counted: 1 times every "
                   "run right after the other models' (caches partly cold, as for a model called between other "
                   "work); 5 or more, a model called over and over.")
@click.option("--json", "as_json", is_flag=True)
def bench(models, threads, runs, warmup, batch, data, block, as_json):
    """Latency of each model, runs interleaved; ratio to the first model (>1: faster)."""
    from .evaluation import bench_models
    from .inputs import npz_feeds, random_feeds

    proto = _load(models[0])
    for m in models[1:]:
        _load(m)
    feed = npz_feeds(proto, data, batch=batch)[0] if data else random_feeds(proto, 1, batch=batch)[0]
    results = []
    for t in threads:
        for lat in bench_models(list(models), feed, t, runs=runs, warmup=warmup, block=block):
            results.append({"threads": t, **asdict(lat)})
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    click.echo(format_table(["model", "threads", "median ms", "p10 ms", "p90 ms", "speedup vs first"],
                            [[r["model"], r["threads"], r["median_ms"], r["p10_ms"], r["p90_ms"], r["ratio_to_first"]]
                             for r in results]))


if __name__ == "__main__":
    main()
