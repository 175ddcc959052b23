"""The layout edges of a graph: the batch enters as NCHW and becomes NHWC; flatten leaves NHWC in NCHW order."""
import numpy as np

from ...kernels import layout
from .base import Node


class InputNHWC(Node):
    """The batch enters: NCHW (the public layout) to the graph's NHWC, the one layout change at the input edge."""

    name = "input"

    def __init__(self, output):
        super().__init__([], output)
        self.source = None

    def forward(self):
        target, source = self.output.buffer.array, self.source
        if target.ndim == 4 and target.shape[-1] > 1 and source.flags.c_contiguous and source.dtype == target.dtype:
            layout.nchw_to_nhwc(source, target)
        elif target.ndim == 4:
            # one channel: the transpose is a plain copy; other strides: NumPy's general copy
            np.copyto(target, source.transpose(0, 2, 3, 1))
        else:
            np.copyto(target, source)


class Flatten(Node):
    """(N, H, W, C) to (N, C*H*W) in NCHW order, as the eager flatten of an NCHW tensor: the output layout edge."""

    name = "flatten"

    def forward(self):
        x, out = self.inputs[0].buffer.array, self.output.buffer.array
        if x.ndim == 4:
            batch, height, width, channels = x.shape
            layout.nhwc_to_nchw(x, out.reshape(batch, channels, height, width))
        else:
            np.copyto(out.reshape(x.shape), x)

    def backward(self):
        grad, target = self.output.grad.array, self.grad_target(0)
        if target.ndim == 4:
            batch, height, width, channels = target.shape
            layout.nchw_to_nhwc(grad.reshape(batch, channels, height, width), target)
        else:
            np.copyto(target, grad.reshape(target.shape))
        self.finish_grad(0)
