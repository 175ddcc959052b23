"""The per-channel block sums of the fused batch-norm passes (kernels/channel_blocks.py) against float64 NumPy."""
import numba
import numpy as np
import pytest

from cnnnumba.kernels import fused
from cnnnumba.kernels.channel_blocks import block_grad_sums, block_masked_grad_sums, block_moments

ROWS, CHANNELS = 37, 32  # an odd row count: the even/odd accumulator sets end unevenly


@numba.njit
def _moments(x, first, begin, end, deviations, squares):
    for c0 in range(0, x.shape[1], 16):
        block_moments(x, first, begin, end, c0, deviations, squares)


@numba.njit
def _grad_sums(grad_y, x, begin, end, mean, coefficients, lower, upper, partial_dy, partial_dy_xhat, chunk):
    for c0 in range(0, x.shape[1], 16):
        block_grad_sums(grad_y, x, begin, end, c0, mean, coefficients, lower, upper, partial_dy, partial_dy_xhat,
                        chunk)


@numba.njit
def _masked_grad_sums(grad_y, y, x, begin, end, mean, lower, upper, grad_shortcut, partial_dy, partial_dy_xhat,
                      chunk):
    for c0 in range(0, x.shape[1], 16):
        block_masked_grad_sums(grad_y, y, x, begin, end, c0, mean, lower, upper, grad_shortcut, partial_dy,
                               partial_dy_xhat, chunk)


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((ROWS, CHANNELS)) * 3 + 5).astype(np.float32)
    grad_y = rng.standard_normal((ROWS, CHANNELS)).astype(np.float32)
    return x, grad_y, x.mean(0, dtype=np.float64)


def test_block_moments_add_the_deviations_from_a_row_and_their_squares():
    x, _, _ = _arrays()
    deviations, squares = np.full(CHANNELS, 0.5), np.full(CHANNELS, 0.25)  # added to, not overwritten
    _moments(x, 3, 2, ROWS - 1, deviations, squares)
    d = x[2:ROWS - 1].astype(np.float64) - x[3].astype(np.float64)
    np.testing.assert_allclose(deviations, 0.5 + d.sum(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(squares, 0.25 + (d * d).sum(0), rtol=1e-12, atol=1e-12)


def test_block_grad_sums_mask_the_gradient_where_the_pre_activation_is_clamped():
    x, grad_y, mean = _arrays(1)
    coefficients = np.zeros((7, CHANNELS), np.float32)
    coefficients[0], coefficients[1], coefficients[2] = mean, 0.7, -0.1  # centre, scale, shift
    partial_dy, partial_dy_xhat = np.zeros((2, CHANNELS)), np.zeros((2, CHANNELS))
    lower, upper = fused.clamp_bounds(fused.RELU, x.dtype)
    _grad_sums(grad_y, x, 0, ROWS, mean, coefficients, lower, upper, partial_dy, partial_dy_xhat, 1)
    pre_activation = (x - coefficients[0]) * coefficients[1] + coefficients[2]
    g = np.where(pre_activation > 0, grad_y, 0).astype(np.float64)
    assert not partial_dy[0].any() and not partial_dy_xhat[0].any()  # only the chunk's row
    np.testing.assert_allclose(partial_dy[1], g.sum(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(partial_dy_xhat[1], (g * (x - mean)).sum(0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("clamp", [fused.RELU, (0.0, 6.0)])
def test_block_masked_grad_sums_store_the_masked_gradient_and_sum_it(clamp):
    x, grad_y, mean = _arrays(2)
    y = (x - 5).astype(np.float32) * 2
    grad_shortcut = np.full_like(x, np.nan)
    partial_dy, partial_dy_xhat = np.zeros((1, CHANNELS)), np.zeros((1, CHANNELS))
    lower, upper = fused.clamp_bounds(clamp, x.dtype)
    _masked_grad_sums(grad_y, y, x, 0, ROWS, mean, lower, upper, grad_shortcut, partial_dy, partial_dy_xhat, 0)
    g = np.where((y > lower) & (y < upper), grad_y, np.float32(0))
    np.testing.assert_array_equal(grad_shortcut, g)
    np.testing.assert_allclose(partial_dy[0], g.astype(np.float64).sum(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(partial_dy_xhat[0], (g.astype(np.float64) * (x - mean)).sum(0), rtol=1e-12,
                               atol=1e-12)
