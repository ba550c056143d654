"""Graph passes, one per file, and the pass manager that runs them."""

from .base import Pass, PassContext, PassManager, PassResult
from .constants_to_initializers import ConstantsToInitializers
from .eliminate_dead_code import EliminateDeadCode
from .falcon import FalconRewrite
from .fold_batchnorm import FoldBatchNorm
from .fuse_activation import FuseActivation
from .fuse_residual import FuseResidual
from .name_nodes import NameNodes


def fusions() -> list[Pass]:
    """What follows every rewrite: the residual Add, then the activation, taken into our ops."""
    return [FuseResidual(), FuseActivation()]


def canonicalize() -> list[Pass]:
    """What every technique relies on: unique node names, weights as initializers, BatchNorm folded."""
    return [NameNodes(), ConstantsToInitializers(), FoldBatchNorm(), EliminateDeadCode()]


__all__ = [
    "ConstantsToInitializers", "EliminateDeadCode", "FalconRewrite", "FoldBatchNorm", "FuseActivation", "FuseResidual", "NameNodes",
    "Pass", "PassContext", "PassManager", "PassResult", "canonicalize", "fusions",
]
