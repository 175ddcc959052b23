"""Tracing: record every op a forward applies (op, arguments, options, output), lean enough to keep no activation."""
import math
import weakref

import numpy as np

from ..autograd import function as function_module
from ..autograd.tensor import Tensor


class Tracer:
    """Collects (op, args, options, output) for every Function applied while it is active in this thread.

    With `keep_values=False` it keeps what the lowering reads and nothing more: each output is recorded as a
    `TracedResult` (shape, dtype and identity; later records name it as their argument) and each op without the
    arrays its forward saved for backward, so a traced forward holds no activation once the model's own code has
    dropped it. That is what keeps capture's recording step within the graph's own memory.
    """

    def __init__(self, keep_values=True):
        self.records = []
        self.keep_values = keep_values
        self._stand_ins = {}  # id(output) -> (weak reference to the output, its TracedResult)

    def record(self, op, args, options, result):
        if not self.keep_values:
            args = tuple(self.stand_in(a) for a in args)
            op = _without_saved_arrays(op)
            traced = TracedResult(result)
            self._stand_ins[id(result)] = (weakref.ref(result), traced)
            result = traced
        self.records.append((op, args, options, result))

    def stand_in(self, value):
        """The TracedResult recorded for `value` when it is the output of a traced op, else `value` itself."""
        entry = self._stand_ins.get(id(value)) if isinstance(value, Tensor) else None
        if entry is not None and entry[0]() is value:  # the same object, not a later one at a reused address
            return entry[1]
        return value

    def __enter__(self):
        function_module.active_tracers().append(self)
        return self

    def __exit__(self, *exc):
        function_module.active_tracers().remove(self)


class TracedResult(Tensor):
    """An op's output as a lean trace keeps it: shape, dtype and identity, not the values."""

    def __init__(self, tensor):  # Tensor.__init__ would keep an array; this keeps none
        self._shape, self._dtype = tuple(tensor.shape), tensor.dtype
        self.grad, self._op, self._requires_grad = None, None, False

    shape = property(lambda self: self._shape)
    dtype = property(lambda self: self._dtype)
    ndim = property(lambda self: len(self._shape))
    size = property(lambda self: math.prod(self._shape))

    @property
    def data(self):
        raise RuntimeError("a traced result keeps the shape and dtype of an op's output, not its values")

    def __repr__(self):
        return f"TracedResult(shape={self._shape}, dtype={self._dtype})"


def _holds_arrays(value):
    if isinstance(value, (np.ndarray, Tensor)):
        return True
    if isinstance(value, (tuple, list)):
        return any(_holds_arrays(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_arrays(v) for v in value.values())
    return False


def _without_saved_arrays(op):
    """A copy of `op` without the arrays (and parent tensors) its forward kept for backward: the lowering reads an
    op's type and options, never what it saved."""
    copy = object.__new__(type(op))
    copy.__dict__.update((name, value) for name, value in vars(op).items() if not _holds_arrays(value))
    return copy
