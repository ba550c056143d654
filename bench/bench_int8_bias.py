"""ORT's static INT8 on every Conv (and the ops between, `quantize_convs(other_ops=True)`), with and
without bias correction (`bias_correction=True`): accuracy only, no timing (the correction changes
no node, only int32 bias values).

Per MNIST / Fashion-MNIST model: top-1 on the whole test set, and the logits against fp32 on 2,000
balanced test images (mean |difference|, relative L2 error). MobileNetV2: top-1 agreement and
cosine with fp32 on 512 photo crops (seed 7) not used for calibration. Calibration: 256 training
images, seeded and class-balanced (photo crops, seed 0, for MobileNetV2).

    python bench/bench_int8_bias.py [--models resnet20_fashion_twin,mobilenet_v2,...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxcompress import data, sampling  # noqa: E402
from onnxcompress.evaluation import open_session  # noqa: E402
from onnxcompress.int8 import quantize_convs  # noqa: E402

MODELS = ("resnet20_fashion_twin", "mobilenet_v2", "resnet20_fashion", "digits_cnn", "resnet18_mnist_twin",
          "resnet18_fashion")


def outputs(model, x, name, batch=64):
    s = open_session(model, 2)
    return np.concatenate([s.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    args = ap.parse_args()
    rows = []
    for name in args.models.split(","):
        model = onnx.load(str(ROOT / "models" / f"{name}.onnx"))
        inp = model.graph.input[0].name
        if name == "mobilenet_v2":
            from onnxcompress.images import photo_crops

            cal, x, y, logit_x = photo_crops(256, seed=0), photo_crops(512, seed=7), None, None
        else:
            fashion = "fashion" in name
            xtr, ytr = data.load_fashion_train() if fashion else data.load_mnist_train()
            x, y = data.load_fashion_test() if fashion else data.load_mnist_test()
            cal = xtr[sampling.balanced_indices(ytr, 256, seed=0)]
            logit_x = x[sampling.balanced_indices(y, 2000, seed=3)]
        feeds = [{inp: cal[i:i + 1]} for i in range(len(cal))]
        variants = {"fp32": model, "int8": quantize_convs(model, feeds, other_ops=True),
                    "int8 + bias correction": quantize_convs(model, feeds, other_ops=True, bias_correction=True)}
        ref = outputs(model, x, inp)
        ref_logits = None if logit_x is None else outputs(model, logit_x, inp)
        for label, m in variants.items():
            out = ref if label == "fp32" else outputs(m, x, inp)
            if y is not None:
                score = f"top-1 {100 * np.mean(out.argmax(1) == y):.3f} on {len(y)}"
                if label != "fp32":
                    o = outputs(m, logit_x, inp)
                    score += (f"; logits: mean |d| {np.mean(np.abs(o - ref_logits)):.4f}, "
                              f"rel. error {np.linalg.norm(o - ref_logits) / np.linalg.norm(ref_logits):.4f}")
            else:
                cos = np.mean(np.sum(out * ref, 1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1))
                score = f"agreement {np.mean(out.argmax(1) == ref.argmax(1)):.3f}, cosine {cos:.4f} on {len(x)} crops"
            rows.append((name, label, score))
            print(f"{name:24s} {label:24s} {score}", flush=True)


if __name__ == "__main__":
    main()
