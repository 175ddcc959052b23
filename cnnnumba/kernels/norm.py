"""Batch-normalization kernels on channels-innermost (rows, C) arrays: NHWC, NLC or (N, C) flattened to rows.

The training-mode passes are the graph executor's buffer-writing kernels in fused.py (batch norm + clamp with
NO_CLAMP), called through allocating wrappers: a captured step records its first step eagerly and then replays
the fused kernels, and with one set of kernels their parallel loops compile once instead of twice.
"""
import numpy as np
from numba import prange

from . import fused
from ._runtime import EXACT_FASTMATH, jit, parallel_jit, run_shares
from .fused import ROWS_PER_CHUNK


def _statistics_buffers(x):
    rows, channels = x.shape
    partials = np.empty((2, fused.chunk_count(rows), channels), dtype=np.float64)
    mean, variance, invstd = (np.empty(channels, dtype=np.float64) for _ in range(3))
    return partials, mean, variance, invstd


def channel_statistics(x):
    """Per-channel mean and biased variance of x (rows, C), both float64, by one pass over x (two over each
    cache-sized chunk)."""
    partials, mean, variance, invstd = _statistics_buffers(x)
    fused.batch_norm_statistics(x, 1.0, partials, mean, variance, invstd)
    return mean, variance


def batch_norm_normalize(x, mean, invstd, weight, bias):
    """y = (x - mean) * invstd * weight + bias per channel, in x's dtype; mean and invstd are float64."""
    y = np.empty_like(x)
    coefficients = np.empty((3, x.shape[1]), dtype=x.dtype)
    fused.batch_norm_act_forward(x, mean, invstd, weight, bias, fused.NO_CLAMP, coefficients, y)
    return y


def batch_norm_forward_train(x, weight, bias, eps):
    """Normalize with the batch statistics: returns (y, mean, biased variance, invstd), the last three float64."""
    partials, mean, variance, invstd = _statistics_buffers(x)
    fused.batch_norm_statistics(x, float(eps), partials, mean, variance, invstd)
    return batch_norm_normalize(x, mean, invstd, weight, bias), mean, variance, invstd


def batch_norm_forward_eval(x, running_mean, running_var, weight, bias, eps):
    """Normalize with the running statistics."""
    invstd = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
    return batch_norm_normalize(x, running_mean.astype(np.float64), invstd, weight, bias)


def batch_norm_backward_train(grad_y, x, mean, invstd, weight):
    """Gradients of training-mode batch norm, through the batch statistics: (grad_x, grad_weight, grad_bias).

    grad_weight and grad_bias are float64; grad_x has x's dtype.
    """
    rows, channels = x.shape
    partials = np.empty((2, fused.chunk_count(rows), channels), dtype=np.float64)
    sums = np.empty((2, channels), dtype=np.float64)
    rounded_grads = np.empty((2, channels), dtype=x.dtype)  # the float64 sums below are what is returned
    grad_x = np.empty_like(x)
    unused_bias = np.zeros(channels, dtype=x.dtype)  # only the clamp's mask reads the bias
    fused.batch_norm_act_backward(grad_y, x, mean, invstd, weight, unused_bias, fused.NO_CLAMP, partials[0],
                                  partials[1], sums, np.empty((7, channels), dtype=x.dtype), grad_x, rounded_grads[0],
                                  rounded_grads[1])
    return grad_x, sums[1] * invstd, sums[0]


@parallel_jit
def _grad_sums(grad_y, x, mean, partial_dy, partial_dy_xhat):
    rows, channels = x.shape
    for chunk in prange(partial_dy.shape[0]):
        for c in range(channels):
            partial_dy[chunk, c] = 0.0
            partial_dy_xhat[chunk, c] = 0.0
        for r in range(chunk * ROWS_PER_CHUNK, min((chunk + 1) * ROWS_PER_CHUNK, rows)):
            for c in range(channels):
                g = np.float64(grad_y[r, c])
                partial_dy[chunk, c] += g
                partial_dy_xhat[chunk, c] += g * (np.float64(x[r, c]) - mean[c])


def batch_norm_grad_sums(grad_y, x, mean, invstd):
    """Per-channel sum(grad_y) and sum(grad_y * x_hat), float64: the bias and weight gradients."""
    partials = np.empty((2, fused.chunk_count(x.shape[0]), x.shape[1]), dtype=np.float64)
    _grad_sums(grad_y, x, mean, partials[0], partials[1])
    # NumPy adds the rows of a C-contiguous array along axis 0 in row order: the fixed chunk order
    return np.add.reduce(partials[0], axis=0), np.add.reduce(partials[1], axis=0) * invstd


