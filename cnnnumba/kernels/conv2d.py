"""2-D convolution kernels on NHWC activations and (kH, kW, C_in/groups, C_out) weights.

Layouts: activations are (N, H, W, C) and weights (kH, kW, C_in/groups, C_out), so channels are innermost
everywhere. Padding is given as (top, left); the bottom/right padding is implied by the output size. Every
public function writes into a caller-supplied array `out` (so a memory planner can hand in a preallocated
buffer) and returns it. The caller validates shapes; `_check_*` only guards against out-of-bounds access.
"""
import numpy as np
from numba import prange

from ._jit import jit, parallel_jit

# Reductions over the batch split the flattened (image, output row) range into this many chunks at most, a
# number that does not depend on the thread count, so results are bit-identical for any number of threads.
MAX_REDUCTION_CHUNKS = 16


# ---------------------------------------------------------------------------------------------------------
# General path: any stride, dilation, padding, groups, dtype. Bounds are checked per tap.
# ---------------------------------------------------------------------------------------------------------

@parallel_jit
def _forward_general(x, weight, bias, out, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, groups):
    batch, height, width, _ = x.shape
    kernel_h, kernel_w, group_in, channels_out = weight.shape
    out_h, out_w = out.shape[1], out.shape[2]
    group_out = channels_out // groups
    for job in prange(batch * out_h):
        n = job // out_h
        oh = job % out_h
        row = np.zeros((out_w, channels_out), dtype=out.dtype)
        if bias is not None:
            for ow in range(out_w):
                for co in range(channels_out):
                    row[ow, co] = bias[co]
        for kh in range(kernel_h):
            ih = oh * stride_h - pad_top + kh * dilation_h
            if ih < 0 or ih >= height:
                continue
            for kw in range(kernel_w):
                for ow in range(out_w):
                    iw = ow * stride_w - pad_left + kw * dilation_w
                    if iw < 0 or iw >= width:
                        continue
                    for g in range(groups):
                        for ci in range(group_in):
                            value = x[n, ih, iw, g * group_in + ci]
                            for co in range(g * group_out, (g + 1) * group_out):
                                row[ow, co] += value * weight[kh, kw, ci, co]
        out[n, oh] = row


@parallel_jit
def _backward_input_general(grad_out, weight, out, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w,
                            groups):
    batch, height, width, channels_in = out.shape
    kernel_h, kernel_w, group_in, channels_out = weight.shape
    out_h, out_w = grad_out.shape[1], grad_out.shape[2]
    group_out = channels_out // groups
    # (kH, kW, C_out, C_in/groups): input channels innermost, so the inner loop below is a contiguous axpy.
    weight_t = np.ascontiguousarray(weight.transpose(0, 1, 3, 2))
    for job in prange(batch * height):
        n = job // height
        ih = job % height
        row = np.zeros((width, channels_in), dtype=out.dtype)
        for kh in range(kernel_h):
            shifted_h = ih + pad_top - kh * dilation_h
            if shifted_h < 0 or shifted_h % stride_h != 0:
                continue
            oh = shifted_h // stride_h
            if oh >= out_h:
                continue
            for kw in range(kernel_w):
                for iw in range(width):
                    shifted_w = iw + pad_left - kw * dilation_w
                    if shifted_w < 0 or shifted_w % stride_w != 0:
                        continue
                    ow = shifted_w // stride_w
                    if ow >= out_w:
                        continue
                    for g in range(groups):
                        for co in range(g * group_out, (g + 1) * group_out):
                            value = grad_out[n, oh, ow, co]
                            for ci in range(group_in):
                                row[iw, g * group_in + ci] += value * weight_t[kh, kw, co, ci]
        out[n, ih] = row


@jit
def _chunk_bounds(total, chunks, index):
    return index * total // chunks, (index + 1) * total // chunks


@jit
def _sum_partials(partials, out):
    """Fixed-order sum over the leading (chunk) axis, so the result does not depend on the thread count."""
    flat_out = out.reshape(-1)
    flat = partials.reshape(partials.shape[0], -1)
    for i in range(flat.shape[1]):
        flat_out[i] = flat[0, i]
    for c in range(1, flat.shape[0]):
        for i in range(flat.shape[1]):
            flat_out[i] += flat[c, i]


@parallel_jit
def _backward_weight_general(x, grad_out, out, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w,
                             groups):
    batch, height, width, _ = x.shape
    kernel_h, kernel_w, group_in, channels_out = out.shape
    out_h, out_w = grad_out.shape[1], grad_out.shape[2]
    group_out = channels_out // groups
    rows = batch * out_h
    chunks = min(rows, MAX_REDUCTION_CHUNKS)
    partials = np.zeros((chunks, kernel_h, kernel_w, group_in, channels_out), dtype=out.dtype)
    for chunk in prange(chunks):
        first, last = _chunk_bounds(rows, chunks, chunk)
        partial = partials[chunk]
        for r in range(first, last):
            n = r // out_h
            oh = r % out_h
            for kh in range(kernel_h):
                ih = oh * stride_h - pad_top + kh * dilation_h
                if ih < 0 or ih >= height:
                    continue
                for kw in range(kernel_w):
                    for ow in range(out_w):
                        iw = ow * stride_w - pad_left + kw * dilation_w
                        if iw < 0 or iw >= width:
                            continue
                        for g in range(groups):
                            for ci in range(group_in):
                                value = x[n, ih, iw, g * group_in + ci]
                                for co in range(g * group_out, (g + 1) * group_out):
                                    partial[kh, kw, ci, co] += value * grad_out[n, oh, ow, co]
    _sum_partials(partials, out)


