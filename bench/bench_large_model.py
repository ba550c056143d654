"""A real model over 2 GB through the tool: generate, save, load, optimize, save, run.

A protobuf message cannot exceed 2 GB, so such a model only exists with its tensors in
external data. The script builds one (a few huge 3x3 Conv layers behind ReLUs; the model
is generated in a temporary folder and deleted, never committed), then times each step
and reports the peak resident memory after it:

1. save_model with external_data=None: the size is estimated from the tensors, so the
   automatic path writes `<name>.data` beside the model;
2. load_model (external data inside the model's folder only, onnx's checked loader);
3. optimize --method falcon (data-free, every ReLU-fed Conv rewritten);
4. save_model of the result (automatic external data again);
5. load and run both models in ONNX Runtime from their files and compare the outputs.

    python bench/bench_large_model.py            # 4 layers of [4096, 4096, 3, 3]: 2.42 GB
    python bench/bench_large_model.py --layers 5 --keep /tmp/big
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from onnxcompress import InferenceSession  # noqa: E402
from onnxcompress.model_io import estimated_size, has_external_data, load_model, save_model  # noqa: E402
from onnxcompress.optimizer import optimize  # noqa: E402
from onnxcompress.table import format_table  # noqa: E402

LIMIT = 2**31 - 1


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build(layers: int, channels: int, hw: int, seed: int = 0) -> onnx.ModelProto:
    """Conv(3x3, channels -> channels) + Relu, `layers` times, then a global average pool.
    The weights are written straight into the model's initializers (onnx.helper would copy
    every tensor twice more), so the process holds about the model's size."""
    rng = np.random.default_rng(seed)
    nodes, x = [], "input"
    for i in range(layers):
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        x = f"r{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["output"], name="gap"))
    graph = helper.make_graph(nodes, "large", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                           [1, channels, hw, hw])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, channels, 1, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    scale = np.float32(2.0 / np.sqrt(channels * 9))
    for i in range(layers):
        w = rng.random((channels, channels, 3, 3), dtype=np.float32)
        w -= np.float32(0.5)
        w *= scale
        t = model.graph.initializer.add()
        t.name, t.data_type = f"w{i}", TensorProto.FLOAT
        t.dims.extend(w.shape)
        t.raw_data = w.tobytes()
        del w
        model.graph.initializer.append(numpy_helper.from_array(np.zeros(channels, np.float32), f"b{i}"))
    return model


def files_size(folder: Path, stem: str) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.name.startswith(stem))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--channels", type=int, default=4096)
    parser.add_argument("--hw", type=int, default=4, help="input height and width")
    parser.add_argument("--keep", type=Path, help="write the models here and keep them (default: a temporary "
                        "folder, deleted)")
    args = parser.parse_args()

    folder = args.keep or Path(tempfile.mkdtemp(prefix="onnxcompress-large-"))
    folder.mkdir(parents=True, exist_ok=True)
    rows = []

    def step(name, fn):
        start = time.perf_counter()
        result = fn()
        rows.append([name, round(time.perf_counter() - start, 2), round(peak_rss_mib())])
        print(f"{name}: {rows[-1][1]} s, peak RSS {rows[-1][2]} MiB", flush=True)
        return result

    try:
        model = step("generate", lambda: build(args.layers, args.channels, args.hw))
        size = estimated_size(model)
        print(f"estimated size {size / 1e9:.3f} GB ({'over' if size > LIMIT else 'under'} the 2 GB protobuf limit)")
        src = step("save (automatic external data)", lambda: save_model(model, folder / "large.onnx"))
        if size > LIMIT:
            assert has_external_data(src), "the automatic path did not write external data"
        del model
        loaded = step("load", lambda: load_model(src))
        out, report = step("optimize falcon (data-free)", lambda: optimize(loaded, "falcon"))
        del loaded
        dst = step("save optimized", lambda: save_model(out, folder / "large.falcon.onnx", input_path=src))
        assert has_external_data(dst) or size <= LIMIT
        del out
        x = np.random.default_rng(1).standard_normal((1, args.channels, args.hw, args.hw)).astype(np.float32)
        def run(path):
            return InferenceSession(str(path), threads=2).run(None, {"input": x})[0]

        ref = step("run original in ORT (from file)", lambda: run(src))
        got = step("run optimized in ORT (from file)", lambda: run(dst))
        reloaded = step("load optimized", lambda: load_model(dst))
        ops = sorted({n.op_type for n in reloaded.graph.node})
        del reloaded
        err = float(np.max(np.abs(got - ref)))
        print()
        print(format_table(["step", "seconds", "peak RSS MiB (process so far)"], rows))
        print(f"\nmodel {files_size(folder, 'large.onnx') / 1e9:.3f} GB on disk "
              f"(large.onnx {src.stat().st_size} bytes + large.onnx.data); optimized "
              f"{files_size(folder, 'large.falcon.onnx') / 1e9:.3f} GB; ops {ops}")
        print(f"{report.totals['rewritten']} of {report.totals['conv_layers']} Conv rewritten; "
              f"max |optimized - original| = {err:.3g}")
        if err > 1e-3 * max(float(np.max(np.abs(ref))), 1.0):
            raise SystemExit("the optimized model does not match the original")
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
