"""Convolution as im2col + one BLAS GEMM per chunk of output rows, for groups=1 layers with few channels.

The register-tiled kernels in conv2d.py need at least a 32-channel tile; layers such as LeNet-5's (1→6, 6→16)
fall short of it, and a direct loop over 6 or 16 channels cannot vectorise. Here the taps are unrolled into the
reduction axis (kH·kW·C_in), so one GEMM does all the arithmetic with BLAS's own blocking. The columns are kept
transposed, (kH·kW·C_in, pixels), so that im2col copies whole output rows (contiguous, vectorisable) instead of
scattering single channels. Layouts are those of conv2d.py: NHWC activations, (kH, kW, C_in, C_out) weights,
(top, left) padding with the output size implied. The columns live in the caller's workspace (conv2d_workspace)
and are bounded by processing the flattened (image, output row) range in chunks — whole images when one fits
the budget, else rows — and the weight gradient sums the chunks' GEMMs in chunk order, so results do not depend
on the thread count.
"""
import functools

import numpy as np
from numba import prange

from . import conv2d_workspace
from ._jit import jit, parallel_jit
from .conv2d_workspace import carve, spec_bytes, specs_bytes


@jit
def _valid_span(out_size, size, stride, offset):
    """The output positions o in [first, last) whose input o * stride + offset lies inside [0, size)."""
    first = 0
    if offset < 0:
        first = (-offset + stride - 1) // stride
    last = 0
    if size - offset > 0:
        last = min(out_size, (size - offset + stride - 1) // stride)
    return first, max(first, last)


@parallel_jit
def _im2col(x, first_row, out_h, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, kernel_h, kernel_w,
            columns):
    """columns[(kh * kW + kw) * C + c, j, ow] = x[n, ih, iw, c] or 0, for the flattened output rows
    first_row + j = n * H_out + oh of the chunk."""
    _, height, width, channels = x.shape
    rows, out_w = columns.shape[1], columns.shape[2]
    for j in prange(rows):
        n = (first_row + j) // out_h
        oh = (first_row + j) % out_h
        for kh in range(kernel_h):
            ih = oh * stride_h - pad_top + kh * dilation_h
            inside = 0 <= ih < height
            for kw in range(kernel_w):
                offset = kw * dilation_w - pad_left
                lo, hi = _valid_span(out_w, width, stride_w, offset)
                if not inside:
                    lo, hi = 0, 0
                for c in range(channels):
                    r = (kh * kernel_w + kw) * channels + c
                    for ow in range(lo):
                        columns[r, j, ow] = 0.0
                    for ow in range(lo, hi):
                        columns[r, j, ow] = x[n, ih, ow * stride_w + offset, c]
                    for ow in range(hi, out_w):
                        columns[r, j, ow] = 0.0


@parallel_jit
def _col2im(columns, first_row, out_h, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, kernel_h,
            kernel_w, out):
    """out += every column entry of the chunk, added back where im2col copied it from: the adjoint of _im2col.
    Each job gathers into one input row of one image, so no two jobs write the same pixel."""
    _, height, width, channels = out.shape
    rows, out_w = columns.shape[1], columns.shape[2]
    first_image = first_row // out_h
    images = (first_row + rows - 1) // out_h - first_image + 1
    for job in prange(images * height):
        n = first_image + job // height
        ih = job % height
        for kh in range(kernel_h):
            shifted = ih + pad_top - kh * dilation_h
            if shifted < 0 or shifted % stride_h != 0:
                continue
            j = n * out_h + shifted // stride_h - first_row
            if shifted // stride_h >= out_h or j < 0 or j >= rows:
                continue
            for kw in range(kernel_w):
                offset = kw * dilation_w - pad_left
                lo, hi = _valid_span(out_w, width, stride_w, offset)
                for c in range(channels):
                    # indexed in place: a view taken in a prange body leaks its reference in Numba 0.68
                    r = (kh * kernel_w + kw) * channels + c
                    for ow in range(lo, hi):
                        out[n, ih, ow * stride_w + offset, c] += columns[r, j, ow]


@functools.lru_cache(maxsize=512)
def gemm_plan(pass_name, batch, out_h, out_w, reduction, channels_out, dtype, budget):
    """(scratch specs, output rows per chunk) of one GEMM pass ("forward", "backward_input", "backward_weight"):
    whole images per chunk when one fits the budget, else rows; the weight gradient adds each later chunk's GEMM
    through a partial of at most a quarter of the budget, a block of reduction rows at a time."""
    dtype = np.dtype(dtype)
    total_rows = batch * out_h
    specs = ()
    fixed = 0
    if pass_name == "backward_weight":
        block = max(1, min(reduction, (budget // 4) // (channels_out * dtype.itemsize)))
        specs = (("partial", (block, channels_out), dtype),)
        fixed = spec_bytes((block, channels_out), dtype)
    row_bytes = reduction * out_w * dtype.itemsize
    rows = max(1, min(total_rows, (budget - fixed - 2 * conv2d_workspace.CACHE_LINE) // row_bytes))
    if rows >= out_h:
        rows = rows // out_h * out_h
    if pass_name == "backward_weight" and rows >= total_rows:
        specs = ()  # one chunk writes the gradient directly
    return (("columns", (reduction * rows * out_w,), dtype),) + specs, rows


def gemm_workspace_bytes(pass_name, batch, out_h, out_w, reduction, channels_out, dtype):
    """Workspace bytes one GEMM pass needs at these sizes (under conv2d_workspace.WORKSPACE_BYTES)."""
    return specs_bytes(gemm_plan(pass_name, batch, out_h, out_w, reduction, channels_out, np.dtype(dtype),
                                 conv2d_workspace.WORKSPACE_BYTES)[0])


def _setup(pass_name, activations_dtype, out_shape, weight_shape, workspace):
    batch, out_h, out_w, channels_out = out_shape
    reduction = weight_shape[0] * weight_shape[1] * weight_shape[2]
    specs, rows = gemm_plan(pass_name, batch, out_h, out_w, reduction, channels_out, np.dtype(activations_dtype),
                            conv2d_workspace.WORKSPACE_BYTES)
    return carve(workspace, specs), rows, reduction


def _chunk_columns(views, reduction, rows, out_w):
    return views["columns"][:reduction * rows * out_w].reshape(reduction, rows, out_w)


def _options(stride, padding, dilation, weight_shape):
    return (stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1], weight_shape[0], weight_shape[1])


def conv2d_forward_gemm(x, weight, bias, out, stride=(1, 1), padding=(0, 0), dilation=(1, 1), relu=False,
                        workspace=None):
    """out (N, H_out, W_out, C_out) = conv(x, weight) + bias (then max(., 0) when relu), groups=1; writes `out`
    and returns it. workspace: see conv2d_workspace (None: allocate one)."""
    batch, out_h, out_w, channels_out = out.shape
    views, rows, reduction = _setup("forward", x.dtype, out.shape, weight.shape, workspace)
    matrix = weight.reshape(reduction, channels_out)
    options = _options(stride, padding, dilation, weight.shape)
    flat_out = out.reshape(-1, channels_out)
    total = batch * out_h
    for first in range(0, total, rows):
        count = min(rows, total - first)
        columns = _chunk_columns(views, reduction, count, out_w)
        _im2col(x, first, out_h, *options, columns)
        target = flat_out[first * out_w:(first + count) * out_w]
        np.matmul(columns.reshape(reduction, -1).T, matrix, out=target)
        if bias is not None:
            target += bias
        if relu:
            np.maximum(target, 0.0, out=target)  # NaN stays NaN, as in torch.relu
    return out


def conv2d_backward_input_gemm(grad_out, weight, out, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                               workspace=None):
    """out (N, H, W, C_in) = the gradient of conv2d_forward_gemm with respect to x."""
    batch, out_h, out_w, channels_out = grad_out.shape
    views, rows, reduction = _setup("backward_input", grad_out.dtype, grad_out.shape, weight.shape, workspace)
    matrix = weight.reshape(reduction, channels_out)
    options = _options(stride, padding, dilation, weight.shape)
    flat_grad = grad_out.reshape(-1, channels_out)
    total = batch * out_h
    out[...] = 0.0
    for first in range(0, total, rows):
        count = min(rows, total - first)
        columns = _chunk_columns(views, reduction, count, out_w)
        np.matmul(matrix, flat_grad[first * out_w:(first + count) * out_w].T, out=columns.reshape(reduction, -1))
        _col2im(columns, first, out_h, *options, out)
    return out


def conv2d_backward_weight_gemm(x, grad_out, out, stride=(1, 1), padding=(0, 0), dilation=(1, 1), workspace=None):
    """out (kH, kW, C_in, C_out) = the gradient of conv2d_forward_gemm with respect to weight."""
    batch, out_h, out_w, channels_out = grad_out.shape
    views, rows, reduction = _setup("backward_weight", x.dtype, grad_out.shape, out.shape, workspace)
    target = out.reshape(reduction, channels_out)
    options = _options(stride, padding, dilation, out.shape)
    flat_grad = grad_out.reshape(-1, channels_out)
    total = batch * out_h
    for first in range(0, total, rows):
        count = min(rows, total - first)
        columns = _chunk_columns(views, reduction, count, out_w).reshape(reduction, -1)
        _im2col(x, first, out_h, *options, columns.reshape(reduction, count, out_w))
        grad = flat_grad[first * out_w:(first + count) * out_w]
        if first == 0:
            np.matmul(columns, grad, out=target)
            continue
        partial = views["partial"]
        for start in range(0, reduction, partial.shape[0]):
            stop = min(start + partial.shape[0], reduction)
            block = partial[:stop - start]
            np.matmul(columns[start:stop], grad, out=block)
            target[start:stop] += block
    return out
