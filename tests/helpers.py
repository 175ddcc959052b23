"""Shared test helpers: one call runs a computation in cnnnumba and PyTorch and compares values and gradients."""
import numpy as np
import pytest

import cnnnumba as cn

try:
    import torch
except ImportError:  # PyTorch is optional; comparison tests skip without it
    torch = None

requires_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")

TOLERANCES = {
    # dtype: (forward rtol, forward atol, gradient rtol, gradient atol)
    np.float32: (1e-4, 1e-5, 1e-3, 1e-4),
    np.float64: (1e-10, 1e-12, 1e-9, 1e-11),
}


def rms_at_least_one(array):
    if array.size == 0:
        return 1.0
    return max(1.0, float(np.sqrt(np.mean(np.square(array, dtype=np.float64)))))


def compare_with_torch(cn_fn, torch_fn, arrays, dtype=np.float64, requires_grad=None, tolerances=None, seed=0,
                       atol_per_rms=False):
    """Run cn_fn and torch_fn on Tensors made from the same arrays; compare outputs and input gradients.

    Float arrays become `dtype`; integer arrays (labels) are passed unchanged and never require grad.
    `requires_grad` is one bool per array (default: every float array). The backward pass uses the same random
    output gradient in both frameworks. Returns the cnnnumba output.
    `atol_per_rms`: each absolute tolerance counts per unit of the RMS of the PyTorch array it is held against
    (when that is above 1), for results whose rounding grows with the size of the values combined into each of
    them rather than with the result itself (Winograd convolutions: each output mixes 36 transformed products).
    """
    rtol, atol, grad_rtol, grad_atol = tolerances or TOLERANCES[dtype]
    arrays = [np.asarray(a) for a in arrays]
    arrays = [a.astype(dtype) if a.dtype.kind == "f" else a for a in arrays]
    if requires_grad is None:
        requires_grad = [a.dtype.kind == "f" for a in arrays]
    cn_inputs = [cn.Tensor(a.copy(), requires_grad=g) for a, g in zip(arrays, requires_grad)]
    torch_inputs = [torch.tensor(a.copy(), requires_grad=g) for a, g in zip(arrays, requires_grad)]
    cn_out = cn_fn(*cn_inputs)
    torch_out = torch_fn(*torch_inputs)
    expected = torch_out.detach().numpy()
    assert cn_out.shape == expected.shape, f"shape {cn_out.shape} != torch {expected.shape}"
    assert cn_out.dtype == expected.dtype, f"dtype {cn_out.dtype} != torch {expected.dtype}"
    scale = rms_at_least_one if atol_per_rms else (lambda a: 1.0)
    np.testing.assert_allclose(cn_out.data, expected, rtol=rtol, atol=atol * scale(expected),
                               err_msg="forward differs from PyTorch")
    if any(requires_grad) and torch_out.requires_grad:
        projection = np.random.default_rng(seed).standard_normal(expected.shape).astype(expected.dtype)
        cn_out.backward(projection)
        torch_out.backward(torch.tensor(projection))
        for position, (c, t) in enumerate(zip(cn_inputs, torch_inputs)):
            if t.requires_grad:
                assert c.grad is not None, f"no gradient reached input {position}"
                expected_grad = t.grad.numpy()
                np.testing.assert_allclose(c.grad, expected_grad, rtol=grad_rtol,
                                           atol=grad_atol * scale(expected_grad),
                                           err_msg=f"gradient of input {position} differs from PyTorch")
    return cn_out


def check_gradients(fn, arrays, requires_grad=None, **tolerances):
    """float64 central-difference gradcheck of fn over Tensors made from `arrays`."""
    arrays = [np.asarray(a) for a in arrays]
    if requires_grad is None:
        requires_grad = [a.dtype.kind == "f" for a in arrays]
    inputs = [cn.Tensor(np.ascontiguousarray(a, dtype=np.float64) if g else a, requires_grad=g)
              for a, g in zip(arrays, requires_grad)]
    assert cn.gradcheck(fn, inputs, **tolerances)


def random_arrays(*shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) for shape in shapes]
