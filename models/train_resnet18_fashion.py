"""Train ResNet-18 (CIFAR variant, as in the PENNI and TabConv papers) on Fashion-MNIST.

Same architecture as models/train_resnet18_mnist.py: stem Conv3x3(1->64, stride 1)
+BN+ReLU, no max-pool; four stages of two basic blocks at 64/128/256/512 channels
with strides 1/2/2/2 (feature maps 28/14/7/4), 1x1-conv+BN downsample shortcuts;
global average pool; Linear(512->10).  20 Conv layers.  Trained on the 60,000
Fashion-MNIST training images with random shifts of up to 2 pixels and horizontal
flips, under bfloat16 autocast in channels-last format, with a warm-up / constant /
cosine-decay LR schedule whose length (STABLE_STEPS, DECAY_STEPS) was chosen from
the wall clock to fit the shared 2-core machine (see models/README.md); exported
in float32 with BatchNormalization kept.  Writes models/resnet18_fashion.onnx.

    python models/train_resnet18_fashion.py                  # the committed schedule
    python models/train_resnet18_fashion.py --deadline 22:40 # choose the schedule to end by 22:40 UTC
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models._common import ResNet, deadline_from_argv, finish, load_data, setup, train_wsd

STABLE_STEPS = 2729
DECAY_STEPS = 2729


def main():
    setup(seed=0)
    train_data, test_data = load_data("fashion")
    model = ResNet(widths=(64, 128, 256, 512), strides=(1, 2, 2, 2), blocks=(2, 2, 2, 2))
    deadline = deadline_from_argv()
    t = train_wsd(model, train_data, lr=0.05, stable_steps=None if deadline else STABLE_STEPS,
                  decay_steps=None if deadline else DECAY_STEPS, deadline=deadline, decay_share=0.5, warmup=100,
                  batch=64, weight_decay=5e-4, max_shift=2, seed=0, dataset="fashion", hflip=True, bf16=True,
                  channels_last=True, train_eval_limit=2000, log_every=25)
    finish(model, "resnet18_fashion", test_data, t, dataset="fashion", torch_eval_limit=1000)


if __name__ == "__main__":
    main()
