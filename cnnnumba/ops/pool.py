"""Pooling ops (max_pool2d, avg_pool2d, adaptive_avg_pool2d) on NCHW or CHW tensors, with their gradients.

The kernels work on NHWC buffers; these ops transpose at the boundary, so the public layout stays NCHW.
"""
import numpy as np

from .. import shapes
from .._config import FLOAT_DTYPES
from ..autograd import Function
from ..autograd.tensor import Tensor
from ..kernels import pool2d


def _check_input(input, name, allow_empty_plane=False):
    if not isinstance(input, Tensor):
        raise TypeError(f"{name}(): argument 'input' must be a Tensor, but got {type(input).__name__}")
    if input.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}(): expected a float32 or float64 input, but got {input.dtype}")
    non_batch = input.shape[1:] if input.ndim == 4 else input.shape
    if input.ndim not in (3, 4) or (not allow_empty_plane and 0 in non_batch):
        raise ValueError(f"{name}(): expected a 3D (C, H, W) or 4D (N, C, H, W) input with non-zero C, H and W "
                         f"(optional 0 batch size), but got shape {tuple(input.shape)}")


def _window_pair(value, name, op):
    """kernel_size/stride/... as an (h, w) pair; PyTorch also takes a 1-tuple for both."""
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = (value[0], value[0])
    if isinstance(value, (tuple, list)) and len(value) != 2:
        raise ValueError(f"{op}: {name} must either be a single int, or a tuple of two ints, but got {value!r}")
    return shapes.pair(value, name)


def _pool_geometry(op, input_shape, kernel_size, stride, padding, dilation, ceil_mode):
    """Validate the window arguments the way PyTorch does and return (kernel, stride, padding, dilation, out_hw)."""
    kernel = _window_pair(kernel_size, "kernel_size", op)
    stride = kernel if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) \
        else _window_pair(stride, "stride", op)
    padding = _window_pair(padding, "padding", op)
    dilation = _window_pair(dilation, "dilation", op)
    if min(kernel) <= 0:
        raise ValueError(f"{op}: kernel size should be greater than zero, but got kH: {kernel[0]} kW: {kernel[1]}")
    if 0 in stride:
        raise ValueError(f"{op}: stride should not be zero, but got stride {stride}")
    if min(stride) < 0:
        raise ValueError(f"{op}: stride should be greater than zero, but got dH: {stride[0]} dW: {stride[1]}")
    if min(dilation) <= 0:
        raise ValueError(
            f"{op}: dilation should be greater than zero, but got dilationH: {dilation[0]} dilationW: {dilation[1]}")
    if min(padding) < 0:
        raise ValueError(f"{op}: pad must be non-negative, but got pad: {padding}")
    height, width = input_shape[-2:]
    try:
        out_hw = tuple(shapes.pool_output_size(size, k, s, p, d, bool(ceil_mode), what=op)
                       for size, k, s, p, d in zip((height, width), kernel, stride, padding, dilation))
    except ValueError as error:
        if "pad should be" in str(error):
            raise
        raise ValueError(f"{op}: Given input size: {tuple(input_shape[-3:])}. Output size is too small "
                         f"({error})") from None
    return kernel, stride, padding, dilation, out_hw


def _to_nhwc(array):
    """(N, C, H, W) or (C, H, W) as a contiguous (N, H, W, C) buffer."""
    if array.ndim == 3:
        array = array[None]
    return np.ascontiguousarray(array.transpose(0, 2, 3, 1))


def _from_nhwc(array, unbatched):
    """A (N, H, W, C) buffer back to contiguous (N, C, H, W), or (C, H, W) if the input had no batch."""
    result = np.ascontiguousarray(array.transpose(0, 3, 1, 2))
    return result[0] if unbatched else result


