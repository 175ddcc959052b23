"""Pool ops against PyTorch (forward, backward, indices), gradcheck, and their validation errors."""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import functional as F
from tests.helpers import check_gradients, compare_with_torch, random_arrays, requires_torch, torch

DTYPES = [np.float32, np.float64]

# shape, kernel_size, stride, padding, dilation, ceil_mode
MAX_CASES = [
    ((2, 3, 6, 6), 2, None, 0, 1, False),
    ((1, 2, 7, 5), 3, 2, 1, 1, False),
    ((2, 2, 7, 5), 3, 2, 1, 1, True),
    ((1, 1, 5, 5), 2, 3, 0, 1, False),                # stride > kernel
    ((1, 2, 5, 5), 2, 3, 1, 1, True),
    ((2, 3, 8, 9), (3, 2), (1, 2), (1, 1), (2, 1), False),  # non-square, dilation
    ((1, 1, 9, 9), 3, (2, 3), (1, 0), (2, 3), True),
    ((3, 4, 4), 2, 1, 1, 1, False),                   # unbatched CHW
    ((1, 2, 1, 4), (1, 3), 1, (0, 1), 1, False),
]
AVG_CASES = [  # shape, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
    ((2, 3, 6, 6), 2, None, 0, False, True, None),
    ((1, 2, 7, 5), 3, 2, 1, False, True, None),
    ((1, 2, 7, 5), 3, 2, 1, False, False, None),
    ((2, 2, 7, 5), 3, 2, 1, True, True, None),        # ceil_mode clips the last window's divisor
    ((2, 2, 7, 5), 3, 2, 1, True, False, None),
    ((1, 1, 5, 5), 2, 3, 1, True, True, None),        # stride > kernel
    ((1, 2, 6, 7), (3, 2), (2, 1), (1, 1), False, True, 5),
    ((3, 5, 5), 3, 2, 1, True, False, None),          # unbatched CHW
]
ADAPTIVE_CASES = [
    ((2, 3, 5, 7), (3, 4)),
    ((1, 2, 4, 4), 1),
    ((1, 1, 3, 5), (5, 7)),
    ((2, 2, 6, 6), (None, 2)),
    ((3, 10, 3), (4, 2)),
]


@requires_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, kernel, stride, padding, dilation, ceil_mode", MAX_CASES)
def test_max_pool2d_matches_torch(shape, kernel, stride, padding, dilation, ceil_mode, dtype):
    args = dict(kernel_size=kernel, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    compare_with_torch(lambda x: F.max_pool2d(x, **args), lambda x: torch.nn.functional.max_pool2d(x, **args),
                       random_arrays(shape), dtype=dtype)


@requires_torch
@pytest.mark.parametrize("shape, kernel, stride, padding, dilation, ceil_mode", MAX_CASES)
def test_max_pool2d_indices_match_torch(shape, kernel, stride, padding, dilation, ceil_mode):
    x = random_arrays(shape)[0].astype(np.float32)
    args = dict(kernel_size=kernel, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    out, indices = F.max_pool2d(cn.Tensor(x), return_indices=True, **args)
    expected_out, expected_indices = torch.nn.functional.max_pool2d(torch.tensor(x), return_indices=True, **args)
    np.testing.assert_array_equal(out.data, expected_out.numpy())
    np.testing.assert_array_equal(indices.data, expected_indices.numpy())
    assert indices.dtype == np.int64


@requires_torch
def test_max_pool2d_nan_and_ties_like_torch():
    x = np.array([[1.0, np.nan, 3.0, 3.0], [np.nan, 0.0, 3.0, -np.inf], [2.0, 2.0, -np.inf, -np.inf],
                  [2.0, 2.0, -np.inf, -np.inf]], dtype=np.float32).reshape(1, 1, 4, 4)
    out, indices = F.max_pool2d(cn.Tensor(x), 2, return_indices=True)
    expected_out, expected_indices = torch.nn.functional.max_pool2d(torch.tensor(x), 2, return_indices=True)
    np.testing.assert_array_equal(out.data, expected_out.numpy())
    np.testing.assert_array_equal(indices.data, expected_indices.numpy())
    compare_with_torch(lambda t: F.max_pool2d(t, 2), lambda t: torch.nn.functional.max_pool2d(t, 2), [x],
                       dtype=np.float32)


def test_max_pool2d_without_a_gradient_computes_the_values_alone(monkeypatch):
    """No gradient to route (no_grad, or an input that needs none): no argmax is computed where the kernel can
    skip it; the values are those of the recorded op, bit for bit, NaN included."""
    from cnnnumba.kernels import pool2d

    passed = []
    kernel = pool2d.max_pool2d_forward
    monkeypatch.setattr(pool2d, "max_pool2d_forward", lambda x, out, indices, *window: (
        passed.append(indices is None), kernel(x, out, indices, *window)))
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    x[0, 1, 2, 3] = np.nan
    recorded = F.max_pool2d(cn.Tensor(x, requires_grad=True), 2)
    with cn.no_grad():
        alone = F.max_pool2d(cn.Tensor(x, requires_grad=True), 2)
    plain = F.max_pool2d(cn.Tensor(x), 2)
    padded = F.max_pool2d(cn.Tensor(x), 3, 2, 1)  # a window only the indexed kernels run
    assert passed == [False, True, True, False]
    np.testing.assert_array_equal(alone.data, recorded.data)
    np.testing.assert_array_equal(plain.data, recorded.data)
    assert padded.shape == (2, 3, 4, 4)


@requires_torch
def test_max_pool2d_non_contiguous_input():
    x = random_arrays((2, 7, 6, 3))[0].transpose(0, 3, 1, 2)  # an NHWC array viewed as NCHW
    compare_with_torch(lambda t: F.max_pool2d(t[:, :, ::1, 1:], 2, 1),
                       lambda t: torch.nn.functional.max_pool2d(t[:, :, ::1, 1:], 2, 1), [x])
    out = F.max_pool2d(cn.Tensor(x), 3, 2, 1)
    np.testing.assert_array_equal(out.data, torch.nn.functional.max_pool2d(torch.tensor(x), 3, 2, 1).numpy())


@requires_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, kernel, stride, padding, ceil_mode, count_include_pad, divisor", AVG_CASES)
def test_avg_pool2d_matches_torch(shape, kernel, stride, padding, ceil_mode, count_include_pad, divisor, dtype):
    args = dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode,
                count_include_pad=count_include_pad, divisor_override=divisor)
    compare_with_torch(lambda x: F.avg_pool2d(x, **args), lambda x: torch.nn.functional.avg_pool2d(x, **args),
                       random_arrays(shape), dtype=dtype)


@requires_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, output_size", ADAPTIVE_CASES)
def test_adaptive_avg_pool2d_matches_torch(shape, output_size, dtype):
    compare_with_torch(lambda x: F.adaptive_avg_pool2d(x, output_size),
                       lambda x: torch.nn.functional.adaptive_avg_pool2d(x, output_size), random_arrays(shape),
                       dtype=dtype)


@pytest.mark.parametrize("fn", [
    lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True),
    lambda x: F.max_pool2d(x, (2, 3), 1, (1, 1), dilation=(2, 1)),
    lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True),
    lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
    lambda x: F.avg_pool2d(x, 2, divisor_override=3),
    lambda x: F.adaptive_avg_pool2d(x, (3, 2)),
    lambda x: F.adaptive_avg_pool2d(x, 1),
])
def test_pool_gradcheck(fn):
    check_gradients(fn, random_arrays((2, 2, 5, 6)))


