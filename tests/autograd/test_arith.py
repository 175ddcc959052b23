"""Tensor arithmetic (+ - * / @, unary minus, powers, reshape, flatten, sum/mean, indexing) vs PyTorch and gradcheck."""
import numpy as np
import pytest

import cnnnumba as cn
from tests.helpers import check_gradients, compare_with_torch, random_arrays, requires_torch, torch

BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / (b * b + 1),
}
BROADCAST_SHAPES = [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 4), (3, 1)), ((1,), (2, 3)), ((), (2, 3)),
                    ((2, 3), ())]


@requires_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shapes", BROADCAST_SHAPES)
@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_ops_broadcast_like_torch(name, shapes, dtype):
    compare_with_torch(BINARY[name], BINARY[name], random_arrays(*shapes), dtype=dtype)


@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_ops_gradcheck(name):
    check_gradients(BINARY[name], random_arrays((2, 1, 3), (4, 1)))


@requires_torch
@pytest.mark.parametrize("fn", [
    lambda a: a + 2.5, lambda a: 2.5 - a, lambda a: a * 3, lambda a: 1 / (a * a + 1), lambda a: -a,
    lambda a: a ** 2, lambda a: (a * a + 1) ** 0.5, lambda a: (a * a + 1).log(), lambda a: a.exp(),
])
def test_scalar_and_unary_ops_like_torch(fn):
    compare_with_torch(fn, fn, random_arrays((3, 4)))
    compare_with_torch(fn, fn, random_arrays((3, 4)), dtype=np.float32)
    check_gradients(fn, random_arrays((2, 3)))


def test_python_scalars_keep_the_tensor_dtype():
    a = cn.Tensor(np.ones(3, np.float32))
    for result in (a + 1.5, 2.0 * a, a / 3, 1 - a, -a, a ** 2):
        assert result.dtype == np.float32


@requires_torch
@pytest.mark.parametrize("shapes", [((4, 3), (3, 2)), ((3,), (3, 2)), ((4, 3), (3,)), ((3,), (3,)),
                                    ((2, 1, 4, 3), (5, 3, 2)), ((2, 4, 3), (3, 5))])
def test_matmul_operator_like_torch(shapes):
    compare_with_torch(lambda a, b: a @ b, lambda a, b: a @ b, random_arrays(*shapes))
    check_gradients(lambda a, b: a @ b, random_arrays(*shapes))


@requires_torch
@pytest.mark.parametrize("fn", [
    lambda a: a.reshape(6, 4), lambda a: a.reshape(-1), lambda a: a.reshape((4, -1)), lambda a: a.view(2, 12),
    lambda a: a.flatten(), lambda a: a.flatten(1), lambda a: a.flatten(0, 1), lambda a: a.flatten(-2, -1),
    lambda a: a.transpose(0, 2), lambda a: a.permute(2, 0, 1), lambda a: a[0].T,
])
def test_shape_ops_like_torch(fn):
    compare_with_torch(fn, fn, random_arrays((2, 3, 4)))
    check_gradients(fn, random_arrays((2, 3, 4)))


@requires_torch
@pytest.mark.parametrize("fn", [
    lambda a: a.sum(), lambda a: a.mean(), lambda a: a.sum(1), lambda a: a.sum(-1, keepdim=True),
    lambda a: a.sum((0, 2)), lambda a: a.mean(0), lambda a: a.mean((1, 2), keepdim=True),
    lambda a: a.mean(dim=-2), lambda a: (a * a).sum(dim=(0, 1)),
])
def test_reductions_like_torch(fn):
    compare_with_torch(fn, fn, random_arrays((2, 3, 4)))
    compare_with_torch(fn, fn, random_arrays((2, 3, 4)), dtype=np.float32)
    check_gradients(fn, random_arrays((2, 3, 4)))


@requires_torch
@pytest.mark.parametrize("fn", [
    lambda a: a[0], lambda a: a[:, 1], lambda a: a[..., ::2], lambda a: a[1:, :2, 1:3], lambda a: a[-1, -1],
    lambda a: a[:, [0, 2, 0]],  # repeated index: gradients accumulate
])
def test_indexing_like_torch(fn):
    compare_with_torch(fn, fn, random_arrays((2, 3, 4)))
    check_gradients(fn, random_arrays((2, 3, 4)))


def test_gradient_accumulates_over_shared_subexpressions():
    a = cn.Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    b = a * a
    (b + b * a).sum().backward()
    np.testing.assert_allclose(a.grad, 2 * a.data + 3 * a.data ** 2)


@pytest.mark.parametrize("call, error, message", [
    (lambda a: a.reshape(5, 5), ValueError, r"shape \(5, 5\) is invalid for input of size 24"),
    (lambda a: a.sum(3), IndexError, r"Dimension out of range \(expected to be in range of \[-3, 2\], but got 3\)"),
    (lambda a: a.flatten(2, 1), ValueError, r"start_dim \(2\) cannot come after end_dim \(1\)"),
    (lambda a: a.permute(0, 0, 1), ValueError, "not a permutation"),
    (lambda a: a @ cn.Tensor(np.ones((3, 2))), ValueError, "cannot be multiplied"),
    (lambda a: a + cn.Tensor(np.ones(4, np.float32)), TypeError, "different dtypes: float64 and float32"),
    (lambda a: a ** a, TypeError, "only a Python number is supported as the exponent"),
])
def test_arith_validation_errors(call, error, message):
    with pytest.raises(error, match=message):
        call(cn.Tensor(np.ones((2, 3, 4))))