@parallel_jit(fastmath=EXACT_FASTMATH)
def _scale_channels(grad_y, scale, grad_x):
    rows, channels = grad_y.shape
    for r in prange(rows):
        for c in range(channels):
            grad_x[r, c] = grad_y[r, c] * scale[c]


def batch_norm_backward_eval(grad_y, x, running_mean, running_var, weight, eps):
    """Gradients of eval-mode batch norm, where the statistics are constants: (grad_x, grad_weight, grad_bias)."""
    mean = running_mean.astype(np.float64)
    invstd = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
    sum_dy, sum_dy_xhat = batch_norm_grad_sums(grad_y, x, mean, invstd)
    grad_x = np.empty_like(grad_y)
    _scale_channels(grad_y, (weight.astype(np.float64) * invstd).astype(grad_y.dtype), grad_x)
    return grad_x, sum_dy_xhat, sum_dy


@jit(fastmath=False)
def fold_batch_norm(weight, conv_bias, running_mean, running_var, gamma, beta, eps, folded_weight, folded_bias, scale):
    """A conv followed by eval-mode batch norm as one conv: scale = gamma / sqrt(running_var + eps),
    folded_weight[r, c] = weight[r, c] * scale[c], folded_bias = (conv_bias - running_mean) * scale + beta, every
    value computed in float64 and rounded once to the weight's dtype. weight and folded_weight (which may be the
    same array) are (rows, C_out): a weight in the kernels' (kH, kW, C_in, C_out) layout, flattened; scale is a
    float64 (C_out,) scratch. One call, where NumPy's casting ufuncs took a dozen (5-15 us a layer)."""
    channels = folded_bias.shape[0]
    for c in range(channels):
        scale[c] = np.float64(gamma[c]) / np.sqrt(np.float64(running_var[c]) + eps)
        folded_bias[c] = (np.float64(conv_bias[c]) - np.float64(running_mean[c])) * scale[c] + np.float64(beta[c])
    for r in range(weight.shape[0]):
        for c in range(channels):
            folded_weight[r, c] = weight[r, c] * scale[c]


# Eval mode: the running statistics' coefficients and the normalizing pass, for a batch norm that no conv's weight
# absorbed (graph/nodes/norm.py) and for one a conv kernel applies to its output (conv2d_forward's normalize).

@jit(fastmath=False)
def running_coefficients(running_mean, running_var, eps, weight, bias, coefficients):
    """Eval-mode batch norm's coefficients (rows 0-2, as fused.batch_norm_act_forward makes them) from the running
    statistics: invstd = 1 / sqrt(running_var + eps) in float64, rounded as NumPy rounds it (no fast-math
    reciprocal), in one call where NumPy took four."""
    for c in range(running_mean.shape[0]):
        invstd = 1.0 / np.sqrt(np.float64(running_var[c]) + eps)
        coefficients[0, c] = np.float64(running_mean[c])
        coefficients[1, c] = invstd * weight[c]
        coefficients[2, c] = bias[c]


def normalize_act_forward(x, coefficients, lower, upper, out):
    """out = (x - coefficients[0]) * coefficients[1] + coefficients[2] per channel (x, out: (rows, C)), then
    clamped to [lower, upper] (NaN kept): fused.batch_norm_act_forward's pass, for coefficients made beforehand;
    out may be x itself."""
    slots = 1 if x.size <= fused.NORMALIZE_SERIAL_ELEMENTS else x.shape[0]
    if out is x:
        run_shares(_normalize_rows_in_place_slot, slots, x, coefficients, lower, upper)
    else:
        run_shares(fused.normalize_rows_slot, slots, x, x, False, coefficients, lower, upper, out)


@jit(fastmath=EXACT_FASTMATH)
def _normalize_rows_in_place_slot(slot, slots, x, coefficients, lower, upper):
    # fused's pass writing over x: given the same array twice, LLVM's overlap check failed and the loop ran scalar
    # (17 against 2.7 us for 9216 elements)
    rows, channels = x.shape
    for r in range(slot * rows // slots, (slot + 1) * rows // slots):
        row = x[r]
        for c in range(channels):
            value = (row[c] - coefficients[0, c]) * coefficients[1, c] + coefficients[2, c]
            if value <= lower:
                value = lower
            elif value >= upper:
                value = upper
            row[c] = value