@parallel_jit
def _backward_bias_kernel(grad_out, out):
    batch, out_h, out_w, channels = grad_out.shape
    rows = batch * out_h
    chunks = min(rows, MAX_REDUCTION_CHUNKS)
    partials = np.zeros((chunks, channels), dtype=out.dtype)
    for chunk in prange(chunks):
        first, last = _chunk_bounds(rows, chunks, chunk)
        for r in range(first, last):
            n = r // out_h
            oh = r % out_h
            for ow in range(out_w):
                for c in range(channels):
                    partials[chunk, c] += grad_out[n, oh, ow, c]
    _sum_partials(partials, out)


# ---------------------------------------------------------------------------------------------------------
# Public entry points: shape guards, contiguity, then the fastest kernel that applies.
# ---------------------------------------------------------------------------------------------------------

def _guard(condition, message):
    if not condition:
        raise ValueError(f"conv2d kernel: {message}")


def _check_geometry(x_shape, weight_shape, out_hw, stride, dilation, groups):
    _guard(len(x_shape) == 4 and len(weight_shape) == 4, "activations and weight must be 4-D")
    _guard(min(stride) >= 1 and min(dilation) >= 1 and groups >= 1, "stride, dilation and groups must be positive")
    channels_in, channels_out = x_shape[3], weight_shape[3]
    _guard(channels_in == weight_shape[2] * groups, f"input channels {channels_in} != {weight_shape[2]} x {groups} groups")
    _guard(channels_out % groups == 0, f"output channels {channels_out} not divisible by groups {groups}")
    _guard(min(out_hw) >= 1 and min(weight_shape[:2]) >= 1, "empty output or kernel")


def _contiguous(array, dtype):
    _guard(array.dtype == dtype, f"dtype {array.dtype} != {dtype}")
    return np.ascontiguousarray(array)


def _check_out(out, shape, dtype):
    _guard(out.shape == tuple(shape), f"out has shape {out.shape}, expected {tuple(shape)}")
    _guard(out.dtype == dtype and out.flags.c_contiguous and out.flags.writeable,
           "out must be a writeable C-contiguous array of the input dtype")


def conv2d_forward(x, weight, bias, out, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """out[n, oh, ow, co] = bias[co] + sum over taps and the group's input channels of x * weight."""
    dtype = x.dtype
    _check_geometry(x.shape, weight.shape, out.shape[1:3], stride, dilation, groups)
    _check_out(out, (x.shape[0], out.shape[1], out.shape[2], weight.shape[3]), dtype)
    x, weight = _contiguous(x, dtype), _contiguous(weight, dtype)
    if bias is not None:
        _guard(bias.shape == (weight.shape[3],), f"bias shape {bias.shape}")
        bias = _contiguous(bias, dtype)
    _forward_general(x, weight, bias, out, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
                     groups)
    return out


def conv2d_backward_input(grad_out, weight, out, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """Gradient of the forward with respect to its input x, written into out (shape of x)."""
    dtype = grad_out.dtype
    _check_geometry(out.shape, weight.shape, grad_out.shape[1:3], stride, dilation, groups)
    _check_out(out, out.shape, dtype)
    _guard(grad_out.shape[0] == out.shape[0] and grad_out.shape[3] == weight.shape[3], "grad_out shape")
    grad_out, weight = _contiguous(grad_out, dtype), _contiguous(weight, dtype)
    _backward_input_general(grad_out, weight, out, stride[0], stride[1], padding[0], padding[1], dilation[0],
                            dilation[1], groups)
    return out


def conv2d_backward_weight(x, grad_out, out, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """Gradient of the forward with respect to its weight, written into out (kH, kW, C_in/groups, C_out)."""
    dtype = x.dtype
    _check_geometry(x.shape, out.shape, grad_out.shape[1:3], stride, dilation, groups)
    _check_out(out, out.shape, dtype)
    _guard(grad_out.shape[0] == x.shape[0] and grad_out.shape[3] == out.shape[3], "grad_out shape")
    x, grad_out = _contiguous(x, dtype), _contiguous(grad_out, dtype)
    _backward_weight_general(x, grad_out, out, stride[0], stride[1], padding[0], padding[1], dilation[0],
                             dilation[1], groups)
    return out


def conv2d_backward_bias(grad_out, out):
    """Gradient with respect to the bias: grad_out summed over images and pixels, written into out (C_out,)."""
    _guard(grad_out.ndim == 4, "grad_out must be 4-D")
    _check_out(out, (grad_out.shape[3],), grad_out.dtype)
    _backward_bias_kernel(np.ascontiguousarray(grad_out), out)
    return out
