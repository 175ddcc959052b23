"""Dropout op: statistics, reproducibility under cn.manual_seed, gradients, p edge cases, validation."""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import functional as F
from tests.helpers import check_gradients, random_arrays


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_keeps_about_one_minus_p_and_scales_the_rest(p, dtype):
    x = cn.Tensor(np.ones((100, 200), dtype=dtype), requires_grad=True)
    y = F.dropout(x, p)
    assert y.dtype == dtype and y.shape == x.shape
    kept = y.data != 0
    assert abs(kept.mean() - (1 - p)) < 0.015
    np.testing.assert_allclose(y.data[kept], 1 / (1 - p), rtol=1e-6)
    y.backward(np.full(y.shape, 2.0, dtype=dtype))
    np.testing.assert_allclose(x.grad, 2 * y.data, rtol=1e-6)


def test_dropout_is_reproducible_with_manual_seed_and_differs_between_calls():
    x = cn.Tensor(np.ones((8, 50), dtype=np.float32))
    cn.manual_seed(123)
    first, second = F.dropout(x).data, F.dropout(x).data
    cn.manual_seed(123)
    np.testing.assert_array_equal(F.dropout(x).data, first)
    assert not np.array_equal(first, second)


def test_dropout_p_zero_one_and_eval():
    x = cn.Tensor(random_arrays((4, 5))[0], requires_grad=True)
    np.testing.assert_array_equal(F.dropout(x, 0.0).data, x.data)
    zeros = F.dropout(x, 1.0)
    np.testing.assert_array_equal(zeros.data, np.zeros((4, 5)))
    zeros.backward(np.ones((4, 5)))
    np.testing.assert_array_equal(x.grad, np.zeros((4, 5)))
    assert F.dropout(x, 0.5, training=False) is x


def test_dropout_non_contiguous_input():
    base = random_arrays((6, 8))[0]
    cn.manual_seed(5)
    got = F.dropout(cn.Tensor(base.T), 0.3).data
    cn.manual_seed(5)
    expected = F.dropout(cn.Tensor(base.T.copy()), 0.3).data
    np.testing.assert_array_equal(got, expected)


def test_dropout_gradcheck():
    def fn(x):
        cn.manual_seed(7)  # the same mask on every evaluation
        return F.dropout(x, 0.4)
    check_gradients(fn, random_arrays((3, 5)))


@pytest.mark.parametrize("call, error, message", [
    (lambda x: F.dropout(x, 1.5), ValueError, "dropout probability has to be between 0 and 1, but got 1.5"),
    (lambda x: F.dropout(x, -0.1), ValueError, "dropout probability has to be between 0 and 1, but got -0.1"),
    (lambda x: F.dropout(x, "0.5"), TypeError, "p must be a number"),
    (lambda x: F.dropout(cn.Tensor(np.arange(3))), TypeError, "expected a float32 or float64 input, but got int64"),
    (lambda x: F.dropout(x.data), TypeError, "must be a Tensor, but got ndarray"),
])
def test_dropout_validation_errors(call, error, message):
    with pytest.raises(error, match=message):
        call(cn.Tensor(np.ones(3, np.float32)))
