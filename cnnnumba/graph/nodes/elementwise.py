"""Element-wise and joining nodes: ReLU, Hardtanh (ReLU6), add (+ ReLU), concatenation and dropout."""
import numpy as np

from ... import _config
from ...kernels import elementwise, fused
from ..plan import Buffer
from .base import RELU, RELU6, Node


class ReLU(Node):
    name = "relu"
    clamp = RELU  # what a node that absorbs it applies

    def forward(self):
        elementwise.relu_forward(self.inputs[0].buffer.array.reshape(-1), self.output.buffer.array.reshape(-1))

    def backward_buffers(self):
        return super().backward_buffers() + [self.output.buffer]

    def backward(self):
        elementwise.relu_backward(self.output.grad.array.reshape(-1), self.output.buffer.array.reshape(-1),
                                  self.grad_target(0).reshape(-1))
        self.finish_grad(0)


class Hardtanh(Node):
    """x clamped to [lower, upper] (ReLU6: 0, 6) by the op's own kernels; backward masks by the output, as the op
    does: the gradient passes where lower < y < upper."""

    def __init__(self, x, output, lower, upper):
        super().__init__([x], output)
        self.clamp = (lower, upper)
        self.bounds = tuple(output.dtype.type(bound) for bound in self.clamp)

    @property
    def name(self):
        return "relu6" if self.clamp == RELU6 else "hardtanh"

    def forward(self):
        elementwise.hardtanh_forward(self.inputs[0].buffer.array.reshape(-1), *self.bounds,
                                     self.output.buffer.array.reshape(-1))

    def backward_buffers(self):
        return super().backward_buffers() + [self.output.buffer]

    def backward(self):
        elementwise.hardtanh_backward(self.output.grad.array.reshape(-1), self.output.buffer.array.reshape(-1),
                                      *self.bounds, self.grad_target(0).reshape(-1))
        self.finish_grad(0)


class AddReLU(Node):
    """relu(a + b) in one pass; backward: the gradient masked by the output (y > 0), the same for both inputs."""

    name = "add+relu"

    def forward(self):
        fused.add_relu_forward(self.inputs[0].buffer.array.reshape(-1), self.inputs[1].buffer.array.reshape(-1),
                               self.output.buffer.array.reshape(-1))

    def backward_buffers(self):
        return super().backward_buffers() + [self.output.buffer]

    def backward(self):
        grad_y, y = self.output.grad.array.reshape(-1), self.output.buffer.array.reshape(-1)
        if self.needs(0):
            masked = self.grad_target(0)
            elementwise.relu_backward(grad_y, y, masked.reshape(-1))
            if self.needs(1):
                self.deliver(1, masked)
            self.finish_grad(0)
        elif self.needs(1):
            elementwise.relu_backward(grad_y, y, self.grad_target(1).reshape(-1))
            self.finish_grad(1)


class Add(Node):
    name = "add"

    def forward(self):
        np.add(self.inputs[0].buffer.array, self.inputs[1].buffer.array, out=self.output.buffer.array)

    def backward(self):
        for k in range(2):
            if self.needs(k):
                self.deliver(k, self.output.grad.array)


class Cat(Node):
    """Concatenation along one axis of the internal layout (channels: the last axis of NHWC)."""

    name = "cat"

    def __init__(self, inputs, output, axis):
        super().__init__(inputs, output)
        self.slices = []
        start = 0
        for value in inputs:
            index = [slice(None)] * len(output.shape)
            index[axis] = slice(start, start + value.shape[axis])
            self.slices.append(tuple(index))
            start += value.shape[axis]

    def forward(self):
        out = self.output.buffer.array
        for value, index in zip(self.inputs, self.slices):
            np.copyto(out[index], value.buffer.array)

    def backward(self):
        grad = self.output.grad.array
        for k, index in enumerate(self.slices):
            if self.needs(k):
                self.deliver(k, grad[index])


class Dropout(Node):
    """Masks drawn from cn's global generator, the same numbers in the same order as eager dropout draws them."""

    name = "dropout"

    def __init__(self, x, output, p, scale):
        super().__init__([x], output)
        self.p, self.scale = p, output.dtype.type(scale)
        self.uniform = Buffer((int(np.prod(x.shape)),), np.float64, output.name + ".uniform")
        self.keep_nchw = Buffer((int(np.prod(x.shape)),), np.bool_, output.name + ".keep_nchw")
        self.keep = Buffer((int(np.prod(x.shape)),), np.bool_, output.name + ".keep")

    def forward_buffers(self):
        return super().forward_buffers() + [self.uniform, self.keep_nchw, self.keep]

    def backward_buffers(self):
        return super().backward_buffers() + [self.keep]

    def forward(self):
        uniform, keep = self.uniform.array, self.keep.array
        _config.generator().random(out=uniform)
        if self.output.nhwc:
            # eager draws one number per element in NCHW order; lay the mask out as the graph's NHWC
            np.greater_equal(uniform, self.p, out=self.keep_nchw.array)
            batch, height, width, channels = self.output.shape
            np.copyto(keep.reshape(self.output.shape),
                      self.keep_nchw.array.reshape(batch, channels, height, width).transpose(0, 2, 3, 1))
        else:
            np.greater_equal(uniform, self.p, out=keep)
        elementwise.dropout_apply(self.inputs[0].buffer.array.reshape(-1), keep, self.scale,
                                  self.output.buffer.array.reshape(-1))

    def backward(self):
        elementwise.dropout_apply(self.output.grad.array.reshape(-1), self.keep.array, self.scale,
                                  self.grad_target(0).reshape(-1))
        self.finish_grad(0)
