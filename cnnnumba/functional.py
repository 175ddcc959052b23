"""The public function API, with PyTorch's names, arguments and defaults (re-exports only)."""
from .autograd.arith import matmul
from .ops.activation import gelu, hardtanh, leaky_relu, relu, relu6, sigmoid, tanh
from .ops.conv import conv2d
from .ops.dropout import dropout
from .ops.linear import linear
from .ops.merge import cat
from .ops.loss import cross_entropy, log_softmax, mse_loss, nll_loss, softmax
from .ops.norm import batch_norm
from .ops.pool import adaptive_avg_pool2d, avg_pool2d, max_pool2d
from .ops.shape import flatten

__all__ = ["adaptive_avg_pool2d", "avg_pool2d", "batch_norm", "cat", "conv2d", "cross_entropy", "dropout", "flatten",
           "gelu", "hardtanh", "leaky_relu", "linear", "log_softmax", "matmul", "max_pool2d", "mse_loss", "nll_loss",
           "relu", "relu6", "sigmoid", "softmax", "tanh"]
