"""Activation ops (relu, relu6, hardtanh, leaky_relu, gelu, sigmoid, tanh): elementwise kernels, with gradients."""
import numbers

import numpy as np

from .._config import FLOAT_DTYPES
from ..autograd import Function
from ..autograd.tensor import Tensor
from ..kernels import elementwise


def _check_input(input, name):
    if not isinstance(input, Tensor):
        raise TypeError(f"{name}(): argument 'input' must be a Tensor, but got {type(input).__name__}")
    if input.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}(): expected a float32 or float64 input, but got {input.dtype}")


def _flat(array):
    """A contiguous 1-D view (or copy) of array, as the elementwise kernels take it."""
    return np.ascontiguousarray(array).reshape(-1)


class _Elementwise(Function):
    """Runs `kernel(x, *scalars, out)` forward and `grad_kernel(grad, saved, *scalars, out)` backward."""

    kernel = grad_kernel = None
    saves_output = True  # backward reads the output (True) or the input (False)

    def forward(self, x, *scalars):
        flat = _flat(x)
        out = np.empty_like(flat)
        self.scalars = tuple(np.asarray(s, dtype=x.dtype)[()] if isinstance(s, float) else s for s in scalars)
        type(self).kernel(flat, *self.scalars, out)
        self.saved = out if self.saves_output else flat
        return out.reshape(x.shape)

    def backward(self, grad):
        flat = _flat(grad)
        grad_in = np.empty_like(flat)
        type(self).grad_kernel(flat, self.saved, *self.scalars, grad_in)
        return (grad_in.reshape(grad.shape),) + (None,) * len(self.scalars)


class ReLU(_Elementwise):
    kernel, grad_kernel = elementwise.relu_forward, elementwise.relu_backward


class LeakyReLU(_Elementwise):
    kernel, grad_kernel = elementwise.leaky_relu_forward, elementwise.leaky_relu_backward
    saves_output = False


class Hardtanh(_Elementwise):
    """Clamp to [min_val, max_val]; relu6 is this op with bounds 0 and 6 (graph capture and ONNX export read them).

    Backward reads the output: clamping keeps which side of each bound an element is on, and the output is an
    array this op owns (graph capture's fallback node may pass its input as a view of a buffer reused later)."""
    kernel, grad_kernel = elementwise.hardtanh_forward, elementwise.hardtanh_backward


class GELU(_Elementwise):
    kernel, grad_kernel = elementwise.gelu_forward, elementwise.gelu_backward
    saves_output = False


class Sigmoid(_Elementwise):
    kernel, grad_kernel = elementwise.sigmoid_forward, elementwise.sigmoid_backward


class Tanh(_Elementwise):
    kernel, grad_kernel = elementwise.tanh_forward, elementwise.tanh_backward


def relu(input):
    """max(input, 0); NaN stays NaN."""
    _check_input(input, "relu")
    return ReLU.apply(input)


def leaky_relu(input, negative_slope=0.01):
    """input where positive, input * negative_slope elsewhere."""
    _check_input(input, "leaky_relu")
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, numbers.Real):
        raise TypeError(f"leaky_relu(): negative_slope must be a number, but got {negative_slope!r}")
    return LeakyReLU.apply(input, float(negative_slope))


def _bound(value, name, function):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{function}(): {name} must be a number, but got {value!r}")
    return float(value)


def hardtanh(input, min_val=-1.0, max_val=1.0, inplace=False):
    """input clamped to [min_val, max_val]; the gradient is zero at and beyond either bound. `inplace` is accepted
    for compatibility; the result is a new array."""
    _check_input(input, "hardtanh")
    min_val, max_val = _bound(min_val, "min_val", "hardtanh"), _bound(max_val, "max_val", "hardtanh")
    if max_val < min_val:
        raise ValueError(f"hardtanh(): max_val ({max_val}) must be greater than or equal to min_val ({min_val})")
    return Hardtanh.apply(input, min_val, max_val)


def relu6(input, inplace=False):
    """min(max(input, 0), 6), as hardtanh(input, 0, 6)."""
    _check_input(input, "relu6")
    return Hardtanh.apply(input, 0.0, 6.0)


def gelu(input, approximate="none"):
    """input * Phi(input), exact (erf) by default or with PyTorch's tanh approximation."""
    _check_input(input, "gelu")
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu(): approximate argument must be either none or tanh, but got {approximate!r}")
    return GELU.apply(input, approximate == "tanh")


def sigmoid(input):
    """1 / (1 + exp(-input)), computed without overflow."""
    _check_input(input, "sigmoid")
    return Sigmoid.apply(input)


def tanh(input):
    _check_input(input, "tanh")
    return Tanh.apply(input)
