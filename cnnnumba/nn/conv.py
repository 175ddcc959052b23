"""`Conv2d`: a 2-D convolution layer with PyTorch's constructor, weight layout and default initialisation."""
import math

import numpy as np

from .. import functional as F
from ..shapes import pair
from . import init
from .module import Module, check_device, factory_dtype
from .parameter import Parameter


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, but got {value!r}")
    return int(value)


class Conv2d(Module):
    """Applies F.conv2d with a learned weight (out_channels, in_channels // groups, kH, kW) and optional bias."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 padding_mode="zeros", device=None, dtype=None):
        super().__init__()
        check_device(device)
        dtype = factory_dtype(dtype)
        if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups <= 0:
            raise ValueError("groups must be a positive integer")
        in_channels = _positive_int(in_channels, "in_channels")
        out_channels = _positive_int(out_channels, "out_channels")
        if in_channels % groups != 0:
            raise ValueError("in_channels must be divisible by groups")
        if out_channels % groups != 0:
            raise ValueError("out_channels must be divisible by groups")
        kernel_size, stride, dilation = pair(kernel_size, "kernel_size"), pair(stride, "stride"), pair(dilation, "dilation")
        for name, value in (("kernel_size", kernel_size), ("stride", stride), ("dilation", dilation)):
            if min(value) <= 0:
                raise ValueError(f"{name} must be positive, but got {value}")
        valid_padding_strings = {"same", "valid"}
        if isinstance(padding, str):
            if padding not in valid_padding_strings:
                raise ValueError(f"Invalid padding string {padding!r}, should be one of {valid_padding_strings}")
            if padding == "same" and any(s != 1 for s in stride):
                raise ValueError("padding='same' is not supported for strided convolutions")
        else:
            padding = pair(padding, "padding")
            if min(padding) < 0:
                raise ValueError(f"padding must be non-negative, but got {padding}")
        valid_padding_modes = {"zeros", "reflect", "replicate", "circular"}
        if padding_mode not in valid_padding_modes:
            raise ValueError(f"padding_mode must be one of {valid_padding_modes}, but got padding_mode='{padding_mode}'")
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode='{padding_mode}' is not supported yet; only 'zeros' is")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, int(groups)
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.padding_mode = padding_mode
        self.weight = Parameter(np.empty((out_channels, in_channels // groups) + kernel_size, dtype=dtype))
        self.bias = Parameter(np.empty(out_channels, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            if fan_in != 0:
                bound = 1 / math.sqrt(fan_in)
                init.uniform_(self.bias, -bound, bound)

    def forward(self, input):
        return F.conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self):
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            text += f", padding={self.padding}"
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        return text
