"""Matmul kernels for linear layers: y = x @ Wᵀ + b and its gradients, on 2-D C-contiguous arrays.

The products call BLAS through np.dot, which owns the threads: none of them runs inside a prange. The bias
gradient (a sum over rows) is reduced in fixed chunks of rows into partial buffers and then summed in chunk
order, so it is race-free and gives the same bits on any thread count.
"""
import numpy as np
from numba import prange

from ._jit import jit, parallel_jit

BIAS_ROWS_PER_CHUNK = 128


@jit
def linear_forward(x, weight, bias, out):
    """out (M, N) = x (M, K) @ weight (N, K)ᵀ + bias (N,); pass a 0-length bias for none."""
    if x.shape[1] == 0:  # BLAS is not called on an empty inner dimension; the product is all zeros
        out[:, :] = 0
    elif out.size:
        np.dot(x, weight.T, out)
    if bias.size:
        for row in range(out.shape[0]):
            for column in range(out.shape[1]):
                out[row, column] += bias[column]


@jit
def linear_backward_input(grad_out, weight, grad_x):
    """grad_x (M, K) = grad_out (M, N) @ weight (N, K)."""
    if grad_out.shape[1] == 0:
        grad_x[:, :] = 0
    elif grad_x.size:
        np.dot(grad_out, weight, grad_x)


@jit
def linear_backward_weight(grad_out, x, grad_weight):
    """grad_weight (N, K) = grad_out (M, N)ᵀ @ x (M, K)."""
    if grad_out.shape[0] == 0:
        grad_weight[:, :] = 0
    elif grad_weight.size:
        np.dot(grad_out.T, x, grad_weight)


@parallel_jit
def linear_backward_bias(grad_out, grad_bias):
    """grad_bias (N,) = grad_out (M, N) summed over rows, in a fixed order."""
    rows, columns = grad_out.shape
    chunks = (rows + BIAS_ROWS_PER_CHUNK - 1) // BIAS_ROWS_PER_CHUNK
    partial = np.zeros((chunks, columns), dtype=grad_bias.dtype)
    for chunk in prange(chunks):
        row_sum = partial[chunk]
        for row in range(chunk * BIAS_ROWS_PER_CHUNK, min(rows, (chunk + 1) * BIAS_ROWS_PER_CHUNK)):
            for column in range(columns):
                row_sum[column] += grad_out[row, column]
    grad_bias[:] = 0
    for chunk in range(chunks):
        for column in range(columns):
            grad_bias[column] += partial[chunk, column]
