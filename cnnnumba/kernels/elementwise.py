"""Elementwise kernels on flat contiguous arrays: activations (ReLU, hardtanh/ReLU6, ...) with their backward, and
dropout's masked scale.

Every kernel takes 1-D C-contiguous arrays of one float dtype and writes into a caller-allocated `out` (which
may alias an input for in-place use). Scalars (slopes, scales) should be passed in the arrays' dtype so that
float32 work stays in float32, as PyTorch computes it.

The work is split into fixed chunks of CHUNK elements: arrays of at most one chunk run on the calling thread
(a thread-pool launch would cost more than the loop), larger ones run a prange over chunks.
"""
import math

from numba import prange

from ._runtime import jit, parallel_jit

CHUNK = 32768

_SQRT1_2 = 0.7071067811865476            # 1 / sqrt(2)
_INV_SQRT_2PI = 0.3989422804014327       # 1 / sqrt(2 * pi)
_SQRT_2_OVER_PI = 0.7978845608028654     # sqrt(2 / pi)
_GELU_KAPPA = 0.044715


# The cheap kernels below loop over slices that start at 0 rather than indexing from `begin`: LLVM vectorizes
# those loops, and indexed from `begin` they stay scalar.

@jit
def _relu_range(x, out, begin, end):
    x_part, out_part = x[begin:end], out[begin:end]
    for i in range(out_part.size):
        value = x_part[i]
        # `value <= 0` is False for NaN, so NaN passes through, as in PyTorch
        out_part[i] = 0 if value <= 0 else value


@jit
def _relu_backward_range(grad, y, out, begin, end):
    grad_part, y_part, out_part = grad[begin:end], y[begin:end], out[begin:end]
    for i in range(out_part.size):
        out_part[i] = grad_part[i] if y_part[i] > 0 else 0


@jit
def _leaky_relu_range(x, negative_slope, out, begin, end):
    x_part, out_part = x[begin:end], out[begin:end]
    for i in range(out_part.size):
        value = x_part[i]
        out_part[i] = value if value > 0 else value * negative_slope


@jit
def _leaky_relu_backward_range(grad, x, negative_slope, out, begin, end):
    grad_part, x_part, out_part = grad[begin:end], x[begin:end], out[begin:end]
    for i in range(out_part.size):
        out_part[i] = grad_part[i] if x_part[i] > 0 else grad_part[i] * negative_slope


@jit
def _hardtanh_range(x, min_val, max_val, out, begin, end):
    x_part, out_part = x[begin:end], out[begin:end]
    for i in range(out_part.size):
        value = x_part[i]
        # both comparisons are False for NaN, so NaN passes through, as in PyTorch's clamp; two selects in a row
        # (not nested) vectorise, where the nested form stayed a branch per element
        value = min_val if value < min_val else value
        out_part[i] = max_val if value > max_val else value


@jit
def _hardtanh_backward_range(grad, saved, min_val, max_val, out, begin, end):
    grad_part, x_part, out_part = grad[begin:end], saved[begin:end], out[begin:end]
    for i in range(out_part.size):
        value = x_part[i]
        # PyTorch's vectorized hardtanh_backward: the gradient passes strictly inside the bounds, so not at or
        # beyond either bound, and not at NaN (its scalar loop, which runs only the last few elements, passes NaN)
        # (& of both comparisons, not a chained one, which short-circuits into a branch per element)
        out_part[i] = grad_part[i] if (min_val < value) & (value < max_val) else 0


@jit
def _gelu_range(x, tanh_approximation, out, begin, end):
    if tanh_approximation:
        for i in range(begin, end):
            value = x[i]
            inner = _SQRT_2_OVER_PI * (value + _GELU_KAPPA * value * value * value)
            out[i] = 0.5 * value * (1.0 + math.tanh(inner))
    else:
        for i in range(begin, end):
            value = x[i]
            out[i] = 0.5 * value * (1.0 + math.erf(value * _SQRT1_2))


@jit
def _gelu_backward_range(grad, x, tanh_approximation, out, begin, end):
    if tanh_approximation:
        for i in range(begin, end):
            value = x[i]
            square = value * value
            tanh_inner = math.tanh(_SQRT_2_OVER_PI * (value + _GELU_KAPPA * square * value))
            left_derivative = 0.5 * (1.0 + tanh_inner)
            right_derivative = (0.5 * value * (1.0 - tanh_inner * tanh_inner)
                                * _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_KAPPA * square))
            out[i] = grad[i] * (left_derivative + right_derivative)
    else:
        for i in range(begin, end):
            value = x[i]
            cdf = 0.5 * (1.0 + math.erf(value * _SQRT1_2))
            pdf = _INV_SQRT_2PI * math.exp(-0.5 * value * value)
            out[i] = grad[i] * (cdf + value * pdf)


