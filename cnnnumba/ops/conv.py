"""conv2d on NCHW tensors, as torch.nn.functional.conv2d: validation, layout changes around the NHWC kernels, backward."""
import numpy as np

from .. import shapes
from .._config import FLOAT_DTYPES
from ..autograd.arith import reshape
from ..autograd.function import Function
from ..autograd.tensor import Tensor
from ..kernels import conv2d as kernels
from ..kernels.layout import hwio_to_oihw, oihw_to_hwio


def _size(shape):
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _int_option(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"conv2d: {name} must be an int, but got {value!r}")
    return int(value)


def _validate(x, weight, bias, stride, padding, dilation, groups):
    """Check everything a user can get wrong; return ((top, left), (bottom, right)) padding and the output size."""
    if x.ndim != 4:
        raise ValueError(f"Expected 3D (unbatched) or 4D (batched) input to conv2d, but got input of size: {_size(x.shape)}")
    if weight.ndim != 4:
        raise ValueError(
            f"Expected 4D weight of shape (out_channels, in_channels/groups, kH, kW) for 4D input {_size(x.shape)}, "
            f"but got {weight.ndim}D weight of size {_size(weight.shape)} instead"
        )
    for name, array in (("input", x), ("weight", weight), ("bias", bias)):
        if array is not None and array.dtype not in FLOAT_DTYPES:
            raise TypeError(f"conv2d expected a floating-point {name} (float32 or float64), but got {array.dtype}")
    if weight.dtype != x.dtype:
        raise TypeError(f"Input type ({x.dtype}) and weight type ({weight.dtype}) should be the same")
    if bias is not None and bias.dtype != x.dtype:
        raise TypeError(f"Input type ({x.dtype}) and bias type ({bias.dtype}) should be the same")
    groups = _int_option(groups, "groups")
    if groups <= 0:
        raise ValueError(f"non-positive groups is not supported, but got groups={groups}")
    stride = shapes.pair(stride, "stride")
    if min(stride) <= 0:
        raise ValueError(f"non-positive stride is not supported, but got stride={stride}")
    dilation = shapes.pair(dilation, "dilation")
    if min(dilation) <= 0:
        raise ValueError(f"dilation should be greater than zero, but got dilation={dilation}")
    if not isinstance(padding, str) and min(shapes.pair(padding, "padding")) < 0:
        raise ValueError(f"negative padding is not supported, but got padding={padding!r}")
    channels_out, group_in, kernel_h, kernel_w = weight.shape
    if min(weight.shape) == 0:
        raise ValueError(f"weight of size {_size(weight.shape)} has an empty dimension")
    if channels_out % groups:
        raise ValueError(
            f"Given groups={groups}, expected weight to be divisible by {groups} at dimension 0, "
            f"but got weight of size {_size(weight.shape)} instead"
        )
    if x.shape[1] != group_in * groups:
        raise ValueError(
            f"Given groups={groups}, weight of size {_size(weight.shape)}, expected input{_size(x.shape)} to have "
            f"{group_in * groups} channels, but got {x.shape[1]} channels instead"
        )
    if bias is not None and bias.shape != (channels_out,):
        raise ValueError(
            f"Given weight of size {_size(weight.shape)}, expected bias to be 1-dimensional with {channels_out} "
            f"elements, but got bias of size {_size(bias.shape)} instead"
        )
    if x.shape[0] == 0:
        raise ValueError(f"conv2d: input{_size(x.shape)} has an empty batch")
    (top, bottom), (left, right) = shapes.conv_padding(padding, x.shape[2:], (kernel_h, kernel_w), stride, dilation)
    padded = (x.shape[2] + top + bottom, x.shape[3] + left + right)
    dilated = (dilation[0] * (kernel_h - 1) + 1, dilation[1] * (kernel_w - 1) + 1)
    if padded[0] < dilated[0] or padded[1] < dilated[1]:
        raise ValueError(
            f"Calculated padded input size per channel: ({padded[0]} x {padded[1]}). Kernel size: "
            f"({dilated[0]} x {dilated[1]}). Kernel size can't be greater than actual input size"
        )
    out_hw = (shapes.conv_output_size(x.shape[2], kernel_h, stride[0], top, bottom, dilation[0]),
              shapes.conv_output_size(x.shape[3], kernel_w, stride[1], left, right, dilation[1]))
    return stride, (top, left), dilation, groups, out_hw


class Conv2d(Function):
    """2-D cross-correlation of NCHW input with (C_out, C_in/groups, kH, kW) weight, plus an optional bias."""

    def forward(self, x, weight, bias, stride=1, padding=0, dilation=1, groups=1):
        stride, pad, dilation, groups, out_hw = _validate(x, weight, bias, stride, padding, dilation, groups)
        self.options = dict(stride=stride, padding=pad, dilation=dilation, groups=groups)
        x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        weight_khwc = np.empty(weight.shape[2:] + weight.shape[1::-1], dtype=weight.dtype)
        oihw_to_hwio(weight, weight_khwc)
        need_x, need_weight = self.needs_input_grad[0], self.needs_input_grad[1]
        self.x_nhwc = x_nhwc if need_weight else None
        self.weight_khwc = weight_khwc if need_x else None
        self.x_shape = x.shape
        self.weight_shape = weight.shape
        out = np.empty((x.shape[0], *out_hw, weight.shape[0]), dtype=x.dtype)
        kernels.conv2d_forward(x_nhwc, weight_khwc, bias, out, **self.options)
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))

    def backward(self, grad):
        need_x, need_weight, need_bias = self.needs_input_grad
        grad_nhwc = np.ascontiguousarray(grad.transpose(0, 2, 3, 1))
        grad_x = grad_weight = grad_bias = None
        if need_x:
            batch, channels_in, height, width = self.x_shape
            grad_x = np.empty((batch, height, width, channels_in), dtype=grad.dtype)
            kernels.conv2d_backward_input(grad_nhwc, self.weight_khwc, grad_x, **self.options)
            grad_x = np.ascontiguousarray(grad_x.transpose(0, 3, 1, 2))
        if need_weight:
            channels_out, group_in, kernel_h, kernel_w = self.weight_shape
            grad_weight = np.empty((kernel_h, kernel_w, group_in, channels_out), dtype=grad.dtype)
            kernels.conv2d_backward_weight(self.x_nhwc, grad_nhwc, grad_weight, **self.options)
            grad_weight = hwio_to_oihw(grad_weight, np.empty(self.weight_shape, dtype=grad.dtype))
        if need_bias:
            grad_bias = kernels.conv2d_backward_bias(grad_nhwc, np.empty(grad.shape[1], dtype=grad.dtype))
        return grad_x, grad_weight, grad_bias


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """torch.nn.functional.conv2d: padding is an int, a pair, "valid" or "same" (TF-style for stride > 1)."""
    x = input if isinstance(input, Tensor) else Tensor(input)
    if x.ndim == 3:
        out = Conv2d.apply(reshape(x, (1, *x.shape)), weight, bias, stride=stride, padding=padding,
                           dilation=dilation, groups=groups)
        return reshape(out, out.shape[1:])
    return Conv2d.apply(x, weight, bias, stride=stride, padding=padding, dilation=dilation, groups=groups)
