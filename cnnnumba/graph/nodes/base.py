"""What every graph node is built from: `Value` (one tensor of the traced program), `Node` (inputs, output,
gradient delivery), `rows`, and the names of the activations a node applies.

Inside a graph every 4-D activation is NHWC (channels innermost, what the kernels want); 2-D activations are
(N, features). Parameters keep PyTorch's layouts and are re-laid-out by the node that reads them.
"""
import operator

import numpy as np

from ...kernels.fused import NO_CLAMP, RELU
from ..plan import Buffer

RELU6 = (0.0, 6.0)


class Value:
    """One tensor of the traced program: where it lives (`buffer`), its gradient's buffer, who makes and reads it."""

    def __init__(self, shape, dtype, name, kind="activation", fixed=None, tensor=None):
        self.shape, self.dtype, self.name, self.kind = tuple(shape), np.dtype(dtype), name, kind
        self.buffer = Buffer(shape, dtype, name, fixed=fixed)
        self.tensor = tensor  # the Parameter, for kind == "param"
        self.needs_grad = False
        self.grad = None  # a Buffer, made by the lowering when needs_grad
        self.producer = None
        self.traced_id = None  # id of the traced tensor it holds: its use count says whether a fusion may absorb it
        self.label = None  # what a value the lowering made is named after, before its number (see lower.number_values)

    @property
    def nhwc(self):
        return self.kind == "activation" and len(self.shape) == 4


def rows(array):
    """A channels-innermost array as (rows, C): NHWC as (N*H*W, C), (N, C) as is."""
    return array.reshape(-1, array.shape[-1])


def activation_name(clamp):
    """The name of the activation a node applies as the clamp (lower, upper) of kernels/fused.py: "relu",
    "relu6" or "hardtanh", "" for none."""
    return {NO_CLAMP: "", RELU: "relu", RELU6: "relu6"}.get(tuple(clamp), "hardtanh")


def with_activation(name, clamp):
    """`name` followed by "+" and the activation, if any (conv+relu, batchnorm+relu6)."""
    activation = activation_name(clamp)
    return f"{name}+{activation}" if activation else name


class Node:
    """Base: `inputs` (Values), `output` (a Value); grad_targets[k] says where input k's gradient goes."""

    name = "node"

    def __init__(self, inputs, output):
        self.inputs, self.output = list(inputs), output
        self.accumulate = [False] * len(self.inputs)
        self.scratch = [None] * len(self.inputs)

    def forward_buffers(self):
        return [v.buffer for v in self.inputs] + [self.output.buffer]

    def backward_buffers(self):
        """Buffers backward reads or writes (besides the input gradients, which the lowering adds)."""
        return [self.output.grad] if self.output.grad is not None else []

    def grad_target(self, k):
        """Where input k's gradient is written: its gradient buffer, or a scratch when it must be added in."""
        return (self.scratch[k] if self.accumulate[k] else self.inputs[k].grad).array

    def finish_grad(self, k):
        if self.accumulate[k]:
            target = self.inputs[k].grad.array
            np.add(target, self.scratch[k].array, out=target)

    def deliver(self, k, gradient):
        """Write (or add) an already computed gradient array into input k's gradient."""
        target = self.inputs[k].grad.array
        if self.accumulate[k]:
            np.add(target, gradient, out=target)
        else:
            np.copyto(target, gradient)

    def replace_input(self, old, new):
        """Read Value `new` wherever this node read `old` (a fusion pass removed the node that made `old`)."""
        self.inputs = [new if value is old else value for value in self.inputs]

    def needs(self, k):
        return self.inputs[k].needs_grad

    def bound(self, name, arrays, bind):
        """The kernel call bind() returns (a pass bound to its arrays: kernels.conv2d.bind_forward and its twins),
        made at the first call and again whenever one of `arrays` (those it derives its own from) is no longer the
        same object, so each step skips the checks, planning and scratch views."""
        calls = self.__dict__.setdefault("_bound_calls", {})
        entry = calls.get(name)
        if entry is None or not all(map(operator.is_, entry[0], arrays)):
            entry = calls[name] = (arrays, bind())
        return entry[1]

    def __repr__(self):
        return f"{self.name}({', '.join(v.name for v in self.inputs)} -> {self.output.name})"