def test_pool_keeps_float32_and_accepts_an_empty_batch():
    out = F.max_pool2d(cn.Tensor(np.zeros((0, 2, 4, 4), np.float32)), 2)
    assert out.shape == (0, 2, 2, 2) and out.dtype == np.float32
    assert F.avg_pool2d(cn.Tensor(np.ones((1, 1, 4, 4), np.float32)), 2).dtype == np.float32


@pytest.mark.parametrize("call, error, message", [
    (lambda x: F.max_pool2d(x, 3, padding=2), ValueError, "pad should be at most half of effective kernel size"),
    (lambda x: F.avg_pool2d(x, 2, padding=2), ValueError, "pad should be at most half of effective kernel size"),
    (lambda x: F.max_pool2d(x, 2, stride=0), ValueError, "stride should not be zero"),
    (lambda x: F.max_pool2d(x, 2, stride=-1), ValueError, "stride should be greater than zero"),
    (lambda x: F.max_pool2d(x, 0), ValueError, "kernel size should be greater than zero"),
    (lambda x: F.max_pool2d(x, 2, padding=-1), ValueError, "pad must be non-negative"),
    (lambda x: F.max_pool2d(x, 2, dilation=0), ValueError, "dilation should be greater than zero"),
    (lambda x: F.max_pool2d(x, (2, 2, 2)), ValueError, "kernel_size must either be a single int, or a tuple of two"),
    (lambda x: F.max_pool2d(x, 7), ValueError, r"Given input size: \(2, 5, 6\). Output size is too small"),
    (lambda x: F.avg_pool2d(x, 2, divisor_override=0), ValueError, "divisor must be not zero"),
    (lambda x: F.avg_pool2d(x, 2, divisor_override=1.5), TypeError, "divisor_override must be an int"),
    (lambda x: F.adaptive_avg_pool2d(x, (1, 2, 3)), ValueError, "output_size must be 2"),
    (lambda x: F.adaptive_avg_pool2d(x, (-1, 1)), ValueError,
     "elements of output_size must be greater than or equal to 0"),
    (lambda x: F.max_pool2d(x[0, 0], 2), ValueError, r"expected a 3D \(C, H, W\) or 4D .* got shape \(5, 6\)"),
    (lambda x: F.avg_pool2d(x.reshape(1, 2, 2, 5, 6), 2), ValueError, r"got shape \(1, 2, 2, 5, 6\)"),
    (lambda x: F.max_pool2d(cn.Tensor(np.zeros((1, 0, 4, 4), np.float32)), 2), ValueError, "non-zero C, H and W"),
    (lambda x: F.max_pool2d(cn.Tensor(np.zeros((1, 1, 4, 4), np.int64)), 2), TypeError,
     "expected a float32 or float64 input, but got int64"),
    (lambda x: F.adaptive_avg_pool2d(x.data, 2), TypeError, "must be a Tensor, but got ndarray"),
])
def test_pool_validation_errors(call, error, message):
    with pytest.raises(error, match=message):
        call(cn.Tensor(np.zeros((2, 2, 5, 6), np.float32)))
