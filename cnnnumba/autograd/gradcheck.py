"""Central-difference gradient checking of any function of Tensors."""
import numpy as np

from .grad_mode import no_grad
from .tensor import Tensor


class GradcheckError(AssertionError):
    """Analytic and numerical gradients disagree."""


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0, raise_exception=True):
    """Check the gradients backward computes for `fn(*inputs)` against central differences.

    Every float64 tensor in `inputs` with requires_grad is checked. Rather than the full Jacobian J, the
    check compares vᵀJ for a random v with the numerical derivative of <fn(x), v> in every input element,
    which catches the same mistakes at the cost of one backward pass. Returns True, or raises
    GradcheckError naming the input and the worst element (returns False if raise_exception is False).
    """
    if isinstance(inputs, Tensor):
        inputs = (inputs,)
    inputs = tuple(inputs)
    checked = [t for t in inputs if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: none of the inputs is a Tensor with requires_grad=True")
    for t in checked:
        if t.dtype != np.float64:
            raise TypeError(f"gradcheck needs float64 inputs for accurate differences, but got {t.dtype}")

    output = fn(*inputs)
    if not isinstance(output, Tensor):
        raise TypeError(f"gradcheck: fn must return a Tensor, but returned {type(output).__name__}")
    projection = np.random.default_rng(seed).standard_normal(output.shape)
    for t in checked:
        t.grad = None
    output.backward(projection)
    analytic = [np.zeros(t.shape) if t.grad is None else t.grad.copy() for t in checked]

    with no_grad():
        for position, (t, expected) in enumerate(zip(checked, analytic)):
            numerical = np.zeros(t.shape)
            flat, flat_numerical = t.data.reshape(-1), numerical.reshape(-1)
            if not np.shares_memory(flat, t.data):
                raise ValueError("gradcheck needs contiguous input tensors")
            for i in range(flat.size):
                original = flat[i]
                flat[i] = original + eps
                plus = float(np.sum(fn(*inputs).data * projection))
                flat[i] = original - eps
                minus = float(np.sum(fn(*inputs).data * projection))
                flat[i] = original
                flat_numerical[i] = (plus - minus) / (2 * eps)
            if not np.allclose(expected, numerical, atol=atol, rtol=rtol):
                worst = np.unravel_index(np.argmax(np.abs(expected - numerical)), t.shape)
                message = (
                    f"gradcheck: gradient of input {position} (shape {t.shape}) is wrong; worst at index {worst}: "
                    f"analytic {expected[worst]:.8g} vs numerical {numerical[worst]:.8g}"
                )
                if raise_exception:
                    raise GradcheckError(message)
                return False
    return True
