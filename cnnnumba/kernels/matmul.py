"""Matmul kernels for linear layers: y = x @ Wᵀ + b and its gradients, on 2-D C-contiguous arrays.

The products run on Numba's threads through _runtime.blas.matmul. The bias gradient (a sum over rows) is one
serial loop in row order, so it gives the same bits on any thread count: a linear layer's gradient has a batch of
rows (64 x 10 in the cifar-cnn), far less work than starting a parallel region, and the parallel chunked version
took seconds of a cold first training step to compile.
"""
import numpy as np

from ._runtime import jit, matmul


@jit
def _add_bias(out, bias):
    for row in range(out.shape[0]):
        for column in range(out.shape[1]):
            out[row, column] += bias[column]


def linear_forward(x, weight, bias, out):
    """out (M, N) = x (M, K) @ weight (N, K)ᵀ + bias (N,); pass a 0-length bias for none."""
    matmul(x, weight.T, out)
    if bias.size:
        _add_bias(out, bias)


def linear_backward_input(grad_out, weight, grad_x):
    """grad_x (M, K) = grad_out (M, N) @ weight (N, K)."""
    matmul(grad_out, weight, grad_x)


def linear_backward_weight(grad_out, x, grad_weight):
    """grad_weight (N, K) = grad_out (M, N)ᵀ @ x (M, K)."""
    matmul(grad_out.T, x, grad_weight)


@jit
def linear_backward_bias(grad_out, grad_bias):
    """grad_bias (N,) = grad_out (M, N) summed over rows, in row order, in float64 then rounded once."""
    total = np.zeros(grad_out.shape[1], dtype=np.float64)
    for row in range(grad_out.shape[0]):
        for column in range(grad_out.shape[1]):
            total[column] += grad_out[row, column]
    for column in range(grad_out.shape[1]):
        grad_bias[column] = total[column]