class MaxPool2d(Function):
    def forward(self, x, geometry, indices_sink=None):
        kernel, stride, padding, dilation, (out_h, out_w) = geometry
        self.window = (*kernel, *stride, *padding, *dilation)
        self.input_shape, self.unbatched = x.shape, x.ndim == 3
        x_nhwc = _to_nhwc(x)
        batch, _, _, channels = x_nhwc.shape
        out = np.empty((batch, out_h, out_w, channels), dtype=x.dtype)
        if self.needs_input_grad[0] or indices_sink is not None \
                or not pool2d.max_pool2d_values_only(x_nhwc.shape, out.shape, *self.window):
            self.indices = np.empty(out.shape, dtype=np.int64)
        else:
            self.indices = None  # no backward reads them: the values alone
        pool2d.max_pool2d_forward(x_nhwc, out, self.indices, *self.window)
        if indices_sink is not None:
            indices_sink.append(_from_nhwc(self.indices, self.unbatched))
        return _from_nhwc(out, self.unbatched)

    def backward(self, grad):
        grad_nhwc = _to_nhwc(grad)
        batch, _, _, channels = grad_nhwc.shape
        grad_in = np.empty((batch, *self.input_shape[-2:], channels), dtype=grad.dtype)
        pool2d.max_pool2d_backward(grad_nhwc, self.indices, grad_in, *self.window)
        return (_from_nhwc(grad_in, self.unbatched), None)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """2-D max pooling over (N, C, H, W) or (C, H, W); with return_indices also the flat h * W + w argmax."""
    _check_input(input, "max_pool2d")
    geometry = _pool_geometry("max_pool2d", input.shape, kernel_size, stride, padding, dilation, ceil_mode)
    if not return_indices:
        return MaxPool2d.apply(input, geometry)
    indices = []
    output = MaxPool2d.apply(input, geometry, indices_sink=indices)
    return output, Tensor._wrap(indices[0])


class AvgPool2d(Function):
    def forward(self, x, window):
        self.window, self.input_shape, self.unbatched = window, x.shape, x.ndim == 3
        out_h, out_w = window[-1]
        x_nhwc = _to_nhwc(x)
        batch, _, _, channels = x_nhwc.shape
        out = np.empty((batch, out_h, out_w, channels), dtype=x.dtype)
        pool2d.avg_pool2d_forward(x_nhwc, out, *window[:-1])
        return _from_nhwc(out, self.unbatched)

    def backward(self, grad):
        grad_nhwc = _to_nhwc(grad)
        batch, _, _, channels = grad_nhwc.shape
        grad_in = np.empty((batch, *self.input_shape[-2:], channels), dtype=grad.dtype)
        pool2d.avg_pool2d_backward(grad_nhwc, grad_in, *self.window[:-1])
        return (_from_nhwc(grad_in, self.unbatched), None)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """2-D average pooling over (N, C, H, W) or (C, H, W), with PyTorch's divisor rules."""
    _check_input(input, "avg_pool2d")
    kernel, stride, padding, _, out_hw = _pool_geometry("avg_pool2d", input.shape, kernel_size, stride, padding,
                                                        1, ceil_mode)
    if divisor_override is None:
        divisor = 0
    else:
        if isinstance(divisor_override, bool) or not isinstance(divisor_override, (int, np.integer)):
            raise TypeError(f"avg_pool2d(): divisor_override must be an int or None, but got {divisor_override!r}")
        if divisor_override == 0:
            raise ValueError("avg_pool2d(): divisor must be not zero")
        divisor = int(divisor_override)
    window = (*kernel, *stride, *padding, bool(count_include_pad), divisor, out_hw)
    return AvgPool2d.apply(input, window)


class AdaptiveAvgPool2d(Function):
    def forward(self, x, out_hw):
        self.input_shape, self.unbatched = x.shape, x.ndim == 3
        x_nhwc = _to_nhwc(x)
        batch, _, _, channels = x_nhwc.shape
        out = np.empty((batch, *out_hw, channels), dtype=x.dtype)
        pool2d.adaptive_avg_pool2d_forward(x_nhwc, out)
        return _from_nhwc(out, self.unbatched)

    def backward(self, grad):
        grad_nhwc = _to_nhwc(grad)
        batch, _, _, channels = grad_nhwc.shape
        grad_in = np.empty((batch, *self.input_shape[-2:], channels), dtype=grad.dtype)
        pool2d.adaptive_avg_pool2d_backward(grad_nhwc, grad_in)
        return (_from_nhwc(grad_in, self.unbatched), None)


def adaptive_avg_pool2d(input, output_size):
    """Average pooling to a fixed (H_out, W_out); an int means a square, None keeps that input size."""
    _check_input(input, "adaptive_avg_pool2d", allow_empty_plane=True)
    if isinstance(output_size, (tuple, list)):
        if len(output_size) != 2:
            raise ValueError(f"adaptive_avg_pool2d: output_size must be 2, but got {output_size!r}")
        sizes = tuple(input.shape[-2 + i] if size is None else size for i, size in enumerate(output_size))
    elif output_size is None:
        sizes = tuple(input.shape[-2:])
    else:
        sizes = (output_size, output_size)
    out_hw = shapes.pair(sizes, "output_size")
    if min(out_hw) < 0:
        raise ValueError("adaptive_avg_pool2d: elements of output_size must be greater than or equal to 0 "
                         f"but received {{{out_hw[0]}, {out_hw[1]}}}")
    return AdaptiveAvgPool2d.apply(input, out_hw)
