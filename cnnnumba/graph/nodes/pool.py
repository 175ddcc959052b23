"""Pooling nodes on NHWC activations: max (with its argmax indices), average and adaptive average."""
import numpy as np

from ...kernels import pool2d
from ..plan import Buffer
from .base import Node


class MaxPool(Node):
    """Max pooling; the argmax indices are kept for the backward only when the input needs a gradient (inference
    and a pool of the input image compute the values alone where the kernel can: max_pool2d_values_only)."""

    name = "maxpool"

    def __init__(self, x, output, window):
        super().__init__([x], output)
        self.window = window
        self.indices = Buffer(output.shape, np.int64, output.name + ".indices")

    def _keeps_indices(self):
        return self.needs(0) or not pool2d.max_pool2d_values_only(self.inputs[0].shape, self.output.shape,
                                                                  *self.window)

    def forward_buffers(self):
        return super().forward_buffers() + ([self.indices] if self._keeps_indices() else [])

    def backward_buffers(self):
        return super().backward_buffers() + [self.indices]

    def forward(self):
        pool2d.max_pool2d_forward(self.inputs[0].buffer.array, self.output.buffer.array,
                                  self.indices.array if self._keeps_indices() else None, *self.window)

    def backward(self):
        pool2d.max_pool2d_backward(self.output.grad.array, self.indices.array, self.grad_target(0), *self.window)
        self.finish_grad(0)


class AvgPool(Node):
    name = "avgpool"

    def __init__(self, x, output, window):
        super().__init__([x], output)
        self.window = window

    def forward(self):
        pool2d.avg_pool2d_forward(self.inputs[0].buffer.array, self.output.buffer.array, *self.window)

    def backward(self):
        pool2d.avg_pool2d_backward(self.output.grad.array, self.grad_target(0), *self.window)
        self.finish_grad(0)


class AdaptiveAvgPool(Node):
    name = "adaptive_avgpool"

    def forward(self):
        pool2d.adaptive_avg_pool2d_forward(self.inputs[0].buffer.array, self.output.buffer.array)

    def backward(self):
        pool2d.adaptive_avg_pool2d_backward(self.output.grad.array, self.grad_target(0))
        self.finish_grad(0)
