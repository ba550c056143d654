"""The independently trained twin of models/resnet18_mnist.onnx.

Same architecture, data and recipe as models/train_resnet18_mnist.py, but seed 1
(other initial weights, other batch order and augmentation), trained under
bfloat16 autocast (twice as fast on this CPU; the exported weights are float32)
and exported as
``torch.onnx.export`` does by default: eval mode with ``do_constant_folding=True``,
so every BatchNorm is folded into the Conv before it.  Writes
models/resnet18_mnist_twin.onnx.

    python models/train_resnet18_mnist_twin.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.train_resnet18_mnist import main

if __name__ == "__main__":
    main(seed=1, name="resnet18_mnist_twin", fold_bn=True, bf16=True)