@jit
def _sigmoid_range(x, out, begin, end):
    for i in range(begin, end):
        value = x[i]
        # exp of a non-positive number only: no overflow for large |x|
        if value >= 0:
            out[i] = 1.0 / (1.0 + math.exp(-value))
        else:
            e = math.exp(value)
            out[i] = e / (1.0 + e)


@jit
def _sigmoid_backward_range(grad, y, out, begin, end):
    for i in range(begin, end):
        out[i] = grad[i] * (1.0 - y[i]) * y[i]


@jit
def _tanh_range(x, out, begin, end):
    for i in range(begin, end):
        out[i] = math.tanh(x[i])


@jit
def _tanh_backward_range(grad, y, out, begin, end):
    for i in range(begin, end):
        out[i] = grad[i] * (1.0 - y[i] * y[i])


@jit
def _dropout_range(x, keep, scale, out, begin, end):
    zero = scale * 0
    x_part, keep_part, out_part = x[begin:end], keep[begin:end], out[begin:end]
    for i in range(out_part.size):
        # a multiply, not a select, so NaN stays NaN where dropped, as in PyTorch's input * mask
        out_part[i] = x_part[i] * (scale if keep_part[i] else zero)


@jit
def _chunk_count(size):
    return (size + CHUNK - 1) // CHUNK


@parallel_jit
def _relu_chunks(x, out):
    for chunk in prange(_chunk_count(x.size)):
        _relu_range(x, out, chunk * CHUNK, min(x.size, (chunk + 1) * CHUNK))


@parallel_jit
def _relu_backward_chunks(grad, y, out):
    for chunk in prange(_chunk_count(grad.size)):
        _relu_backward_range(grad, y, out, chunk * CHUNK, min(grad.size, (chunk + 1) * CHUNK))


@parallel_jit
def _leaky_relu_chunks(x, negative_slope, out):
    for chunk in prange(_chunk_count(x.size)):
        _leaky_relu_range(x, negative_slope, out, chunk * CHUNK, min(x.size, (chunk + 1) * CHUNK))


@parallel_jit
def _leaky_relu_backward_chunks(grad, x, negative_slope, out):
    for chunk in prange(_chunk_count(grad.size)):
        _leaky_relu_backward_range(grad, x, negative_slope, out, chunk * CHUNK, min(grad.size, (chunk + 1) * CHUNK))


@parallel_jit
def _hardtanh_chunks(x, min_val, max_val, out):
    for chunk in prange(_chunk_count(x.size)):
        _hardtanh_range(x, min_val, max_val, out, chunk * CHUNK, min(x.size, (chunk + 1) * CHUNK))


@parallel_jit
def _hardtanh_backward_chunks(grad, saved, min_val, max_val, out):
    for chunk in prange(_chunk_count(grad.size)):
        _hardtanh_backward_range(grad, saved, min_val, max_val, out, chunk * CHUNK, min(grad.size, (chunk + 1) * CHUNK))


@parallel_jit
def _gelu_chunks(x, tanh_approximation, out):
    for chunk in prange(_chunk_count(x.size)):
        _gelu_range(x, tanh_approximation, out, chunk * CHUNK, min(x.size, (chunk + 1) * CHUNK))


@parallel_jit
def _gelu_backward_chunks(grad, x, tanh_approximation, out):
    for chunk in prange(_chunk_count(grad.size)):
        _gelu_backward_range(grad, x, tanh_approximation, out, chunk * CHUNK, min(grad.size, (chunk + 1) * CHUNK))


@parallel_jit
def _sigmoid_chunks(x, out):
    for chunk in prange(_chunk_count(x.size)):
        _sigmoid_range(x, out, chunk * CHUNK, min(x.size, (chunk + 1) * CHUNK))


@parallel_jit
def _sigmoid_backward_chunks(grad, y, out):
    for chunk in prange(_chunk_count(grad.size)):
        _sigmoid_backward_range(grad, y, out, chunk * CHUNK, min(grad.size, (chunk + 1) * CHUNK))


@parallel_jit
def _tanh_chunks(x, out):
    for chunk in prange(_chunk_count(x.size)):
        _tanh_range(x, out, chunk * CHUNK, min(x.size, (chunk + 1) * CHUNK))


