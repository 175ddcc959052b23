"""Convolution as im2col + one BLAS GEMM per chunk of images, for groups=1 layers with few channels.

The register-tiled kernels in conv2d.py need at least a 32-channel tile; layers such as LeNet-5's (1→6, 6→16)
fall short of it, and a direct loop over 6 or 16 channels cannot vectorise. Here the taps are unrolled into the
reduction axis (kH·kW·C_in), so one GEMM does all the arithmetic with BLAS's own blocking. The columns are kept
transposed, (kH·kW·C_in, pixels), so that im2col copies whole output rows (contiguous, vectorisable) instead of
scattering single channels. Layouts are those of conv2d.py: NHWC activations, (kH, kW, C_in, C_out) weights,
(top, left) padding with the output size implied. The column workspace is bounded by processing the batch in
chunks of images (WORKSPACE_BYTES), and the weight gradient sums the chunks' GEMMs in chunk order, so results do
not depend on the thread count.
"""
import numpy as np
from numba import prange

from ._jit import jit, parallel_jit

WORKSPACE_BYTES = 32 << 20


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
def _im2col(x, first, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, kernel_h, kernel_w, columns):
    """columns[(kh * kW + kw) * C + c, (n - first) * H_out * W_out + oh * W_out + ow] = x[n, ih, iw, c] or 0."""
    _, height, width, channels = x.shape
    out_h, out_w = columns.shape[2], columns.shape[3]
    images = columns.shape[1]
    for job in prange(images * out_h):
        local_n = job // out_h
        oh = job % out_h
        n = first + local_n
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
                        columns[r, local_n, oh, ow] = 0.0
                    for ow in range(lo, hi):
                        columns[r, local_n, oh, ow] = x[n, ih, ow * stride_w + offset, c]
                    for ow in range(hi, out_w):
                        columns[r, local_n, oh, ow] = 0.0


@parallel_jit
def _col2im(columns, first, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, kernel_h, kernel_w,
            out):
    """out[n] = the sum of every column entry that im2col copied from x[n]: the adjoint of _im2col."""
    _, height, width, channels = out.shape
    out_h, out_w = columns.shape[2], columns.shape[3]
    for local_n in prange(columns.shape[1]):  # one image per iteration: no two iterations write the same pixel
        n = first + local_n
        out[n] = 0.0
        for kh in range(kernel_h):
            for kw in range(kernel_w):
                offset = kw * dilation_w - pad_left
                lo, hi = _valid_span(out_w, width, stride_w, offset)
                for c in range(channels):
                    source = columns[(kh * kernel_w + kw) * channels + c, local_n]
                    for oh in range(out_h):
                        ih = oh * stride_h - pad_top + kh * dilation_h
                        if ih < 0 or ih >= height:
                            continue
                        for ow in range(lo, hi):
                            out[n, ih, ow * stride_w + offset, c] += source[oh, ow]


def _image_chunks(batch, per_image_bytes):
    images = max(1, min(batch, WORKSPACE_BYTES // max(per_image_bytes, 1)))
    return [(first, min(first + images, batch)) for first in range(0, batch, images)]


def _options(stride, padding, dilation, weight_shape):
    return (stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1], weight_shape[0], weight_shape[1])


def conv2d_forward_gemm(x, weight, bias, out, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    """out (N, H_out, W_out, C_out) = conv(x, weight) + bias, groups=1; writes `out` and returns it."""
    batch, out_h, out_w, channels_out = out.shape
    reduction = weight.shape[0] * weight.shape[1] * weight.shape[2]
    matrix = weight.reshape(reduction, channels_out)
    options = _options(stride, padding, dilation, weight.shape)
    for first, last in _image_chunks(batch, out_h * out_w * reduction * x.itemsize):
        columns = np.empty((reduction, last - first, out_h, out_w), x.dtype)
        _im2col(x, first, *options, columns)
        target = out[first:last].reshape(-1, channels_out)
        np.matmul(columns.reshape(reduction, -1).T, matrix, out=target)
        if bias is not None:
            target += bias
    return out


def conv2d_backward_input_gemm(grad_out, weight, out, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    """out (N, H, W, C_in) = the gradient of conv2d_forward_gemm with respect to x."""
    batch, out_h, out_w, channels_out = grad_out.shape
    reduction = weight.shape[0] * weight.shape[1] * weight.shape[2]
    matrix = weight.reshape(reduction, channels_out)
    options = _options(stride, padding, dilation, weight.shape)
    for first, last in _image_chunks(batch, out_h * out_w * reduction * grad_out.itemsize):
        columns = np.empty((reduction, last - first, out_h, out_w), grad_out.dtype)
        np.matmul(matrix, grad_out[first:last].reshape(-1, channels_out).T, out=columns.reshape(reduction, -1))
        _col2im(columns, first, *options, out)
    return out


def conv2d_backward_weight_gemm(x, grad_out, out, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    """out (kH, kW, C_in, C_out) = the gradient of conv2d_forward_gemm with respect to weight."""
    batch, out_h, out_w, channels_out = grad_out.shape
    reduction = out.shape[0] * out.shape[1] * out.shape[2]
    target = out.reshape(reduction, channels_out)
    options = _options(stride, padding, dilation, out.shape)
    partial = np.empty_like(target)
    for index, (first, last) in enumerate(_image_chunks(batch, out_h * out_w * reduction * x.itemsize)):
        columns = np.empty((reduction, last - first, out_h, out_w), x.dtype)
        _im2col(x, first, *options, columns)
        np.matmul(columns.reshape(reduction, -1), grad_out[first:last].reshape(-1, channels_out),
                  out=target if index == 0 else partial)
        if index:
            target += partial
    return out
