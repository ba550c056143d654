"""Train ResNet-18 (CIFAR variant, as in the PENNI and TabConv papers) on 28x28 MNIST digits.

Architecture: stem Conv3x3(1->64, stride 1)+BN+ReLU, no max-pool; four stages of
two basic blocks at 64/128/256/512 channels with strides 1/2/2/2 (feature maps
28/14/7/4), 1x1-conv+BN downsample shortcuts; global average pool; Linear(512->10).
20 Conv layers (17 3x3 + 3 1x1 shortcuts).  Writes models/resnet18_mnist.onnx.

    python models/train_resnet18_mnist.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models._common import ResNet, finish, load_data, setup, train

EPOCHS = 5


def main():
    setup(seed=0)
    train_data, test_data = load_data()
    model = ResNet(widths=(64, 128, 256, 512), strides=(1, 2, 2, 2), blocks=(2, 2, 2, 2))
    t = train(model, train_data, test_data, epochs=EPOCHS, lr=0.05, batch=64, weight_decay=5e-4, max_shift=2,
              eval_every=EPOCHS)
    finish(model, "resnet18_mnist", test_data, t)


if __name__ == "__main__":
    main()
