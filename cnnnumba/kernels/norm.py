"""Batch-normalization kernels on channels-innermost (rows, C) arrays: NHWC, NLC or (N, C) flattened to rows."""
import numpy as np
from numba import prange

from ._jit import jit, parallel_jit

# The elementwise passes run without reassociation and contraction: with them LLVM rounded some elements
# differently depending on where the thread count split the rows (vectorized body against scalar remainder).
EXACT_FASTMATH = {"arcp", "nsz"}

# Per-channel sums over rows are split into chunks of this many rows whatever the thread count, and the chunk
# partials are added in chunk order, so the statistics and gradients are bit-identical for any thread count.
ROWS_PER_CHUNK = 256


@jit
def _chunk_count(rows, rows_per_chunk):
    return max((rows + rows_per_chunk - 1) // rows_per_chunk, 1)


@jit
def _sum_chunks(partials):
    """Fixed-order sum of the per-chunk partial rows of a (chunks, C) buffer."""
    total = np.zeros(partials.shape[1], dtype=np.float64)
    for chunk in range(partials.shape[0]):
        for c in range(partials.shape[1]):
            total[c] += partials[chunk, c]
    return total


@parallel_jit
def channel_statistics(x, rows_per_chunk=ROWS_PER_CHUNK):
    """Per-channel mean and biased variance of x (rows, C), both float64, by two passes over x."""
    rows, channels = x.shape
    chunks = _chunk_count(rows, rows_per_chunk)
    partials = np.zeros((chunks, channels), dtype=np.float64)
    for chunk in prange(chunks):
        for r in range(chunk * rows_per_chunk, min((chunk + 1) * rows_per_chunk, rows)):
            for c in range(channels):
                partials[chunk, c] += np.float64(x[r, c])
    mean = _sum_chunks(partials) / rows
    # The second pass sums squared deviations from the mean rather than squares, which cancels catastrophically
    # when the mean is large next to the spread.
    partials[:] = 0.0
    for chunk in prange(chunks):
        for r in range(chunk * rows_per_chunk, min((chunk + 1) * rows_per_chunk, rows)):
            for c in range(channels):
                deviation = np.float64(x[r, c]) - mean[c]
                partials[chunk, c] += deviation * deviation
    variance = _sum_chunks(partials) / rows
    return mean, variance


@parallel_jit(fastmath=EXACT_FASTMATH)
def batch_norm_normalize(x, mean, invstd, weight, bias):
    """y = (x - mean) * invstd * weight + bias per channel, in x's dtype; mean and invstd may be float64."""
    rows, channels = x.shape
    dtype = x.dtype
    center = mean.astype(dtype)
    scale = (invstd * weight).astype(dtype)
    shift = bias.astype(dtype)
    y = np.empty_like(x)
    for r in prange(rows):
        for c in range(channels):
            y[r, c] = (x[r, c] - center[c]) * scale[c] + shift[c]
    return y


@jit
def batch_norm_forward_train(x, weight, bias, eps, rows_per_chunk=ROWS_PER_CHUNK):
    """Normalize with the batch statistics: returns (y, mean, biased variance, invstd), the last three float64."""
    mean, variance = channel_statistics(x, rows_per_chunk)
    invstd = 1.0 / np.sqrt(variance + eps)
    return batch_norm_normalize(x, mean, invstd, weight, bias), mean, variance, invstd


@jit
def batch_norm_forward_eval(x, running_mean, running_var, weight, bias, eps):
    """Normalize with the running statistics."""
    invstd = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
    return batch_norm_normalize(x, running_mean.astype(np.float64), invstd, weight, bias)


@parallel_jit
def batch_norm_grad_sums(grad_y, x, mean, invstd, rows_per_chunk=ROWS_PER_CHUNK):
    """Per-channel sum(grad_y) and sum(grad_y * x_hat), float64: the bias and weight gradients."""
    rows, channels = x.shape
    chunks = _chunk_count(rows, rows_per_chunk)
    partial_dy = np.zeros((chunks, channels), dtype=np.float64)
    partial_dy_xhat = np.zeros((chunks, channels), dtype=np.float64)
    for chunk in prange(chunks):
        for r in range(chunk * rows_per_chunk, min((chunk + 1) * rows_per_chunk, rows)):
            for c in range(channels):
                g = np.float64(grad_y[r, c])
                partial_dy[chunk, c] += g
                partial_dy_xhat[chunk, c] += g * (np.float64(x[r, c]) - mean[c])
    return _sum_chunks(partial_dy), _sum_chunks(partial_dy_xhat) * invstd


@parallel_jit(fastmath=EXACT_FASTMATH)
def _batch_norm_input_grad_train(grad_y, x, mean, invstd, weight, sum_dy, sum_dy_xhat):
    rows, channels = x.shape
    dtype = x.dtype
    # dx = w * invstd * (dy - mean(dy) - x_hat * mean(dy * x_hat)) as dy * a + shift + (x - mean) * b per channel;
    # subtracting the mean before scaling keeps float32 exact where the mean is large next to the spread.
    scale = weight * invstd
    a = scale.astype(dtype)
    shift = (-scale * sum_dy / rows).astype(dtype)
    b = (-scale * invstd * sum_dy_xhat / rows).astype(dtype)
    center = mean.astype(dtype)
    grad_x = np.empty_like(x)
    for r in prange(rows):
        for c in range(channels):
            grad_x[r, c] = (grad_y[r, c] * a[c] + shift[c]) + (x[r, c] - center[c]) * b[c]
    return grad_x


@jit
def batch_norm_backward_train(grad_y, x, mean, invstd, weight, rows_per_chunk=ROWS_PER_CHUNK):
    """Gradients of training-mode batch norm, through the batch statistics: (grad_x, grad_weight, grad_bias).

    grad_weight and grad_bias are float64; grad_x has x's dtype.
    """
    sum_dy, sum_dy_xhat = batch_norm_grad_sums(grad_y, x, mean, invstd, rows_per_chunk)
    grad_x = _batch_norm_input_grad_train(grad_y, x, mean, invstd, weight.astype(np.float64), sum_dy, sum_dy_xhat)
    return grad_x, sum_dy_xhat, sum_dy


@parallel_jit(fastmath=EXACT_FASTMATH)
def _batch_norm_input_grad_eval(grad_y, scale):
    rows, channels = grad_y.shape
    grad_x = np.empty_like(grad_y)
    for r in prange(rows):
        for c in range(channels):
            grad_x[r, c] = grad_y[r, c] * scale[c]
    return grad_x


@jit
def batch_norm_backward_eval(grad_y, x, running_mean, running_var, weight, eps, rows_per_chunk=ROWS_PER_CHUNK):
    """Gradients of eval-mode batch norm, where the statistics are constants: (grad_x, grad_weight, grad_bias)."""
    mean = running_mean.astype(np.float64)
    invstd = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
    sum_dy, sum_dy_xhat = batch_norm_grad_sums(grad_y, x, mean, invstd, rows_per_chunk)
    grad_x = _batch_norm_input_grad_eval(grad_y, (weight.astype(np.float64) * invstd).astype(grad_y.dtype))
    return grad_x, sum_dy_xhat, sum_dy
