"""What the whole-model benchmarks share: their data (held-out digits with
labels, or photo crops judged by agreement with the fp32 model) and the
logits / fidelity measures for the photo case."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from onnxcompress.evaluation import open_session, run_session
from onnxcompress.images import photo_crops
from onnxcompress.inputs import dataset_arrays


def eval_data(dataset: str, calib: int, eval_limit: int | None, photos: int = 256):
    """(calibration inputs, test inputs, test labels or None).

    mnist / fashion: a seeded class-balanced sample of `calib` training images and
    the test set (all of it, or a seeded class-balanced sample of `eval_limit`; the
    stored sets are sorted by class, so never the first N); photos: crops of the
    bundled photos with disjoint seeds for calibration and evaluation (`eval_limit`
    or `photos` of them), no labels.
    """
    if dataset in ("mnist", "fashion"):
        x_calib, _ = dataset_arrays(f"{dataset}-train", calib, seed=0)
        x_test, y_test = dataset_arrays(f"{dataset}-test", eval_limit, seed=0)
        return x_calib, x_test, y_test
    return photo_crops(calib, seed=1), photo_crops(eval_limit or photos, seed=2), None


def logits(model, x: np.ndarray, batch: int = 32) -> np.ndarray:
    session = open_session(model)
    name = session.get_inputs()[0].name
    return np.concatenate([run_session(session, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def fidelity(reference: np.ndarray, scores: np.ndarray) -> dict:
    """Agreement of `scores` with the fp32 model's `reference` logits."""
    ref_top1 = reference.argmax(1)
    top5 = np.argsort(-scores, axis=1)[:, :5]
    a, b = reference.astype(np.float64), scores.astype(np.float64)
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"top1": float(np.mean(scores.argmax(1) == ref_top1)),
            "top5": float(np.mean(np.any(top5 == ref_top1[:, None], axis=1))),
            "cosine": float(np.mean(cos))}


def machine_summary() -> str:
    """CPU model, the vector ISAs it has (the kernels dispatch on them), cores, ORT version, load."""
    import os
    import platform

    import onnxruntime as ort

    model, flags = platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and model == platform.machine():
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [name for name, flag in (("AVX2", "avx2"), ("FMA", "fma"), ("AVX-512F", "avx512f"),
                                   ("AVX-512 VNNI", "avx512_vnni"), ("AVX-VNNI", "avx_vnni"), ("AMX", "amx_tile"))
           if flag in flags]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{model}; ISA {'/'.join(isa) or 'unknown'}; {os.cpu_count()} cpus; onnxruntime {ort.__version__}; "
            f"load average {load:.2f} at start")


def ort_int8_defaults(model: onnx.ModelProto, feeds: list[dict], reduce_range: bool = False) -> onnx.ModelProto:
    """ORT's static INT8 as a user of ORT makes it: quant_pre_process, then quantize_static with its
    default op types (Conv, Add, Gemm, pools, ...), QDQ, s8 per-channel weights, u8 activations,
    MinMax ranges on `feeds`; `reduce_range`: 7-bit weights, the remedy ORT's quantization guide
    gives for CPUs whose u8 x s8 kernels saturate (no VNNI)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from onnxcompress.int8 import _Reader
    from onnxcompress.model_io import prepare_for_runtime

    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = (Path(tmp) / n for n in ("in.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(model, str(src))
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), _Reader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=reduce_range)
        return prepare_for_runtime(onnx.load(str(out)))
