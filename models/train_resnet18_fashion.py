"""Train ResNet-18 (CIFAR variant, as in the PENNI and TabConv papers) on Fashion-MNIST.

Same architecture as models/train_resnet18_mnist.py: stem Conv3x3(1->64, stride 1)
+BN+ReLU, no max-pool; four stages of two basic blocks at 64/128/256/512 channels
with strides 1/2/2/2 (feature maps 28/14/7/4), 1x1-conv+BN downsample shortcuts;
global average pool; Linear(512->10).  20 Conv layers.  Trained on all 60,000
Fashion-MNIST training images for 2 epochs (what fits the 2-core machine) with
random shifts of up to 2 pixels and horizontal flips, under bfloat16 autocast;
exported in float32 with BatchNormalization kept.  Writes models/resnet18_fashion.onnx.

    python models/train_resnet18_fashion.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models._common import ResNet, finish, load_data, setup, train

EPOCHS = 2


def main():
    setup(seed=0)
    train_data, test_data = load_data("fashion")
    model = ResNet(widths=(64, 128, 256, 512), strides=(1, 2, 2, 2), blocks=(2, 2, 2, 2))
    t = train(model, train_data, test_data, epochs=EPOCHS, lr=0.05, batch=64, weight_decay=5e-4, max_shift=2,
              eval_every=0, dataset="fashion", hflip=True, bf16=True, train_eval_limit=10000,
              log_every=100)
    finish(model, "resnet18_fashion", test_data, t, dataset="fashion")


if __name__ == "__main__":
    main()
