"""Dropout: zero each element with probability p and scale the rest by 1 / (1 - p), drawn from cn's generator."""
import numbers

import numpy as np

from .. import _config
from .._config import FLOAT_DTYPES
from ..autograd import Function
from ..autograd.tensor import Tensor
from ..kernels import elementwise


class Dropout(Function):
    def forward(self, x, keep, scale, p=None):
        # p is unused here; graph capture reads it from the recorded options to redraw masks exactly as eager
        flat = np.ascontiguousarray(x).reshape(-1)
        out = np.empty_like(flat)
        self.keep, self.scale = keep, x.dtype.type(scale)
        elementwise.dropout_apply(flat, keep, self.scale, out)
        return out.reshape(x.shape)

    def backward(self, grad):
        flat = np.ascontiguousarray(grad).reshape(-1)
        grad_in = np.empty_like(flat)
        elementwise.dropout_apply(flat, self.keep, self.scale, grad_in)
        return (grad_in.reshape(grad.shape), None, None)


def dropout(input, p=0.5, training=True):
    """In training, keep each element with probability 1 - p (a mask from the global generator, so
    `cn.manual_seed` makes it reproducible) and scale it by 1 / (1 - p); p = 1 gives zeros. Otherwise identity."""
    if not isinstance(input, Tensor):
        raise TypeError(f"dropout(): argument 'input' must be a Tensor, but got {type(input).__name__}")
    if input.dtype not in FLOAT_DTYPES:
        raise TypeError(f"dropout(): expected a float32 or float64 input, but got {input.dtype}")
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"dropout(): p must be a number, but got {p!r}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training:
        return input
    keep = _config.generator().random(input.size) >= p
    scale = 0.0 if p == 1 else 1.0 / (1.0 - p)
    return Dropout.apply(input, keep, scale, p=float(p))
