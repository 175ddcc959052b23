"""The op base class and the backward walk: each op's forward and backward live side by side in one subclass."""
import threading

import numpy as np

from . import anomaly as _anomaly
from .grad_mode import is_grad_enabled

# Graph capture (cnnnumba.graph) registers tracers here; apply() tells each one about every op it runs.
# Per thread, so a capture in one thread does not see another thread's eager work.
_tracing = threading.local()


def active_tracers():
    """The list of tracers notified by Function.apply in this thread (created empty on first use)."""
    tracers = getattr(_tracing, "tracers", None)
    if tracers is None:
        tracers = _tracing.tracers = []
    return tracers


class Function:
    """One differentiable operation.

    A subclass defines ``forward(*args, **options)`` on ndarrays (Tensors among the positional arguments are
    unwrapped before it runs) returning one ndarray, and ``backward(grad_output)`` returning one gradient per
    positional argument of forward, ``None`` where no gradient is needed (see ``needs_input_grad``). Forward
    saves on ``self`` only what backward reads.
    """

    needs_input_grad = ()

    def forward(self, *args, **options):
        raise NotImplementedError

    def backward(self, grad_output):
        raise NotImplementedError

    @classmethod
    def apply(cls, *args, **options):
        from .tensor import Tensor

        op = cls()
        needs = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
        record = is_grad_enabled() and any(needs)
        op.needs_input_grad = needs if record else (False,) * len(args)
        output = op.forward(*(a.data if isinstance(a, Tensor) else a for a in args), **options)
        if _anomaly.active_threads and _anomaly.enabled_here():
            _anomaly.on_forward(op, [a.data if isinstance(a, Tensor) else a for a in args], output)
        result = Tensor._wrap(output, record)
        if record:
            op.parents = tuple((i, a) for i, a in enumerate(args) if needs[i])
            result._op = op
        tracers = getattr(_tracing, "tracers", None)
        if tracers:
            for tracer in tracers:
                tracer.record(op, args, options, result)
        return result

    def __repr__(self):
        return f"<{type(self).__name__}Backward>"


def _topological_order(root):
    """Tensors reachable from root through recorded ops, every tensor after all tensors that consume it."""
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        tensor, expanded = stack.pop()
        if expanded:
            order.append(tensor)
            continue
        if id(tensor) in visited:
            continue
        visited.add(id(tensor))
        stack.append((tensor, True))
        if tensor._op is not None:
            for _, parent in tensor._op.parents:
                if id(parent) not in visited:
                    stack.append((parent, False))
    order.reverse()
    return order


_post_backward_hooks = {}


class RemovableHandle:
    """What `register_post_backward_hook` returns: `handle.remove()` unregisters the hook."""

    def __init__(self, hooks, key):
        self._hooks, self._key = hooks, key

    def remove(self):
        self._hooks.pop(self._key, None)


def register_post_backward_hook(hook):
    """Call `hook(leaves)` at the end of every `backward()`, with the tuple of leaf tensors whose `.grad` it added
    to (DistributedDataParallel averages its parameters' gradients across ranks there)."""
    if not callable(hook):
        raise TypeError(f"register_post_backward_hook expected a callable, but got {type(hook).__name__}")
    key = object()
    _post_backward_hooks[key] = hook
    return RemovableHandle(_post_backward_hooks, key)


def run_backward(root, grad):
    """Propagate `grad` (d something / d root) to every leaf that requires grad, adding into `.grad`, then run the
    post-backward hooks."""
    leaves = []
    _walk_backward(root, grad, leaves)
    for hook in list(_post_backward_hooks.values()):
        hook(tuple(leaves))


def _walk_backward(root, grad, leaves):
    pending = {id(root): grad}
    for tensor in _topological_order(root):
        grad_output = pending.pop(id(tensor), None)
        if grad_output is None:
            continue
        op = tensor._op
        if op is None:
            if tensor.requires_grad:
                if tensor.grad is None:
                    tensor.grad = np.array(grad_output, dtype=tensor.dtype, copy=True)
                else:
                    tensor.grad += grad_output
                leaves.append(tensor)
            continue
        input_grads = op.backward(grad_output)
        if not isinstance(input_grads, tuple):
            input_grads = (input_grads,)
        if _anomaly.active_threads and _anomaly.enabled_here():
            _anomaly.on_backward(op, grad_output, input_grads)
        for index, parent in op.parents:
            input_grad = input_grads[index]
            if input_grad is None:
                continue
            if input_grad.shape != parent.shape:
                raise RuntimeError(
                    f"{type(op).__name__}.backward returned a gradient of shape {input_grad.shape} "
                    f"for an input of shape {parent.shape}"
                )
            key = id(parent)
            if key in pending:
                pending[key] = pending[key] + input_grad
            else:
                pending[key] = input_grad
