"""Convolution as im2col + one BLAS GEMM per chunk of output rows: the groups=1 layers no register-tiled or
few-channel variant takes (strided layers of 2 to 15 channels, float64 ones), and outputs of a few pixels per image,
where one GEMM over the batch's pixels beats the tiles. A 1x1 layer with stride 1 and no padding needs no im2col:
its input, as a (pixels, C_in) matrix, is the columns. The taps are unrolled into the reduction axis (kH·kW·C_in),
so one GEMM (_runtime.blas.matmul, on Numba's threads) does all the arithmetic with BLAS's own blocking. The columns
are kept transposed, (kH·kW·C_in, pixels), so that im2col copies whole output rows (contiguous, vectorisable)
instead of scattering single channels. Layouts are those of the package: NHWC activations, (kH, kW, C_in, C_out)
weights, (top, left) padding with the output size implied. The columns live in the caller's workspace (workspace.py)
and are bounded by processing the flattened (image, output row) range in chunks — whole images when one fits
the budget, else rows — and the weight gradient sums the chunks' GEMMs in chunk order, so results do not depend
on the thread count.
"""
import numpy as np
from numba import prange

from .._runtime import jit, matmul, parallel_jit
from .workspace import CACHE_LINE, spec_bytes


@jit
def valid_span(out_size, size, stride, offset):
    """The output positions o in [first, last) whose input o * stride + offset lies inside [0, size)."""
    first = 0
    if offset < 0:
        first = (-offset + stride - 1) // stride
    last = 0
    if size - offset > 0:
        last = min(out_size, (size - offset + stride - 1) // stride)
    return first, max(first, last)


@jit
def _im2col_row(x, first_row, j, out_h, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, kernel_h,
                kernel_w, columns):
    """columns[(kh * kW + kw) * C + c, j, ow] = x[n, ih, iw, c] or 0, for the flattened output row
    first_row + j = n * H_out + oh of the chunk."""
    _, height, width, channels = x.shape
    out_w = columns.shape[2]
    n = (first_row + j) // out_h
    oh = (first_row + j) % out_h
    for kh in range(kernel_h):
        ih = oh * stride_h - pad_top + kh * dilation_h
        inside = 0 <= ih < height
        for kw in range(kernel_w):
            offset = kw * dilation_w - pad_left
            lo, hi = valid_span(out_w, width, stride_w, offset)
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
def _im2col(x, first_row, out_h, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, kernel_h, kernel_w,
            columns):
    """Every row of the chunk's columns (_im2col_row), in parallel."""
    for j in prange(columns.shape[1]):
        _im2col_row(x, first_row, j, out_h, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, kernel_h,
                    kernel_w, columns)


@jit
def _im2col_serial(x, first_row, out_h, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, kernel_h,
                   kernel_w, columns):
    """_im2col on the calling thread."""
    for j in range(columns.shape[1]):
        _im2col_row(x, first_row, j, out_h, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, kernel_h,
                    kernel_w, columns)


# im2col chunks of at most this many elements run on the calling thread: a parallel region's workers, still
# spinning when the GEMM right after it starts, cost more than they save on one this short (batch-1 inference).
SERIAL_COLUMNS = 1 << 18


def _gather_columns(x, first, out_h, options, columns):
    (_im2col_serial if columns.size <= SERIAL_COLUMNS else _im2col)(x, first, out_h, *options, columns)


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
                lo, hi = valid_span(out_w, width, stride_w, offset)
                for c in range(channels):
                    # indexed in place: a view taken in a prange body leaks its reference in Numba 0.68
                    r = (kh * kernel_w + kw) * channels + c
                    for ow in range(lo, hi):
                        out[n, ih, ow * stride_w + offset, c] += columns[r, j, ow]


def plan(pass_name, batch, out_h, out_w, reduction, channels_out, dtype, budget):
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
    rows = max(1, min(total_rows, (budget - fixed - 2 * CACHE_LINE) // row_bytes))
    if rows >= out_h:
        rows = rows // out_h * out_h
    if pass_name == "backward_weight" and rows >= total_rows:
        specs = ()  # one chunk writes the gradient directly
    return (("columns", (reduction * rows * out_w,), dtype),) + specs, rows


def _chunk_columns(views, reduction, rows, out_w):
    return views["columns"][:reduction * rows * out_w].reshape(reduction, rows, out_w)


def _options(stride, padding, dilation, weight_shape):
    return (stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1], weight_shape[0], weight_shape[1])


def _pixels_as_rows(x, weight_shape, out_shape, stride, padding):
    """x as its (pixels, C_in) matrix when the layer is a 1x1 convolution whose output pixels are the input's
    (stride 1, no padding): that matrix is the im2col, so no columns are copied; else None."""
    if tuple(weight_shape[:2]) == (1, 1) and tuple(stride) == (1, 1) and tuple(padding) == (0, 0) \
            and tuple(x.shape[1:3]) == tuple(out_shape[1:3]):
        return x.reshape(-1, x.shape[3])
    return None


def forward(x, weight, bias, out, stride, padding, dilation, relu, views, rows):
    """out (N, H_out, W_out, C_out) = conv(x, weight) + bias (then max(., 0) when relu), groups=1, with the
    scratch views and chunk rows of plan."""
    batch, out_h, out_w, channels_out = out.shape
    reduction = weight.shape[0] * weight.shape[1] * weight.shape[2]
    matrix = weight.reshape(reduction, channels_out)
    options = _options(stride, padding, dilation, weight.shape)
    flat_out = out.reshape(-1, channels_out)
    pixels = _pixels_as_rows(x, weight.shape, out.shape, stride, padding)
    total = batch * out_h
    for first in range(0, total, rows):
        count = min(rows, total - first)
        target = flat_out[first * out_w:(first + count) * out_w]
        if pixels is not None:
            matmul(pixels[first * out_w:(first + count) * out_w], matrix, target)
        else:
            columns = _chunk_columns(views, reduction, count, out_w)
            _gather_columns(x, first, out_h, options, columns)
            matmul(columns.reshape(reduction, -1).T, matrix, target)
        if bias is not None:
            target += bias
        if relu:
            np.maximum(target, 0.0, out=target)  # NaN stays NaN, as in torch.relu
    return out


def backward_input(grad_out, weight, out, stride, padding, dilation, views, rows):
    """out (N, H, W, C_in) = the gradient of forward with respect to x."""
    batch, out_h, out_w, channels_out = grad_out.shape
    reduction = weight.shape[0] * weight.shape[1] * weight.shape[2]
    matrix = weight.reshape(reduction, channels_out)
    options = _options(stride, padding, dilation, weight.shape)
    flat_grad = grad_out.reshape(-1, channels_out)
    if _pixels_as_rows(out, weight.shape, grad_out.shape, stride, padding) is not None:
        matmul(flat_grad, matrix.T, out.reshape(-1, out.shape[3]))
        return out
    total = batch * out_h
    out[...] = 0.0
    for first in range(0, total, rows):
        count = min(rows, total - first)
        columns = _chunk_columns(views, reduction, count, out_w)
        matmul(matrix, flat_grad[first * out_w:(first + count) * out_w].T, columns.reshape(reduction, -1))
        _col2im(columns, first, out_h, *options, out)
    return out


def backward_weight(x, grad_out, out, stride, padding, dilation, views, rows):
    """out (kH, kW, C_in, C_out) = the gradient of forward with respect to weight."""
    batch, out_h, out_w, channels_out = grad_out.shape
    reduction = out.shape[0] * out.shape[1] * out.shape[2]
    target = out.reshape(reduction, channels_out)
    options = _options(stride, padding, dilation, out.shape)
    flat_grad = grad_out.reshape(-1, channels_out)
    pixels = _pixels_as_rows(x, out.shape, grad_out.shape, stride, padding)
    total = batch * out_h
    for first in range(0, total, rows):
        count = min(rows, total - first)
        if pixels is not None:
            columns = pixels[first * out_w:(first + count) * out_w].T
        else:
            columns = _chunk_columns(views, reduction, count, out_w).reshape(reduction, -1)
            _gather_columns(x, first, out_h, options, columns.reshape(reduction, count, out_w))
        grad = flat_grad[first * out_w:(first + count) * out_w]
        if first == 0:
            matmul(columns, grad, target)
            continue
        partial = views["partial"]
        for start in range(0, reduction, partial.shape[0]):
            stop = min(start + partial.shape[0], reduction)
            block = partial[:stop - start]
            matmul(columns[start:stop], grad, block)
            target[start:stop] += block
    return out
