"""Matmul kernels for linear layers: y = x @ Wᵀ + b and its gradients, on 2-D C-contiguous arrays.

The products call BLAS through np.dot, which owns the threads: none of them runs inside a prange. The bias
gradient (a sum over rows) is one serial loop in row order, so it gives the same bits on any thread count: a
linear layer's gradient has a batch of rows (64 x 10 in the cifar-cnn), far less work than starting a parallel
region, and the parallel chunked version took 1.5-3.7 s of a cold first training step to compile.

A product of at most SINGLE_THREAD_MACS multiply-adds runs on one BLAS thread (see `one_blas_thread`).
"""
import ctypes
import glob
import os

import numpy as np

from ._jit import jit

# Products up to this many multiply-adds run on one BLAS thread. np.dot inside @njit calls SciPy's OpenBLAS, whose
# thread pool is separate from Numba's workers; waking it for a linear layer cost 13-30 ms per product in a
# loaded LeNet-5 step (load 3.5 on 2 cores: 64x400x120 forward 15.9 ms threaded, 0.09 ms on one thread), and
# one thread was also faster at 12M (0.27 vs 0.22 ms) and up to 4G multiply-adds at that load. On an idle
# machine two threads pay off only on products far larger than a linear layer's, so this bound is generous.
SINGLE_THREAD_MACS = 1 << 24
# OpenBLAS itself runs a GEMM of at most 65536 * 4 multiply-adds on the calling thread (GEMM_MULTITHREAD_THRESHOLD)
_OPENBLAS_SERIAL_MACS = 1 << 18


def openblas_thread_setters(package):
    """ctypes (get, set) of the thread count of the OpenBLAS bundled with `package`: "scipy" (what Numba's np.dot
    calls) or "numpy" (what NumPy's matmul calls); (None, None) when the package is missing or its BLAS is another
    library."""
    try:
        module = __import__(package)
        if package == "scipy":
            import scipy.linalg.cython_blas  # noqa: F401  (what Numba binds np.dot to; loads the library)
    except ImportError:
        return None, None
    package_dir = os.path.dirname(module.__file__)
    for path in (glob.glob(package_dir + ".libs/*openblas*")
                 + glob.glob(os.path.join(package_dir, ".libs", "*openblas*"))):
        try:
            library = ctypes.CDLL(path)  # already loaded: this only returns a handle
        except OSError:
            continue
        # 64-bit-integer builds (NumPy's wheels) suffix their symbols with 64_
        for name in ("scipy_openblas{}", "openblas{}", "scipy_openblas{}64_", "openblas{}64_"):
            get = getattr(library, name.format("_get_num_threads"), None)
            set_ = getattr(library, name.format("_set_num_threads"), None)
            if get is not None and set_ is not None:
                get.argtypes, get.restype = [], ctypes.c_int
                set_.argtypes, set_.restype = [ctypes.c_int], None
                return get, set_
    return None, None


_GET_BLAS_THREADS, _SET_BLAS_THREADS = openblas_thread_setters("scipy")


def one_blas_thread(kernel, macs, *args):
    """kernel(*args), with SciPy's OpenBLAS on one thread when the product has at most SINGLE_THREAD_MACS
    multiply-adds. The thread count is process-wide in OpenBLAS (its `_local` setter is not per thread in the
    0.3.30 SciPy ships), so it is restored at once: the large GEMMs elsewhere (im2col convolutions) keep theirs."""
    if _SET_BLAS_THREADS is None or macs <= _OPENBLAS_SERIAL_MACS or macs > SINGLE_THREAD_MACS:
        kernel(*args)
        return
    previous = _GET_BLAS_THREADS()
    _SET_BLAS_THREADS(1)
    try:
        kernel(*args)
    finally:
        _SET_BLAS_THREADS(previous)


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
