"""The node for an op the lowering has no node for: the op's own forward and backward on NCHW arrays."""
import numpy as np

from .base import Node, Value


class Fallback(Node):
    """An op the lowering has no node for: its own Function forward and backward on NCHW arrays (not planned)."""

    def __init__(self, function_class, arguments, options, output, needs_input_grad):
        values = [a for a in arguments if isinstance(a, Value)]
        super().__init__(values, output)
        self.function_class, self.arguments, self.options = function_class, arguments, options
        self.needs_input_grad = needs_input_grad
        self.name = f"fallback[{function_class.__name__}]"
        self.op = None

    def replace_input(self, old, new):
        super().replace_input(old, new)
        self.arguments = [new if argument is old else argument for argument in self.arguments]

    @staticmethod
    def _public(value):
        array = value.buffer.array
        return array.transpose(0, 3, 1, 2) if value.nhwc else array

    def forward(self):
        self.op = self.function_class()
        self.op.needs_input_grad = self.needs_input_grad
        # copies, never views: an op may keep its input for backward, and a planned buffer is reused once read
        arrays = [np.array(self._public(a), order="C") if isinstance(a, Value) else a for a in self.arguments]
        result = self.op.forward(*arrays, **self.options)
        out = self.output.buffer.array
        np.copyto(out, result.transpose(0, 2, 3, 1) if self.output.nhwc else result)

    def backward(self):
        grad = self.output.grad.array
        grads = self.op.backward(np.ascontiguousarray(grad.transpose(0, 3, 1, 2) if self.output.nhwc else grad))
        if not isinstance(grads, tuple):
            grads = (grads,)
        k = 0
        for position, argument in enumerate(self.arguments):
            if not isinstance(argument, Value):
                continue
            if self.needs(k):
                gradient = grads[position]
                self.deliver(k, gradient.transpose(0, 2, 3, 1) if argument.nhwc else gradient)
            k += 1
        self.op = None
