"""The independently trained twin of models/resnet20_fashion.onnx.

Same architecture, data and recipe as models/train_resnet20_fashion.py, but seed 1
(other initial weights, other batch order and augmentation) and exported as
``torch.onnx.export`` does by default: eval mode with ``do_constant_folding=True``,
so every BatchNorm is folded into the Conv before it.  Writes
models/resnet20_fashion_twin.onnx.

    python models/train_resnet20_fashion_twin.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.train_resnet20_fashion import main

if __name__ == "__main__":
    main(seed=1, name="resnet20_fashion_twin", fold_bn=True)
