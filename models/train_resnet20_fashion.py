"""Train ResNet-20 (He et al. 2016's CIFAR ResNet, the classic compression benchmark) on Fashion-MNIST.

Stem Conv3x3(1->16)+BN+ReLU; three stages of three basic blocks at 16/32/64
channels with strides 1/2/2 (feature maps 28/14/7); the first block of stages 2
and 3 has a Conv1x1 stride-2 + BN downsample shortcut (option B, as ``ResNet`` in
_common.py; the paper's CIFAR model uses parameter-free option A); global average
pool; Linear(64->10).  21 Conv layers (19 3x3, 2 1x1).  Trained on all 60,000
Fashion-MNIST training images for 4 epochs with random shifts of up to 2 pixels
and horizontal flips, under bfloat16 autocast; exported in float32.

    python models/train_resnet20_fashion.py        # writes models/resnet20_fashion.onnx (seed 0, BN kept)
    python models/train_resnet20_fashion_twin.py   # writes models/resnet20_fashion_twin.onnx (seed 1, BN folded)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models._common import ResNet, finish, load_data, setup, train

EPOCHS = 4


def main(seed: int = 0, name: str = "resnet20_fashion", fold_bn: bool = False):
    setup(seed=seed)
    train_data, test_data = load_data("fashion")
    model = ResNet(widths=(16, 32, 64), strides=(1, 2, 2), blocks=(3, 3, 3))
    t = train(model, train_data, test_data, epochs=EPOCHS, lr=0.1, batch=64, weight_decay=5e-4, max_shift=2,
              eval_every=0, seed=seed, dataset="fashion", hflip=True, bf16=True, log_every=200)
    finish(model, name, test_data, t, fold_bn=fold_bn, dataset="fashion")


if __name__ == "__main__":
    main()