@parallel_jit
def _tanh_backward_chunks(grad, y, out):
    for chunk in prange(_chunk_count(grad.size)):
        _tanh_backward_range(grad, y, out, chunk * CHUNK, min(grad.size, (chunk + 1) * CHUNK))


@parallel_jit
def _dropout_chunks(x, keep, scale, out):
    for chunk in prange(_chunk_count(x.size)):
        _dropout_range(x, keep, scale, out, chunk * CHUNK, min(x.size, (chunk + 1) * CHUNK))


# The public kernels: same chunks, run serially when there is only one. They choose in Python, not in njit: a
# jitted chooser compiled both paths for every signature, and its literal 0 gave each range helper a second
# signature (Literal[int](0) next to the int64 the chunked kernels pass).

def relu_forward(x, out):
    """out = max(x, 0), NaN kept."""
    if x.size <= CHUNK:
        _relu_range(x, out, 0, x.size)
    else:
        _relu_chunks(x, out)


def relu_backward(grad, y, out):
    """out = grad where the forward output y > 0, else 0."""
    if grad.size <= CHUNK:
        _relu_backward_range(grad, y, out, 0, grad.size)
    else:
        _relu_backward_chunks(grad, y, out)


def leaky_relu_forward(x, negative_slope, out):
    """out = x where x > 0, else x * negative_slope."""
    if x.size <= CHUNK:
        _leaky_relu_range(x, negative_slope, out, 0, x.size)
    else:
        _leaky_relu_chunks(x, negative_slope, out)


def leaky_relu_backward(grad, x, negative_slope, out):
    """out = grad where the forward input x > 0, else grad * negative_slope."""
    if grad.size <= CHUNK:
        _leaky_relu_backward_range(grad, x, negative_slope, out, 0, grad.size)
    else:
        _leaky_relu_backward_chunks(grad, x, negative_slope, out)


def hardtanh_forward(x, min_val, max_val, out):
    """out = x clamped to [min_val, max_val] (ReLU6 is min_val 0, max_val 6), NaN kept."""
    if x.size <= CHUNK:
        _hardtanh_range(x, min_val, max_val, out, 0, x.size)
    else:
        _hardtanh_chunks(x, min_val, max_val, out)


def hardtanh_backward(grad, saved, min_val, max_val, out):
    """out = grad where min_val < saved < max_val, else 0 (0 at NaN too); `saved` is the forward input or output
    (clamping keeps each element on its side of each bound, so both give the same mask)."""
    if grad.size <= CHUNK:
        _hardtanh_backward_range(grad, saved, min_val, max_val, out, 0, grad.size)
    else:
        _hardtanh_backward_chunks(grad, saved, min_val, max_val, out)


def gelu_forward(x, tanh_approximation, out):
    """out = x * Phi(x) (exact, erf), or PyTorch's tanh approximation when tanh_approximation is True."""
    if x.size <= CHUNK:
        _gelu_range(x, tanh_approximation, out, 0, x.size)
    else:
        _gelu_chunks(x, tanh_approximation, out)


def gelu_backward(grad, x, tanh_approximation, out):
    """out = grad * d gelu(x) / dx, from the forward input x."""
    if grad.size <= CHUNK:
        _gelu_backward_range(grad, x, tanh_approximation, out, 0, grad.size)
    else:
        _gelu_backward_chunks(grad, x, tanh_approximation, out)


def sigmoid_forward(x, out):
    """out = 1 / (1 + exp(-x)), without overflow for large |x|."""
    if x.size <= CHUNK:
        _sigmoid_range(x, out, 0, x.size)
    else:
        _sigmoid_chunks(x, out)


def sigmoid_backward(grad, y, out):
    """out = grad * y * (1 - y), from the forward output y."""
    if grad.size <= CHUNK:
        _sigmoid_backward_range(grad, y, out, 0, grad.size)
    else:
        _sigmoid_backward_chunks(grad, y, out)


def tanh_forward(x, out):
    if x.size <= CHUNK:
        _tanh_range(x, out, 0, x.size)
    else:
        _tanh_chunks(x, out)


def tanh_backward(grad, y, out):
    """out = grad * (1 - y^2), from the forward output y."""
    if grad.size <= CHUNK:
        _tanh_backward_range(grad, y, out, 0, grad.size)
    else:
        _tanh_backward_chunks(grad, y, out)


def dropout_apply(x, keep, scale, out):
    """out = x * scale where keep (a bool mask) is True, x * 0 elsewhere; the backward pass is the same call."""
    if x.size <= CHUNK:
        _dropout_range(x, keep, scale, out, 0, x.size)
    else:
        _dropout_chunks(x, keep, scale, out)
