"""Pooling layers: `MaxPool2d`, `AvgPool2d`, `AdaptiveAvgPool2d` (PyTorch's arguments, checked when built)."""
from .. import functional as F
from ..shapes import pair
from .module import Module


def _check_window(kernel_size, stride, padding, dilation=1):
    kernel = pair(kernel_size, "kernel_size")
    if min(kernel) <= 0:
        raise ValueError(f"kernel_size must be greater than zero, but got {kernel_size}")
    if stride is not None and min(pair(stride, "stride")) <= 0:
        raise ValueError(f"stride must be greater than zero, but got {stride}")
    if min(pair(dilation, "dilation")) <= 0:
        raise ValueError(f"dilation must be greater than zero, but got {dilation}")
    pad = pair(padding, "padding")
    if min(pad) < 0:
        raise ValueError(f"padding must be non-negative, but got {padding}")
    if pad[0] * 2 > kernel[0] or pad[1] * 2 > kernel[1]:
        raise ValueError(f"pad should be at most half of effective kernel size, but got pad={padding}, "
                         f"kernel_size={kernel_size}")


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__()
        _check_window(kernel_size, stride, padding, dilation)
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding, self.dilation = padding, dilation
        self.return_indices, self.ceil_mode = return_indices, ceil_mode

    def forward(self, input):
        return F.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation, ceil_mode=self.ceil_mode,
                            return_indices=self.return_indices)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        super().__init__()
        _check_window(kernel_size, stride, padding)
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding, self.ceil_mode, self.count_include_pad = padding, ceil_mode, count_include_pad
        self.divisor_override = divisor_override

    def forward(self, input):
        return F.avg_pool2d(input, self.kernel_size, self.stride, self.padding, ceil_mode=self.ceil_mode,
                            count_include_pad=self.count_include_pad, divisor_override=self.divisor_override)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, input):
        return F.adaptive_avg_pool2d(input, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"
