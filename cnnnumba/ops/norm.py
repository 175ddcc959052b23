"""Batch normalization: validation, the NCHW to channels-innermost layout change, running statistics, backward."""
import numbers

import numpy as np

from .._config import FLOAT_DTYPES
from ..autograd.function import Function
from ..autograd.tensor import Tensor
from ..kernels import norm as kernels


def _data(value):
    return value.data if isinstance(value, Tensor) else value


def _size(shape):
    return "[" + ", ".join(str(n) for n in shape) + "]"


def to_channel_rows(x):
    """(N, C, *spatial) as a contiguous (N * prod(spatial), C) array: channels innermost, as the kernels want."""
    if x.ndim == 2:
        return np.ascontiguousarray(x)
    return np.ascontiguousarray(np.moveaxis(x, 1, -1)).reshape(-1, x.shape[1])


def from_channel_rows(rows, shape):
    """Inverse of to_channel_rows: a contiguous array of `shape` (N, C, *spatial)."""
    if len(shape) == 2:
        return rows.reshape(shape)
    channels_last = rows.reshape((shape[0],) + tuple(shape[2:]) + (shape[1],))
    return np.ascontiguousarray(np.moveaxis(channels_last, -1, 1))


def update_running_statistics(running_mean, running_var, mean, variance, count, momentum, scratch=None):
    """running = (1 - momentum) * running + momentum * batch statistic, in place, with the unbiased variance.

    The running value is scaled in its own dtype, the float64 batch statistic in float64, and their float64 sum
    rounded back. The eager op and the captured step both call this, so their running statistics agree bit for bit.
    `scratch` (an array of the running statistics' dtype and a float64 one, one element per channel) spares the
    two allocations.
    """
    same_dtype, wide = scratch if scratch is not None else (np.empty_like(running_mean),
                                                          np.empty(running_mean.shape, dtype=np.float64))
    np.multiply(running_mean, 1.0 - momentum, out=same_dtype)
    np.multiply(mean, momentum, out=wide)
    np.add(same_dtype, wide, out=wide)
    np.copyto(running_mean, wide)
    np.multiply(running_var, 1.0 - momentum, out=same_dtype)
    np.multiply(variance, momentum, out=wide)
    np.multiply(wide, count / (count - 1), out=wide)
    np.add(same_dtype, wide, out=wide)
    np.copyto(running_var, wide)


class BatchNorm(Function):
    """Batch norm over (N, C, *spatial); weight and bias may be None (then 1 and 0, and no gradient)."""

    def forward(self, x, weight, bias, running_mean=None, running_var=None, training=False, momentum=0.1, eps=1e-5):
        channels = x.shape[1]
        self.shape, self.dtype, self.training, self.eps = x.shape, x.dtype, training, eps
        self.weight = np.ones(channels, dtype=x.dtype) if weight is None else np.ascontiguousarray(weight)
        bias = np.zeros(channels, dtype=x.dtype) if bias is None else np.ascontiguousarray(bias)
        rows = to_channel_rows(x)
        if rows.shape[0] == 0:
            # PyTorch returns an empty output and leaves the running statistics alone
            self.rows = rows
            return np.empty(x.shape, dtype=x.dtype)
        if training:
            y, mean, variance, invstd = kernels.batch_norm_forward_train(rows, self.weight, bias, eps)
            if running_mean is not None:
                update_running_statistics(running_mean, running_var, mean, variance, rows.shape[0], momentum)
            self.mean, self.invstd = mean, invstd
        else:
            y = kernels.batch_norm_forward_eval(rows, running_mean, running_var, self.weight, bias, eps)
            # copies: a later training step updates the running statistics in place
            self.running_mean = np.array(running_mean, dtype=np.float64)
            self.running_var = np.array(running_var, dtype=np.float64)
        if any(self.needs_input_grad):
            self.rows = rows
        return from_channel_rows(y, x.shape)

    def backward(self, grad):
        need_x, need_weight, need_bias = self.needs_input_grad
        if self.rows.shape[0] == 0:
            channels = self.shape[1]
            grad_x = np.zeros(self.shape, dtype=self.dtype)
            grad_weight = grad_bias = np.zeros(channels, dtype=self.dtype)
        else:
            grad_rows = to_channel_rows(np.asarray(grad, dtype=self.dtype))
            if self.training:
                grad_x, grad_weight, grad_bias = kernels.batch_norm_backward_train(
                    grad_rows, self.rows, self.mean, self.invstd, self.weight)
            else:
                grad_x, grad_weight, grad_bias = kernels.batch_norm_backward_eval(
                    grad_rows, self.rows, self.running_mean, self.running_var, self.weight, self.eps)
            grad_x = from_channel_rows(grad_x, self.shape)
        return (grad_x if need_x else None,
                grad_weight.astype(self.dtype) if need_weight else None,
                grad_bias.astype(self.dtype) if need_bias else None)


def _check_channel_vector(name, value, channels, dtype):
    array = _data(value)
    if not isinstance(array, np.ndarray):
        raise TypeError(f"batch_norm: {name} must be a Tensor or an ndarray, but got {type(value).__name__}")
    if array.ndim != 1 or array.shape[0] != channels:
        raise ValueError(f"{name} should contain {channels} elements not {array.size} (got shape {_size(array.shape)})")
    if array.dtype != dtype:
        raise TypeError(f"batch_norm: expected {name} to have the input's dtype {dtype}, but got {array.dtype}")
    return array


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """Normalize each channel of (N, C, *spatial) input, like torch.nn.functional.batch_norm.

    In training the batch mean and biased variance normalize, and running_mean / running_var (ndarrays or
    Tensors, or None) are updated in place: running = (1 - momentum) * running + momentum * batch statistic,
    with the unbiased batch variance. Otherwise the running statistics normalize.
    """
    x = _data(input)
    if not isinstance(x, np.ndarray):
        raise TypeError(f"batch_norm: expected input to be a Tensor or an ndarray, but got {type(input).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"batch_norm: expected a floating-point input (float32 or float64), but got {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"batch_norm: expected input of at least 2 dimensions (N, C, ...), but got input of size "
                         f"{_size(x.shape)}")
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
        raise TypeError(f"batch_norm(): argument 'momentum' must be float, not {type(momentum).__name__} "
                        "(a cumulative moving average is not supported by the functional form, as in PyTorch)")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps >= 0:
        raise ValueError(f"batch_norm: eps must be a non-negative number, but got {eps!r}")
    channels = x.shape[1]
    values_per_channel = x.size // channels if channels else 0
    if training and values_per_channel == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {_size(x.shape)}")
    if not training:
        for name, value in (("running_mean", running_mean), ("running_var", running_var)):
            if value is None:
                raise ValueError(f"{name} must be defined in evaluation mode")
    stats = {}
    for name, value in (("running_mean", running_mean), ("running_var", running_var)):
        stats[name] = None if value is None else _check_channel_vector(name, value, channels, x.dtype)
    if (stats["running_mean"] is None) != (stats["running_var"] is None):
        raise ValueError("batch_norm: running_mean and running_var must both be given or both be None")
    for name, value in (("weight", weight), ("bias", bias)):
        if value is not None:
            _check_channel_vector(name, value, channels, x.dtype)
    return BatchNorm.apply(input, weight, bias, running_mean=stats["running_mean"], running_var=stats["running_var"],
                           training=bool(training), momentum=float(momentum), eps=float(eps))
