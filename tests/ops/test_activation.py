"""Activation ops against PyTorch, gradcheck, and their validation errors."""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import functional as F
from tests.helpers import check_gradients, compare_with_torch, random_arrays, requires_torch, torch

ACTIVATIONS = {  # name: (cnnnumba, torch)
    "relu": (F.relu, lambda x: torch.relu(x)),
    "leaky_relu": (F.leaky_relu, lambda x: torch.nn.functional.leaky_relu(x)),
    "leaky_relu_0.2": (lambda x: F.leaky_relu(x, 0.2), lambda x: torch.nn.functional.leaky_relu(x, 0.2)),
    "leaky_relu_negative": (lambda x: F.leaky_relu(x, negative_slope=-0.5),
                            lambda x: torch.nn.functional.leaky_relu(x, negative_slope=-0.5)),
    "relu6": (F.relu6, lambda x: torch.nn.functional.relu6(x)),
    "hardtanh": (F.hardtanh, lambda x: torch.nn.functional.hardtanh(x)),
    "hardtanh_bounds": (lambda x: F.hardtanh(x, -0.5, 2.0), lambda x: torch.nn.functional.hardtanh(x, -0.5, 2.0)),
    "gelu": (F.gelu, lambda x: torch.nn.functional.gelu(x)),
    "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"),
                  lambda x: torch.nn.functional.gelu(x, approximate="tanh")),
    "sigmoid": (F.sigmoid, torch.sigmoid if torch else None),
    "tanh": (F.tanh, torch.tanh if torch else None),
}
SHAPES = [(5,), (2, 3, 4, 5), (1, 1), (0, 3)]


def _with_specials(shape):
    x = random_arrays(shape)[0] * 3
    flat = x.reshape(-1)
    specials = [0.0, 40.0, -40.0, 1000.0, -1000.0]
    flat[:min(flat.size, len(specials))] = specials[:flat.size]
    return x


@requires_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_matches_torch(name, shape, dtype):
    ours, theirs = ACTIVATIONS[name]
    compare_with_torch(ours, theirs, [_with_specials(shape)], dtype=dtype)


@requires_torch
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_of_non_contiguous_input_and_large_sizes(name):
    ours, theirs = ACTIVATIONS[name]
    x = random_arrays((40, 1100, 2))[0][:, ::2, 1].T.copy().T  # non-contiguous, larger than one kernel chunk
    assert not x.flags.c_contiguous
    compare_with_torch(ours, theirs, [x], dtype=np.float64)
    compare_with_torch(lambda t: ours(t.T), lambda t: theirs(t.T), [random_arrays((300, 250))[0]],
                       dtype=np.float32)


@requires_torch
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_nan_and_inf_like_torch(name):
    ours, theirs = ACTIVATIONS[name]
    # PyTorch's vectorized float32 gelu gives NaN at +inf (its scalar path gives inf): infinities left out there
    values = [np.nan, 0.0, -0.0] if name.startswith("gelu") else [np.nan, np.inf, -np.inf, 0.0, -0.0]
    x = np.array(values, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        got = ours(cn.Tensor(x)).data
    np.testing.assert_array_equal(got, theirs(torch.tensor(x)).numpy())


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_gradcheck(name):
    x = random_arrays((3, 7))[0]
    x[np.abs(x) < 1e-3] = 0.5  # no kinks within eps of a difference step
    check_gradients(ACTIVATIONS[name][0], [x])


@pytest.mark.parametrize("call, error, message", [
    (lambda x: F.gelu(x, approximate="fast"), ValueError, "approximate argument must be either none or tanh"),
    (lambda x: F.leaky_relu(x, "0.1"), TypeError, "negative_slope must be a number"),
    (lambda x: F.hardtanh(x, 1.0, -1.0), ValueError, r"max_val \(-1.0\) must be greater than or equal to min_val"),
    (lambda x: F.hardtanh(x, None), TypeError, "min_val must be a number"),
    (lambda x: F.relu(cn.Tensor(np.arange(3))), TypeError, "expected a float32 or float64 input, but got int64"),
    (lambda x: F.sigmoid(x.data), TypeError, "argument 'input' must be a Tensor, but got ndarray"),
])
def test_activation_validation_errors(call, error, message):
    with pytest.raises(error, match=message):
        call(cn.Tensor(np.zeros(3, np.float32)))


@requires_torch
def test_relu6_module_matches_torch_at_its_bounds():
    x = np.array([-1.0, 0.0, -0.0, 3.0, 6.0, 7.0, np.inf, -np.inf], np.float64)
    ours, theirs = cn.Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    out = cn.nn.ReLU6()(ours)
    expected = torch.nn.ReLU6()(theirs)
    np.testing.assert_array_equal(out.data, expected.detach().numpy())
    out.sum().backward()
    expected.sum().backward()
    np.testing.assert_array_equal(ours.grad, theirs.grad.numpy())
    assert repr(cn.nn.ReLU6()) == "ReLU6()" and repr(cn.nn.Hardtanh(-2, 2)) == "Hardtanh(min_val=-2, max_val=2)"


@requires_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bounds", [(0.0, 6.0), (-1.0, 2.0), (-0.5, 0.1)])
def test_hardtanh_at_its_bounds_and_nan_matches_torch(bounds, dtype):
    """Exactly at either bound the gradient is 0; NaN stays NaN forward and gets no gradient, as in PyTorch's
    vectorized loop (64 contiguous elements: no element is left to its scalar loop, which passes NaN's gradient)."""
    lower, upper = (dtype(b) for b in bounds)
    x = np.tile(np.array([lower, upper, np.nan, lower - 1, upper + 1, (lower + upper) / 2, np.inf, -np.inf],
                         dtype), 8)
    grad = np.random.default_rng(0).standard_normal(x.size).astype(dtype)
    ours, theirs = cn.Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    out = F.hardtanh(ours, *bounds)
    expected = torch.nn.functional.hardtanh(theirs, *bounds)
    np.testing.assert_array_equal(out.data, expected.detach().numpy())
    out.backward(grad)
    expected.backward(torch.from_numpy(grad))
    np.testing.assert_array_equal(ours.grad, theirs.grad.numpy())
    assert (ours.grad[5::8] != 0).all() and (ours.grad[np.arange(x.size) % 8 != 5] == 0).all()
