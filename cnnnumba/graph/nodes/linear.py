"""The fully connected layer on (N, features) activations."""
import numpy as np

from ...kernels import matmul
from .base import Node


class Linear(Node):
    name = "linear"

    def __init__(self, x, weight, bias, output):
        super().__init__([x, weight] + ([bias] if bias is not None else []), output)
        self.empty_bias = np.zeros(0, dtype=x.dtype)

    def backward_buffers(self):
        return super().backward_buffers() + [self.inputs[0].buffer, self.inputs[1].buffer]

    def forward(self):
        bias = self.inputs[2].buffer.array if len(self.inputs) == 3 else self.empty_bias
        matmul.linear_forward(self.inputs[0].buffer.array, self.inputs[1].buffer.array, bias, self.output.buffer.array)

    def backward(self):
        grad = self.output.grad.array
        if self.needs(0):
            matmul.linear_backward_input(grad, self.inputs[1].buffer.array, self.grad_target(0))
            self.finish_grad(0)
        if self.needs(1):
            matmul.linear_backward_weight(grad, self.inputs[0].buffer.array, self.grad_target(1))
            self.finish_grad(1)
        if len(self.inputs) == 3 and self.needs(2):
            matmul.linear_backward_bias(grad, self.grad_target(2))
            self.finish_grad(2)
