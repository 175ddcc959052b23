"""Matmul kernels for linear layers: y = x @ Wᵀ + b and its gradients, on 2-D C-contiguous arrays.

The products call BLAS through np.dot, which owns the threads: none of them runs inside a prange. The bias
gradient (a sum over rows) is one serial loop in row order, so it gives the same bits on any thread count: a
linear layer's gradient has a batch of rows (64 x 10 in the cifar-cnn), far less work than starting a parallel
region, and the parallel chunked version took seconds of a cold first training step to compile.

A small product runs on one BLAS thread (_runtime.blas.one_blas_thread).
"""
import numpy as np

from ._runtime import jit, one_blas_thread


@jit
def _linear_forward(x, weight, bias, out):
    if x.shape[1] == 0:  # BLAS is not called on an empty inner dimension; the product is all zeros
        out[:, :] = 0
    elif out.size:
        np.dot(x, weight.T, out)
    if bias.size:
        for row in range(out.shape[0]):
            for column in range(out.shape[1]):
                out[row, column] += bias[column]


@jit
def _linear_backward_input(grad_out, weight, grad_x):
    if grad_out.shape[1] == 0:
        grad_x[:, :] = 0
    elif grad_x.size:
        np.dot(grad_out, weight, grad_x)


@jit
def _linear_backward_weight(grad_out, x, grad_weight):
    if grad_out.shape[0] == 0:
        grad_weight[:, :] = 0
    elif grad_weight.size:
        np.dot(grad_out.T, x, grad_weight)


def linear_forward(x, weight, bias, out):
    """out (M, N) = x (M, K) @ weight (N, K)ᵀ + bias (N,); pass a 0-length bias for none."""
    one_blas_thread(_linear_forward, x.shape[0] * x.shape[1] * weight.shape[0], x, weight, bias, out)


def linear_backward_input(grad_out, weight, grad_x):
    """grad_x (M, K) = grad_out (M, N) @ weight (N, K)."""
    one_blas_thread(_linear_backward_input, grad_out.shape[0] * grad_out.shape[1] * weight.shape[1],
                    grad_out, weight, grad_x)


def linear_backward_weight(grad_out, x, grad_weight):
    """grad_weight (N, K) = grad_out (M, N)ᵀ @ x (M, K)."""
    one_blas_thread(_linear_backward_weight, grad_out.shape[0] * grad_out.shape[1] * x.shape[1],
                    grad_out, x, grad_weight)


@jit
def linear_backward_bias(grad_out, grad_bias):
    """grad_bias (N,) = grad_out (M, N) summed over rows, in row order, in float64 then rounded once."""
    total = np.zeros(grad_out.shape[1], dtype=np.float64)
    for row in range(grad_out.shape[0]):
        for column in range(grad_out.shape[1]):
            total[column] += grad_out[row, column]
    for column in range(grad_out.shape[1]):
        grad_bias[column] = total[column]
