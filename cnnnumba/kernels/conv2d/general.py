"""The general convolution loops: any stride, dilation, padding, groups and dtype, bounds checked per tap; the
fallback when no tiled variant applies (grouped and depthwise layers), and the bias gradient of every layer."""
import functools

import numpy as np
from numba import prange

from .._runtime import jit, parallel_jit, run_jobs
from .workspace import MAX_REDUCTION_CHUNKS, chunk_bounds, slots_within, spec_bytes, sum_partials_serial


@jit
def _forward_general_rows(first_job, last_job, worker, x, weight, bias, out, stride_h, stride_w, pad_top, pad_left,
                          dilation_h, dilation_w, groups, relu, rows_scratch):
    """Jobs (image, output row) first_job..last_job - 1 of _forward_general (run by _runtime.jobs.run_jobs)."""
    batch, height, width, _ = x.shape
    kernel_h, kernel_w, group_in, channels_out = weight.shape
    out_h, out_w = out.shape[1], out.shape[2]
    group_out = channels_out // groups
    row = rows_scratch[worker]
    for job in range(first_job, last_job):
        n = job // out_h
        oh = job % out_h
        if bias is None:
            row[...] = 0.0
        else:
            for ow in range(out_w):
                row[ow] = bias
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
        for ow in range(out_w):
            for co in range(channels_out):
                value = row[ow, co]
                # `value < 0` is False for NaN, so NaN passes through the ReLU, as in PyTorch
                out[n, oh, ow, co] = 0.0 if relu and value < 0 else value


def _forward_general(x, weight, bias, out, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, groups,
                     relu, rows_scratch):
    """rows_scratch (slots, W_out, C_out): one output row per slot; the threads claim ranges of the (image, row)
    jobs."""
    run_jobs(_forward_general_rows, out.shape[0] * out.shape[1], rows_scratch.shape[0], x, weight, bias, out, stride_h,
             stride_w, pad_top, pad_left, dilation_h, dilation_w, groups, relu, rows_scratch)


@jit
def _backward_input_general_rows(first_job, last_job, worker, grad_out, weight_t, out, stride_h, stride_w, pad_top,
                                 pad_left, dilation_h, dilation_w, groups, rows_scratch):
    """Jobs (image, input row) first_job..last_job - 1 of _backward_input_general (run by
    _runtime.jobs.run_jobs)."""
    batch, height, width, channels_in = out.shape
    kernel_h, kernel_w, channels_out, group_in = weight_t.shape
    out_h, out_w = grad_out.shape[1], grad_out.shape[2]
    group_out = channels_out // groups
    row = rows_scratch[worker]
    for job in range(first_job, last_job):
        n = job // height
        ih = job % height
        row[...] = 0.0
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
        for iw in range(width):
            for ci in range(channels_in):
                out[n, ih, iw, ci] = row[iw, ci]


def _backward_input_general(grad_out, weight_t, out, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w,
                            groups, rows_scratch):
    """weight_t is (kH, kW, C_out, C_in/groups): input channels innermost, so the inner loop is a contiguous axpy.
    rows_scratch (slots, W, C_in): one input row per slot."""
    run_jobs(_backward_input_general_rows, out.shape[0] * out.shape[1], rows_scratch.shape[0], grad_out, weight_t, out,
             stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, groups, rows_scratch)




@parallel_jit
def _backward_weight_general(x, grad_out, partials, out, stride_h, stride_w, pad_top, pad_left, dilation_h,
                             dilation_w, groups):
    """partials (chunks, kH, kW, C_in/groups, C_out): one weight gradient per chunk of the (image, row) range,
    summed in chunk order into out (partials may be out itself, reshaped, when there is one chunk)."""
    batch, height, width, _ = x.shape
    chunks, kernel_h, kernel_w, group_in, channels_out = partials.shape
    out_h, out_w = grad_out.shape[1], grad_out.shape[2]
    group_out = channels_out // groups
    rows = batch * out_h
    for chunk in prange(chunks):
        first, last = chunk_bounds(rows, chunks, np.int64(chunk))
        partials[chunk] = 0.0
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
                                    partials[chunk, kh, kw, ci, co] += value * grad_out[n, oh, ow, co]
    sum_partials_serial(partials, out)


@parallel_jit
def _backward_bias_kernel(grad_out, partials, out):
    """partials (chunks, C_out): one bias gradient per chunk of the (image, row) range, summed in chunk order."""
    batch, out_h, out_w, channels = grad_out.shape
    rows = batch * out_h
    chunks = partials.shape[0]
    for chunk in prange(chunks):
        first, last = chunk_bounds(rows, chunks, np.int64(chunk))
        partials[chunk] = 0.0
        for r in range(first, last):
            n = r // out_h
            oh = r % out_h
            for ow in range(out_w):
                for c in range(channels):
                    partials[chunk, c] += grad_out[n, oh, ow, c]
    sum_partials_serial(partials, out)


def _rows(pixels, channels, jobs, dtype, budget):
    per_slot = spec_bytes((pixels, channels), dtype)
    return ("rows", (slots_within(per_slot, 0, jobs, budget), pixels, channels), dtype)


def forward_plan(dtype, out_shape, weight_shape, budget):
    return (_rows(out_shape[2], weight_shape[3], out_shape[0] * out_shape[1], dtype, budget),), None


def backward_input_plan(dtype, x_shape, weight_shape, budget):
    kernel_h, kernel_w, group_in, channels_out = weight_shape
    transposed = (kernel_h, kernel_w, channels_out, group_in)
    rows = _rows(x_shape[2], x_shape[3], x_shape[0] * x_shape[1], dtype, budget - spec_bytes(transposed, dtype))
    return (("weight_t", transposed, dtype), rows), None


def backward_weight_plan(dtype, weight_shape, out_shape, budget):
    chunks = int(max(1, min(out_shape[0] * out_shape[1], MAX_REDUCTION_CHUNKS,
                            budget // 2 // spec_bytes(weight_shape, dtype))))
    return ((("partials", (chunks, *weight_shape), dtype),) if chunks > 1 else ()), None


@functools.lru_cache(maxsize=1024)
def backward_bias_plan(dtype, out_shape):
    """(specs, None) of the bias gradient: one partial per chunk of the (image, row) range. Cached: every conv layer
    asks for it every step."""
    chunks = min(out_shape[0] * out_shape[1], MAX_REDUCTION_CHUNKS)
    return (("partials", (chunks, out_shape[3]), dtype),), None


def forward(x, weight, bias, out, stride, padding, dilation, groups, relu, scratch):
    _forward_general(x, weight, bias, out, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
                     groups, relu, scratch["rows"])


def backward_input(grad_out, weight, out, stride, padding, dilation, groups, scratch):
    weight_t = scratch["weight_t"]
    weight_t[...] = weight.transpose(0, 1, 3, 2)
    _backward_input_general(grad_out, weight_t, out, stride[0], stride[1], padding[0], padding[1], dilation[0],
                            dilation[1], groups, scratch["rows"])


def backward_weight(x, grad_out, out, stride, padding, dilation, groups, scratch):
    partials = scratch["partials"] if "partials" in scratch else out.reshape((1, *out.shape))
    _backward_weight_general(x, grad_out, partials, out, stride[0], stride[1], padding[0], padding[1], dilation[0],
                             dilation[1], groups)


def backward_bias(grad_out, out, scratch):
    _backward_bias_kernel(np.ascontiguousarray(grad_out), scratch["partials"], out)
