"""Train ResNet-20 (He et al. 2016's CIFAR ResNet, the classic compression benchmark) on Fashion-MNIST.

Stem Conv3x3(1->16)+BN+ReLU; three stages of three basic blocks at 16/32/64
channels with strides 1/2/2 (feature maps 28/14/7); the first block of stages 2
and 3 has a Conv1x1 stride-2 + BN downsample shortcut (option B, as ``ResNet`` in
_common.py; the paper's CIFAR model uses parameter-free option A); global average
pool; Linear(64->10).  21 Conv layers (19 3x3, 2 1x1).  Trained on the 60,000
Fashion-MNIST training images with random shifts of up to 2 pixels and horizontal
flips, under bfloat16 autocast in channels-last format, with a warm-up / constant /
cosine-decay LR schedule whose length (per seed, in SCHEDULES) was chosen from the
wall clock to fit the shared 2-core machine (see models/README.md); exported in
float32.

    python models/train_resnet20_fashion.py        # writes models/resnet20_fashion.onnx (seed 0, BN kept)
    python models/train_resnet20_fashion_twin.py   # writes models/resnet20_fashion_twin.onnx (seed 1, BN folded)
    (add --deadline HH:MM to choose the schedule to end by that time, UTC)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models._common import ResNet, deadline_from_argv, finish, load_data, setup, train_wsd

SCHEDULES = {0: (1400, 1400), 1: (775, 775)}  # seed -> (stable_steps, decay_steps)


def main(seed: int = 0, name: str = "resnet20_fashion", fold_bn: bool = False):
    setup(seed=seed)
    train_data, test_data = load_data("fashion")
    model = ResNet(widths=(16, 32, 64), strides=(1, 2, 2), blocks=(3, 3, 3))
    deadline = deadline_from_argv()
    stable, decay = (None, None) if deadline else SCHEDULES[seed]
    t = train_wsd(model, train_data, lr=0.1, stable_steps=stable, decay_steps=decay, deadline=deadline,
                  decay_share=0.5, warmup=100, batch=64, weight_decay=5e-4, max_shift=2, seed=seed,
                  dataset="fashion", hflip=True, bf16=True, channels_last=True, log_every=200)
    finish(model, name, test_data, t, fold_bn=fold_bn, dataset="fashion")


if __name__ == "__main__":
    main()
