"""Hooks that see every op a model runs: the module that called it, its shapes, and its forward and backward time."""
import contextlib
import time
from dataclasses import dataclass, field

from ..autograd.function import Function
from ..nn.module import Module


@dataclass
class OpCall:
    """One op applied during a recorded forward pass, with the seconds its forward and backward took."""

    index: int
    module: str
    op: str
    input_shapes: tuple
    output_shape: tuple
    needs_input_grad: tuple
    forward_seconds: float
    backward_seconds: list = field(default_factory=list)


def _shape(value):
    data = getattr(value, "data", value)
    return tuple(data.shape) if hasattr(data, "shape") else None


@contextlib.contextmanager
def record_ops(model, root_name="(model)"):
    """Record every op that runs inside the block, in forward order, and time it forward and (later) backward.

    Yields the list that fills up. Backward times are appended when the recorded graph is walked, also after
    the block has ended (the op instances keep their timing wrapper). Ops called outside any module of
    `model` (a loss function, for example) are labelled "(outside)".
    """
    names = {id(module): name or root_name for name, module in model.named_modules()}
    calls, module_stack = [], []
    original_apply, original_call = Function.__dict__["apply"], Module.__call__

    def named_call(self, *args, **kwargs):
        name = names.get(id(self))
        if name is None:
            return original_call(self, *args, **kwargs)
        module_stack.append(name)
        try:
            return original_call(self, *args, **kwargs)
        finally:
            module_stack.pop()

    def timed_apply(cls, *args, **options):
        started = time.perf_counter()
        result = original_apply.__func__(cls, *args, **options)
        seconds = time.perf_counter() - started
        op = result._op
        call = OpCall(len(calls), module_stack[-1] if module_stack else "(outside)", cls.__name__,
                      tuple(_shape(a) for a in args), _shape(result),
                      tuple(op.needs_input_grad) if op is not None else (False,) * len(args), seconds)
        calls.append(call)
        if op is not None:
            untimed_backward = op.backward

            def timed_backward(grad_output):
                begun = time.perf_counter()
                grads = untimed_backward(grad_output)
                call.backward_seconds.append(time.perf_counter() - begun)
                return grads

            op.backward = timed_backward
        return result

    Function.apply = classmethod(timed_apply)
    Module.__call__ = named_call
    try:
        yield calls
    finally:
        Function.apply = original_apply
        Module.__call__ = original_call
