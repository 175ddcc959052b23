"""2-D convolution kernels on NHWC activations and (kH, kW, C_in/groups, C_out) weights.

Layouts: activations are (N, H, W, C) and weights (kH, kW, C_in/groups, C_out), so channels are innermost
everywhere. Padding is given as (top, left); the bottom/right padding is implied by the output size. Every
public function writes into a caller-supplied array `out` (so a memory planner can hand in a preallocated
buffer) and returns it. The caller validates shapes; `_check_*` only guards against out-of-bounds access.
"""
import functools

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import conv2d_workspace
from ._jit import jit, parallel_jit
from ._slots import run_jobs, run_shares, run_slots
from .conv2d_gemm import gemm_plan
from .conv2d_workspace import carve, slots_within, spec_bytes, specs_bytes, sum_partials, sum_partials_serial
from .conv2d_gemm import conv2d_backward_input_gemm, conv2d_backward_weight_gemm, conv2d_forward_gemm
from . import conv2d_small
from . import conv2d_winograd, conv2d_winograd4, conv2d_winograd_weight
from .conv2d_small import conv2d_backward_input_small, conv2d_backward_weight_small, conv2d_forward_small
from ._vector import (INDEX, LANES, broadcast, element_pointer, lane_mask, load_vector, masked_load, masked_store,
                      store_vector, vector_fma)

# Reductions over the batch split the flattened (image, output row) range into this many chunks at most, a
# number that does not depend on the thread count, so results are bit-identical for any number of threads.
MAX_REDUCTION_CHUNKS = 16


# ---------------------------------------------------------------------------------------------------------
# General path: any stride, dilation, padding, groups, dtype. Bounds are checked per tap.
# ---------------------------------------------------------------------------------------------------------

@jit
def _forward_general_rows(first_job, last_job, worker, x, weight, bias, out, stride_h, stride_w, pad_top, pad_left,
                          dilation_h, dilation_w, groups, relu, rows_scratch):
    """Jobs (image, output row) first_job..last_job - 1 of _forward_general (run by kernels/_slots.run_jobs)."""
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
    kernels/_slots.run_jobs)."""
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


@jit
def _chunk_bounds(total, chunks, index):
    # callers pass a prange index as np.int64: Numba types it uint64 inside the gufunc and int64 outside,
    # and each type would compile a copy of every helper it reaches
    return index * total // chunks, (index + 1) * total // chunks


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
        first, last = _chunk_bounds(rows, chunks, np.int64(chunk))
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
        first, last = _chunk_bounds(rows, chunks, np.int64(chunk))
        partials[chunk] = 0.0
        for r in range(first, last):
            n = r // out_h
            oh = r % out_h
            for ow in range(out_w):
                for c in range(channels):
                    partials[chunk, c] += grad_out[n, oh, ow, c]
    sum_partials_serial(partials, out)


# ---------------------------------------------------------------------------------------------------------
# Fast path (float32, groups=1): the innermost tile is spelled out in LLVM IR so its accumulators stay in
# vector registers. A forward tile is 8 output pixels x 32 output channels: per input channel, two <16 x float>
# weight loads and 8 broadcast input values feed 16 fused multiply-adds. Tiles at the right/bottom edges are
# shifted back to overlap their neighbour (recomputing identical values) instead of needing remainder code.
# ---------------------------------------------------------------------------------------------------------

CACHE_LINE = 64
TILE_PIXELS = 8
TILE_CHANNELS = 2 * LANES
WEIGHT_TILE_ROWS = 8
NARROW_TILE_PIXELS = 16
# Forward tiles of 4 pixels x 64 channels (16 accumulators, 4 weight loads and 4 broadcasts per 16 FMAs instead of
# 2 and 8) for layers with 64 or more output channels: 1.04-1.14x the 8 x 32 tile on 2 threads at the
# cifar-cnn's 64-channel shapes, measured in one process, interleaved.
BROAD_TILE_PIXELS = 4
BROAD_TILE_CHANNELS = 4 * 16
BROAD_WEIGHT_TILE_ROWS = 4
NARROW_TILE_CHANNELS = LANES
NARROW_WEIGHT_TILE_ROWS = 16
# Reduction (kW * C_in) entries per forward pass over a strip, so that a 32-channel weight block stays in L1/L2
# while every tile of the strip uses it. Measured at the cifar-cnn shapes (reductions of 96-192), blocks of
# 16-64 were no faster than none on 2 threads, so only wider layers are split.
REDUCTION_BLOCK = 256
# Output pixels per backward-weight block: every tap and tile runs over a block while it is in L1.
PIXELS_PER_BLOCK = 64
# Output pixels per weight-gradient partial, at least (see _reduction_chunks).
PIXELS_PER_CHUNK = 1024

def _make_forward_tile(pixels, vectors):
    """An intrinsic computing one forward tile of `pixels` output pixels x `vectors` * 16 output channels."""

    @intrinsic
    def forward_tile(typingctx, out, out_offset, out_pixel_step, accumulate, relu, x, x_offset, x_pixel_step, weight,
                     weight_offset, bias, bias_offset, kernel_h, kernel_w, x_tap_h_step, x_tap_w_step, weight_tap_step,
                     channels_in, channels_out):
        """out[p * out_pixel_step + 0:V*16] = start + sum over (kh, kw, ci) of x[p * x_pixel_step + taps + ci] *
        weight[taps, ci, 0:V*16] for the pixels p of one tile, where start is bias[0:V*16], or the tile's own
        out values when accumulate is nonzero, and the stored sums clamped at 0 (NaN kept) when relu is nonzero;
        offsets and steps count float32 elements, the row step of weight is channels_out."""
        index = types.intp
        signature = types.void(out, index, index, index, index, x, index, index, weight, index, bias, index, index,
                               index, index, index, index, index, index)

        def codegen(context, builder, sig, args):
            (out_value, out_offset, out_pixel_step, accumulate, relu, x_value, x_offset, x_pixel_step, weight_value,
             weight_offset, bias_value, bias_offset, kernel_h, kernel_w, x_tap_h_step, x_tap_w_step, weight_tap_step,
             channels_in, channels_out) = args
            fma = vector_fma(builder)
            out_pointer = element_pointer(context, builder, sig.args[0], out_value, out_offset)
            x_pointer = element_pointer(context, builder, sig.args[5], x_value, x_offset)
            weight_pointer = element_pointer(context, builder, sig.args[8], weight_value, weight_offset)
            bias_pointer = element_pointer(context, builder, sig.args[10], bias_value, bias_offset)
            bias_vectors = [load_vector(builder, builder.gep(bias_pointer, [ir.Constant(INDEX, v * LANES)]))
                            for v in range(vectors)]
            from_out = builder.icmp_signed("!=", accumulate, ir.Constant(INDEX, 0))
            accumulators = []
            for p in range(pixels):
                out_pixel = builder.gep(out_pointer, [builder.mul(out_pixel_step, ir.Constant(INDEX, p))])
                for v in range(vectors):
                    slot = cgutils.alloca_once(builder, bias_vectors[v].type)
                    with builder.if_else(from_out) as (then, otherwise):
                        with then:
                            previous = load_vector(builder, builder.gep(out_pixel, [ir.Constant(INDEX, v * LANES)]))
                            builder.store(previous, slot)
                        with otherwise:
                            builder.store(bias_vectors[v], slot)
                    accumulators.append(slot)
            with cgutils.for_range(builder, kernel_h) as tap_h:
                with cgutils.for_range(builder, kernel_w) as tap_w:
                    x_tap = builder.gep(x_pointer, [builder.add(builder.mul(tap_h.index, x_tap_h_step),
                                                                builder.mul(tap_w.index, x_tap_w_step))])
                    tap = builder.add(builder.mul(tap_h.index, kernel_w), tap_w.index)
                    weight_tap = builder.gep(weight_pointer, [builder.mul(tap, weight_tap_step)])
                    with cgutils.for_range(builder, channels_in) as channel:
                        weight_row = builder.gep(weight_tap, [builder.mul(channel.index, channels_out)])
                        weights = [load_vector(builder, builder.gep(weight_row, [ir.Constant(INDEX, v * LANES)]))
                                   for v in range(vectors)]
                        x_channel = builder.gep(x_tap, [channel.index])
                        for p in range(pixels):
                            pixel = builder.mul(x_pixel_step, ir.Constant(INDEX, p))
                            value = broadcast(builder, builder.load(builder.gep(x_channel, [pixel])))
                            for v in range(vectors):
                                slot = accumulators[vectors * p + v]
                                builder.store(builder.call(fma, [value, weights[v], builder.load(slot)]), slot)
            zero = ir.Constant(bias_vectors[0].type, [0.0] * LANES)
            # two store sequences behind one branch, so a tile without the ReLU pays nothing for it
            with builder.if_else(builder.icmp_signed("!=", relu, ir.Constant(INDEX, 0))) as (clamped, plain):
                for clamp, block in ((True, clamped), (False, plain)):
                    with block:
                        for p in range(pixels):
                            out_pixel = builder.gep(out_pointer,
                                                    [builder.mul(out_pixel_step, ir.Constant(INDEX, p))])
                            for v in range(vectors):
                                total = builder.load(accumulators[vectors * p + v])
                                if clamp:
                                    # ordered `<` is false for NaN, so NaN passes through, as in PyTorch
                                    total = builder.select(builder.fcmp_ordered("<", total, zero), zero, total)
                                store_vector(builder, total, builder.gep(out_pixel, [ir.Constant(INDEX, v * LANES)]))
            return context.get_dummy_value()

        return signature, codegen

    return forward_tile


def _make_weight_tile(rows_per_tile, vectors):
    """An intrinsic accumulating one weight-gradient tile of `rows_per_tile` input channels x `vectors` * 16
    output channels."""

    @intrinsic
    def weight_tile(typingctx, grad_weight, grad_weight_offset, x, x_offset, x_pixel_step, x_row_step, grad_out,
                    grad_out_offset, grad_out_row_step, rows, columns, channels_out):
        """grad_weight[r, 0:V*16] += sum over (row, column) of x[row, column, r] * grad_out[row, column, 0:V*16]
        for the input channels r of one tile; grad_out pixels are channels_out apart, grad_weight rows too."""
        index = types.intp
        signature = types.void(grad_weight, index, x, index, index, index, grad_out, index, index, index, index,
                               index)

        def codegen(context, builder, sig, args):
            (grad_weight_value, grad_weight_offset, x_value, x_offset, x_pixel_step, x_row_step, grad_out_value,
             grad_out_offset, grad_out_row_step, rows, columns, channels_out) = args
            fma = vector_fma(builder)
            grad_weight_pointer = element_pointer(context, builder, sig.args[0], grad_weight_value,
                                                   grad_weight_offset)
            x_pointer = element_pointer(context, builder, sig.args[2], x_value, x_offset)
            grad_out_pointer = element_pointer(context, builder, sig.args[6], grad_out_value, grad_out_offset)
            accumulators = []
            for r in range(rows_per_tile):
                row_pointer = builder.gep(grad_weight_pointer, [builder.mul(channels_out, ir.Constant(INDEX, r))])
                for v in range(vectors):
                    current = load_vector(builder, builder.gep(row_pointer, [ir.Constant(INDEX, v * LANES)]))
                    slot = cgutils.alloca_once(builder, current.type)
                    builder.store(current, slot)
                    accumulators.append((slot, row_pointer, v))
            with cgutils.for_range(builder, rows) as row:
                x_row = builder.gep(x_pointer, [builder.mul(row.index, x_row_step)])
                grad_row = builder.gep(grad_out_pointer, [builder.mul(row.index, grad_out_row_step)])
                with cgutils.for_range(builder, columns) as column:
                    x_pixel = builder.gep(x_row, [builder.mul(column.index, x_pixel_step)])
                    grad_pixel = builder.gep(grad_row, [builder.mul(column.index, channels_out)])
                    grads = [load_vector(builder, builder.gep(grad_pixel, [ir.Constant(INDEX, v * LANES)]))
                             for v in range(vectors)]
                    for r in range(rows_per_tile):
                        value = broadcast(builder, builder.load(builder.gep(x_pixel, [ir.Constant(INDEX, r)])))
                        for v in range(vectors):
                            slot = accumulators[vectors * r + v][0]
                            builder.store(builder.call(fma, [value, grads[v], builder.load(slot)]), slot)
            for slot, row_pointer, v in accumulators:
                store_vector(builder, builder.load(slot), builder.gep(row_pointer, [ir.Constant(INDEX, v * LANES)]))
            return context.get_dummy_value()

        return signature, codegen

    return weight_tile


# Wide tiles (32 channels: 16 accumulators, 2 vector loads per 8 or 16 broadcasts) wherever the layer has 32
# channels on the vector side; narrow ones (16 channels, 16 pixels or input channels) for 16-channel layers.
_forward_tile = _make_forward_tile(TILE_PIXELS, 2)
_forward_tile_broad = _make_forward_tile(BROAD_TILE_PIXELS, 4)
_forward_tile_narrow = _make_forward_tile(NARROW_TILE_PIXELS, 1)
_weight_tile = _make_weight_tile(WEIGHT_TILE_ROWS, 2)
_weight_tile_narrow = _make_weight_tile(NARROW_WEIGHT_TILE_ROWS, 1)
_weight_tile_broad = _make_weight_tile(BROAD_WEIGHT_TILE_ROWS, 4)


@jit
def _run_forward_tile(kind, out, out_offset, out_pixel_step, accumulate, relu, x, x_offset, x_pixel_step, weight,
                      weight_offset, bias, bias_offset, kernel_h, kernel_w, x_tap_h_step, x_tap_w_step, weight_tap_step,
                      channels_in, channels_out):
    """The forward tile of the given kind: 2 = 4 x 64 (broad), 1 = 8 x 32 (wide), 0 = 16 x 16 (narrow)."""
    if kind == 2:
        _forward_tile_broad(out, out_offset, out_pixel_step, accumulate, relu, x, x_offset, x_pixel_step, weight,
                            weight_offset, bias, bias_offset, kernel_h, kernel_w, x_tap_h_step, x_tap_w_step,
                            weight_tap_step, channels_in, channels_out)
    elif kind == 1:
        _forward_tile(out, out_offset, out_pixel_step, accumulate, relu, x, x_offset, x_pixel_step, weight,
                      weight_offset, bias, bias_offset, kernel_h, kernel_w, x_tap_h_step, x_tap_w_step, weight_tap_step,
                      channels_in, channels_out)
    else:
        _forward_tile_narrow(out, out_offset, out_pixel_step, accumulate, relu, x, x_offset, x_pixel_step, weight,
                             weight_offset, bias, bias_offset, kernel_h, kernel_w, x_tap_h_step, x_tap_w_step,
                             weight_tap_step, channels_in, channels_out)


@jit
def _run_weight_tile(kind, grad_weight, grad_weight_offset, x, x_offset, x_pixel_step, x_row_step, grad_out,
                     grad_out_offset, grad_out_row_step, rows, columns, channels_out):
    """The weight-gradient tile of the given kind: 2 = 4 x 64 (broad), 1 = 8 x 32 (wide), 0 = 16 x 16 (narrow)."""
    if kind == 2:
        _weight_tile_broad(grad_weight, grad_weight_offset, x, x_offset, x_pixel_step, x_row_step, grad_out,
                           grad_out_offset, grad_out_row_step, rows, columns, channels_out)
    elif kind == 1:
        _weight_tile(grad_weight, grad_weight_offset, x, x_offset, x_pixel_step, x_row_step, grad_out,
                     grad_out_offset, grad_out_row_step, rows, columns, channels_out)
    else:
        _weight_tile_narrow(grad_weight, grad_weight_offset, x, x_offset, x_pixel_step, x_row_step, grad_out,
                            grad_out_offset, grad_out_row_step, rows, columns, channels_out)


@intrinsic
def _copy_lanes(typingctx, out, out_offset, x, x_offset, count):
    """out[out_offset + i] = x[x_offset + i] for i < min(count, 16): one masked vector load and store, nothing
    touched past count (offsets and count in float32 elements)."""
    index = types.intp

    def codegen(context, builder, sig, args):
        out_value, out_offset, x_value, x_offset, count = args
        mask = lane_mask(builder, count)
        value = masked_load(builder, element_pointer(context, builder, sig.args[2], x_value, x_offset), mask)
        masked_store(builder, value, element_pointer(context, builder, sig.args[0], out_value, out_offset), mask)
        return context.get_dummy_value()

    return types.void(out, index, x, index, index), codegen


@intrinsic
def _copy_vector(typingctx, out, out_offset, x, x_offset):
    """out[out_offset:out_offset + 16] = x[x_offset:x_offset + 16] (offsets in float32 elements)."""
    index = types.intp

    def codegen(context, builder, sig, args):
        out_value, out_offset, x_value, x_offset = args
        value = load_vector(builder, element_pointer(context, builder, sig.args[2], x_value, x_offset))
        store_vector(builder, value, element_pointer(context, builder, sig.args[0], out_value, out_offset))
        return context.get_dummy_value()

    return types.void(out, index, x, index), codegen


@jit
def _fill_strip(x, n, first_ih, pad_left, strip):
    """strip[r, c] = x[n, first_ih + r, c - pad_left] where that pixel exists, else 0: rows of the padded image
    (a negative pad_left or first_ih starts the strip inside the image). x and strip are C-contiguous."""
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    frame_w = strip.shape[1]
    first_col = min(max(pad_left, 0), frame_w)
    last_col = max(min(pad_left + width, frame_w), first_col)
    # a row's pixels are one contiguous run in both: 16 floats per masked copy, whatever the channel count (an
    # element loop over 3 channels took longer than the weight gradient's arithmetic of a first layer)
    run = (last_col - first_col) * channels
    for r in range(strip.shape[0]):
        ih = first_ih + r
        if ih < 0 or ih >= height:
            strip[r] = 0.0
        else:
            strip[r, :first_col] = 0.0
            source = ((n * height + ih) * width + first_col - pad_left) * channels
            target = (r * frame_w + first_col) * channels
            for i in range(0, run, LANES):
                _copy_lanes(strip, target + i, x, source + i, run - i)
            strip[r, last_col:] = 0.0


@jit
def _forward_rows_claimed(first_job, last_job, worker, x, weight, bias, out, strips, geometry, relu):
    """Jobs first_job..last_job - 1 of _forward_rows (run by kernels/_slots.run_jobs), in worker's strip."""
    _forward_rows_jobs(first_job, last_job, x, weight, bias, out, strips[worker], geometry, relu)


@jit
def _forward_rows_jobs(first_job, last_job, x, weight, bias, out, strip, geometry, relu):
    """Jobs first_job..last_job of a register-tiled forward (see _forward_rows), padding rows into strip."""
    (stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, rows_per_job, out_h, out_w, out_first_h,
     out_first_w, out_step_h, out_step_w, reduction_block) = geometry
    channels = x.shape[3]
    kernel_h, kernel_w, reduction, channels_out = weight.shape
    frame_w = strip.shape[1]
    full_h, full_w = out.shape[1], out.shape[2]
    out_pixel_step = out_step_w * channels_out
    blocks = (out_h + rows_per_job - 1) // rows_per_job
    x_pixel_step = stride_w * channels
    x_row_step = stride_h * frame_w * channels
    x_tap_h_step = dilation_h * frame_w * channels
    x_tap_w_step = dilation_w * channels
    weight_tap_step = reduction * channels_out
    clamp = 1 if relu else 0
    overwrite = np.int64(0)  # not a literal 0: that would compile a second _run_forward_tile signature
    if channels_out >= BROAD_TILE_CHANNELS:
        kind, tile_pixels, tile_channels = 2, BROAD_TILE_PIXELS, BROAD_TILE_CHANNELS
    elif channels_out >= TILE_CHANNELS:
        kind, tile_pixels, tile_channels = 1, TILE_PIXELS, TILE_CHANNELS
    else:
        kind, tile_pixels, tile_channels = 0, NARROW_TILE_PIXELS, NARROW_TILE_CHANNELS
    for job in range(first_job, last_job):
        n = job // blocks
        first = (job % blocks) * rows_per_job
        last = min(first + rows_per_job, out_h)
        _fill_strip(x, n, first * stride_h - pad_top, pad_left, strip)
        # The reduction is split into blocks whose weights (kH * kW * block * 32 floats) stay in L1 while every
        # whole pixel tile of the strip uses them; later blocks add to the partial sums already in out, so only
        # the last block's store may apply the ReLU. A last tile that overlaps its neighbour (width not a
        # multiple of the tile) runs the whole reduction at once after them, so the overlapped pixels are
        # recomputed rather than added twice.
        whole_w = out_w - out_w % tile_pixels
        for co_block in range(0, channels_out, tile_channels):
            co = min(co_block, channels_out - tile_channels)
            for r in range(0, reduction, reduction_block):
                block = min(reduction_block, reduction - r)
                final = clamp if r + block >= reduction else 0
                for oh in range(first, last):
                    x_row = (oh - first) * x_row_step + r
                    out_row = ((n * full_h + out_first_h + oh * out_step_h) * full_w + out_first_w) * channels_out
                    for ow in range(0, whole_w, tile_pixels):
                        _run_forward_tile(kind, out, out_row + ow * out_pixel_step + co, out_pixel_step, r, final,
                                          strip, x_row + ow * x_pixel_step, x_pixel_step, weight,
                                          r * channels_out + co, bias, co, kernel_h, kernel_w, x_tap_h_step,
                                          x_tap_w_step, weight_tap_step, block, channels_out)
            if whole_w < out_w:
                ow = out_w - tile_pixels
                for oh in range(first, last):
                    out_row = ((n * full_h + out_first_h + oh * out_step_h) * full_w + out_first_w) * channels_out
                    _run_forward_tile(kind, out, out_row + ow * out_pixel_step + co, out_pixel_step, overwrite, clamp,
                                      strip, (oh - first) * x_row_step + ow * x_pixel_step, x_pixel_step, weight,
                                      co, bias, co, kernel_h, kernel_w, x_tap_h_step, x_tap_w_step,
                                      weight_tap_step, reduction, channels_out)


def _forward_rows(x, weight, bias, out, strips, geometry, relu):
    """Each job pads the input rows under rows_per_job output rows of one image into its worker's strip (no
    whole-batch padded copy: the strip stays in cache while the tiles read it), then runs the tiles. strips is
    (workers, strip_h, frame_w, C_in); the threads claim ranges of the jobs.
    The out_h x out_w output pixels land in out at rows out_first_h + out_step_h * oh and columns
    out_first_w + out_step_w * ow (steps of 1 for a plain forward; the phases of a strided backward-input
    each fill every stride-th pixel). relu clamps the stored sums at 0 (NaN kept) in the tiles' last store.
    weight is (kH, kW, R, C_out) where R is C_in, or kW' * C_in with kW = 1 when the taps of a kernel row
    are folded into the reduction (dilation 1 along the width makes them contiguous in the strip).
    geometry is (stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, rows_per_job, out_h, out_w,
    out_first_h, out_first_w, out_step_h, out_step_w, reduction_block)."""
    rows_per_job, out_h = geometry[6], geometry[7]
    run_jobs(_forward_rows_claimed, x.shape[0] * -(-out_h // rows_per_job), strips.shape[0], x, weight, bias, out,
             strips, geometry, relu)


@jit
def _forward_phases_slot(slot, slots, x, weights, bias, out, strips, phases, reduction_block, relu):
    """The share of one slot of all the phases' jobs (see _forward_phases)."""
    batch, channels = x.shape[0], x.shape[3]
    strip_size = strips.shape[0] // slots
    total = phases[-1, 22]
    first_unit, last_unit = slot * total // slots, (slot + 1) * total // slots
    # With an image or more per slot, the slot runs every phase of one image before the next: the phases write
    # interleaved pixels of the same rows, which then stay in cache (phase after phase over the whole batch read
    # and wrote each cache line of out once per phase). Fewer images: shares of all the phases' jobs by cost.
    by_image = batch >= slots
    images = (slot + 1) * batch // slots - slot * batch // slots if by_image else 1
    for image in range(images):
        n = slot * batch // slots + image
        for p in range(phases.shape[0]):
            g = phases[p]
            jobs, cost, start = g[20], g[21], g[22] - g[20] * g[21]
            if by_image:
                first, last = n * (jobs // batch), (n + 1) * (jobs // batch)
            else:
                # a job belongs to the slot whose share holds its first unit of work
                first = min(jobs, max(0, -((start - first_unit) // cost)))
                last = min(jobs, max(0, -((start - last_unit) // cost)))
            if first >= last:
                continue
            geometry = (g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9], g[10], g[11], g[12],
                        reduction_block)
            weight = weights[g[18]:g[18] + g[14] * g[15] * g[16] * g[17]].reshape((g[14], g[15], g[16], g[17]))
            strip = strips[slot * strip_size:slot * strip_size + g[13] * g[19] * channels].reshape((g[13], g[19],
                                                                                                 channels))
            _forward_rows_jobs(first, last, x, weight, bias, out, strip, geometry, relu)


def _forward_phases(x, weights, bias, out, strips, phases, reduction_block, relu, slots):
    """Several register-tiled forwards of one x in one parallel region: the stride phases of a strided
    backward-input, each writing its own grid of out pixels. phases is an int64 table, one row per forward:
    its _forward_rows geometry (13 values, the reduction block apart), strip rows, its weight's 4-D shape,
    the weight's offset in the flat weights, frame width, jobs, cost per job (taps) and the cumulative cost up to
    and including it. The slots take contiguous shares of the total cost (a one-tap phase's jobs are cheaper
    than a four-tap one's); strips is flat, one strip of the largest phase per slot."""
    run_slots(_forward_phases_slot, slots, slots, x, weights, bias, out, strips, phases, reduction_block, relu)


@jit
def _backward_weight_rows_chunks(first_chunk, last_chunk, worker, x, grad_out, partials, strips, grad_blocks,
                                 stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, band_rows):
    """Chunks first_chunk..last_chunk - 1 of _backward_weight_rows (run by kernels/_slots.run_jobs), in
    worker's strip and grad block."""
    batch, _, _, channels = x.shape
    chunks, kernel_h, kernel_w, reduction, channels_out = partials.shape
    frame_w = strips.shape[2]
    out_h, out_w = grad_out.shape[1], grad_out.shape[2]
    rows = batch * out_h
    x_pixel_step = stride_w * channels
    x_row_step = stride_h * frame_w * channels
    grad_row_step = out_w * channels_out
    block_rows = grad_blocks.shape[1] // grad_row_step
    chunk_size = kernel_h * kernel_w * reduction * channels_out
    if channels_out % BROAD_TILE_CHANNELS == 0:
        kind, tile_rows, tile_channels = 2, BROAD_WEIGHT_TILE_ROWS, BROAD_TILE_CHANNELS
    elif channels_out % TILE_CHANNELS == 0:
        kind, tile_rows, tile_channels = 1, WEIGHT_TILE_ROWS, TILE_CHANNELS
    else:
        kind, tile_rows, tile_channels = 0, NARROW_WEIGHT_TILE_ROWS, NARROW_TILE_CHANNELS
    grad_flat = grad_out.reshape(-1)
    strip = strips[worker]
    # The tiles load grad_out as 64-byte vectors: each block's rows are copied once to the worker's
    # cache-line-aligned buffer (the caller's array may start anywhere), then read by every tap and tile.
    grad_block = grad_blocks[worker]
    for chunk in range(first_chunk, last_chunk):
        first, last = _chunk_bounds(rows, chunks, chunk)
        partials[chunk] = 0.0
        r = first
        while r < last:
            n = r // out_h
            oh = r % out_h
            span = min(last - r, out_h - oh, band_rows)
            _fill_strip(x, n, oh * stride_h - pad_top, pad_left,
                        strip[:(span - 1) * stride_h + dilation_h * (kernel_h - 1) + 1])
            for b in range(0, span, block_rows):
                count = min(block_rows, span - b)
                grad_start = (r + b) * grad_row_step
                for i in range(count * grad_row_step):  # an element loop compiles faster than a slice copy
                    grad_block[i] = grad_flat[grad_start + i]
                for kh in range(kernel_h):
                    for kw in range(kernel_w):
                        x_start = ((b * stride_h + kh * dilation_h) * frame_w + kw * dilation_w) * channels
                        tap_start = chunk * chunk_size + (kh * kernel_w + kw) * reduction * channels_out
                        for ci in range(0, reduction, tile_rows):
                            for co in range(0, channels_out, tile_channels):
                                _run_weight_tile(kind, partials, tap_start + ci * channels_out + co, strip,
                                                 x_start + ci, x_pixel_step, x_row_step, grad_block, co,
                                                 grad_row_step, count, out_w, channels_out)
            r += span


def _backward_weight_rows(x, grad_out, partials, strips, grad_blocks, stride_h, stride_w, pad_top, pad_left,
                          dilation_h, dilation_w, band_rows):
    """partials[chunk] = the weight gradient of the chunk's share of the (image, output row) range, laid out (kH,
    kW, R, C_out) where R is C_in, or (kH, 1, R, C_out) with R >= kW * C_in rounded up to a whole tile when the kW
    taps are folded into the reduction (dilation 1 along the width). The threads claim ranges of chunks, each
    working in its own strip of strips (workers, strip_h, frame_w, C_in) and block of grad_blocks (workers, block
    pixels * C_out, cache-line aligned). A chunk pads the input rows of at most band_rows output rows of one image
    into its strip at a time, then walks them in blocks of about PIXELS_PER_BLOCK output pixels, running every tap
    and (C_in, C_out) tile over a block while its pixels are in L1. Each weight entry receives its pixels' products
    in (image, row, column) order whatever the bands, so the result depends on the chunks only."""
    run_jobs(_backward_weight_rows_chunks, partials.shape[0], strips.shape[0], x, grad_out, partials, strips,
             grad_blocks, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, band_rows)


@jit
def _backward_weight_columns_chunks(first_chunk, last_chunk, worker, x, grad_out, partials, strips, columns,
                                    stride_h, stride_w, pad_top, pad_left, dilation_h, kernel_h, kernel_w, band_rows):
    """Chunks first_chunk..last_chunk - 1 of _backward_weight_columns (run by kernels/_slots.run_jobs), in
    worker's strip and columns."""
    batch, _, _, channels = x.shape
    chunks, _, _, reduction, channels_out = partials.shape
    frame_w = strips.shape[2]
    out_h, out_w = grad_out.shape[1], grad_out.shape[2]
    grad_row_step = out_w * channels_out
    block_rows = (columns.shape[1] - LANES) // (out_w * reduction)
    chunk_size = reduction * channels_out
    run = kernel_w * channels  # the kW taps of a kernel row, side by side in a strip row (dilation 1 across)
    if channels_out % BROAD_TILE_CHANNELS == 0:
        kind, tile_rows, tile_channels = 2, BROAD_WEIGHT_TILE_ROWS, BROAD_TILE_CHANNELS
    elif channels_out % TILE_CHANNELS == 0:
        kind, tile_rows, tile_channels = 1, WEIGHT_TILE_ROWS, TILE_CHANNELS
    else:
        kind, tile_rows, tile_channels = 0, NARROW_WEIGHT_TILE_ROWS, NARROW_TILE_CHANNELS
    strip = strips[worker]
    column_block = columns[worker]
    # the tiles get the operand types of _backward_weight_rows_chunks's (a 3-D x, a flat grad_out), so a network
    # with both kinds of layer compiles _run_weight_tile once for them
    column_rows = column_block.reshape((1, 1, column_block.size))
    grad_flat = grad_out.reshape(-1)
    for chunk in range(first_chunk, last_chunk):
        first, last = _chunk_bounds(batch * out_h, chunks, chunk)
        partials[chunk] = 0.0
        r = first
        while r < last:
            n = r // out_h
            oh = r % out_h
            span = min(last - r, out_h - oh, band_rows)
            _fill_strip(x, n, oh * stride_h - pad_top, pad_left,
                        strip[:(span - 1) * stride_h + dilation_h * (kernel_h - 1) + 1])
            for b in range(0, span, block_rows):
                count = min(block_rows, span - b)
                for row in range(count):
                    for ow in range(out_w):
                        target = (row * out_w + ow) * reduction
                        for kh in range(kernel_h):
                            source = (((b + row) * stride_h + kh * dilation_h) * frame_w + ow * stride_w) * channels
                            for i in range(0, run, LANES):
                                _copy_vector(column_block, target + kh * run + i, strip, source + i)
                # grad_out is read in place: its rows stream through once, so an aligned copy would cost more
                for ci in range(0, reduction, tile_rows):
                    for co in range(0, channels_out, tile_channels):
                        _run_weight_tile(kind, partials, chunk * chunk_size + ci * channels_out + co, column_rows,
                                         ci, reduction, out_w * reduction, grad_flat, (r + b) * grad_row_step + co,
                                         grad_row_step, count, out_w, channels_out)
            r += span


def _backward_weight_columns(x, grad_out, partials, strips, columns, stride, padding, dilation_h, kernel_hw,
                             band_rows):
    """partials[chunk] = the weight gradient of the chunk's share of the (image, output row) range as one
    (1, 1, R, C_out) matrix, R >= kH * kW * C_in rounded up to a whole tile: for layers with few input channels
    (a network's first), where folding only the kW taps (_backward_weight_rows) pads each kernel row's reduction
    to a whole tile. A chunk pads the input rows under at most band_rows output rows of one image into its strip
    (workers, strip_h, frame_w, C_in), then, a block of about PIXELS_PER_BLOCK output pixels at a time, copies the
    kH * kW * C_in values under each pixel side by side into its columns (workers, block pixels * R) and runs
    every tile over the block. Dilation 1 along the width. Each entry sums its pixels in (image, row, column)
    order, so the result depends on the chunks only."""
    # Whole vectors are copied: each overwrites up to 15 floats past its run, which the next run or pixel then
    # writes (or which are the padding rows past kH * kW * C_in, whose products land in dropped rows); the last
    # ones reach into LANES floats of slack at the end of the columns and into the strips' spare rows, zeroed here
    # once for every range of chunks.
    row_size = strips.shape[2] * strips.shape[3]
    columns[...] = 0.0
    strips[:, strips.shape[1] - (LANES + row_size - 1) // row_size:] = 0.0
    run_jobs(_backward_weight_columns_chunks, partials.shape[0], strips.shape[0], x, grad_out, partials, strips,
             columns, stride[0], stride[1], padding[0], padding[1], dilation_h, kernel_hw[0], kernel_hw[1], band_rows)


# ---------------------------------------------------------------------------------------------------------
# 1x1 convolutions without padding (ResNet projection shortcuts, any stride): a GEMM over the strided pixels.
# The tiles read the input rows where they lie (a pixel step of stride * C_in), so there is no padded strip
# to fill, and the backward-input tiles write every stride-th pixel of a row while the rest is zeroed in the
# same pass. Same tile intrinsics and argument types as the 3x3 path, so nothing new is compiled for them.
# ---------------------------------------------------------------------------------------------------------

@jit
def _pointwise_row(out, out_row, out_pixel_step, pixels, x_rows, x_row, x_pixel_step, weight, bias, relu,
                   reduction_block):
    """One row of `pixels` output pixels of a 1x1 convolution: out[out_row + p * out_pixel_step + co] =
    bias[co] + sum over ci of x_rows.flat[x_row + p * x_pixel_step + ci] * weight[0, 0, ci, co], clamped at 0
    when relu is nonzero. weight is (1, 1, C_in, C_out) and cache-line aligned; pixels >= one tile; the reduction
    runs in blocks of reduction_block input channels (REDUCTION_BLOCK, a parameter so tests can shrink it)."""
    _, _, reduction, channels_out = weight.shape
    kernel_h, kernel_w = weight.shape[0], weight.shape[1]
    weight_tap_step = reduction * channels_out
    overwrite = np.int64(0)  # not a literal 0: that would compile a second _run_forward_tile signature
    if channels_out >= BROAD_TILE_CHANNELS:
        kind, tile_pixels, tile_channels = 2, BROAD_TILE_PIXELS, BROAD_TILE_CHANNELS
    elif channels_out >= TILE_CHANNELS:
        kind, tile_pixels, tile_channels = 1, TILE_PIXELS, TILE_CHANNELS
    else:
        kind, tile_pixels, tile_channels = 0, NARROW_TILE_PIXELS, NARROW_TILE_CHANNELS
    whole = pixels - pixels % tile_pixels
    for co_block in range(0, channels_out, tile_channels):
        co = min(co_block, channels_out - tile_channels)
        # as in _forward_rows_jobs: later reduction blocks add to the sums in out, only the last may clamp, and
        # an overlapping last tile recomputes its whole reduction
        for r in range(0, reduction, reduction_block):
            block = min(reduction_block, reduction - r)
            final = relu if r + block >= reduction else 0
            for p in range(0, whole, tile_pixels):
                _run_forward_tile(kind, out, out_row + p * out_pixel_step + co, out_pixel_step, r, final, x_rows,
                                  x_row + p * x_pixel_step + r, x_pixel_step, weight, r * channels_out + co, bias, co,
                                  kernel_h, kernel_w, x_pixel_step, x_pixel_step, weight_tap_step, block, channels_out)
        if whole < pixels:
            p = pixels - tile_pixels
            _run_forward_tile(kind, out, out_row + p * out_pixel_step + co, out_pixel_step, overwrite, relu, x_rows,
                              x_row + p * x_pixel_step, x_pixel_step, weight, co, bias, co, kernel_h, kernel_w,
                              x_pixel_step, x_pixel_step, weight_tap_step, reduction, channels_out)


@jit
def _pointwise_forward_slot(slot, slots, x_rows, weight, bias, out, stride_h, stride_w, relu, reduction_block):
    """The output rows of one slot: x_rows is the input as (N * H, W, C_in), out (N, H_out, W_out, C_out)."""
    batch, out_h, out_w, channels_out = out.shape
    height = x_rows.shape[0] // batch
    row_step = x_rows.shape[1] * x_rows.shape[2]
    jobs = batch * out_h
    for job in range(slot * jobs // slots, (slot + 1) * jobs // slots):
        n = job // out_h
        oh = job % out_h
        _pointwise_row(out, job * out_w * channels_out, channels_out, out_w, x_rows,
                       (n * height + oh * stride_h) * row_step, stride_w * x_rows.shape[2], weight, bias, relu,
                       reduction_block)


def _pointwise_forward(x_rows, weight, bias, out, stride_h, stride_w, relu, reduction_block):
    run_shares(_pointwise_forward_slot, out.shape[0] * out.shape[1], x_rows, weight, bias, out, stride_h, stride_w,
               relu, reduction_block)


@jit
def _pointwise_backward_input_slot(slot, slots, grad_rows, weight_t, zero_bias, out, stride_h, stride_w,
                                   reduction_block):
    """The input-gradient rows of one slot: grad_rows is grad_out as (N * H_out, W_out, C_out), weight_t
    (1, 1, C_out, C_in), out (N, H, W, C_in); a row or pixel that no output read gets zeros."""
    batch, height, width, channels_in = out.shape
    out_h = grad_rows.shape[0] // batch
    out_w, channels_out = grad_rows.shape[1], grad_rows.shape[2]
    overwrite = np.int64(0)
    jobs = batch * height
    for job in range(slot * jobs // slots, (slot + 1) * jobs // slots):
        n = job // height
        ih = job % height
        if ih % stride_h != 0 or ih // stride_h >= out_h:
            for iw in range(width):
                for c in range(channels_in):
                    out[n, ih, iw, c] = 0.0
            continue
        if stride_w > 1:
            for iw in range(width):
                if iw % stride_w != 0 or iw // stride_w >= out_w:
                    for c in range(channels_in):
                        out[n, ih, iw, c] = 0.0
        _pointwise_row(out, job * width * channels_in, stride_w * channels_in, out_w, grad_rows,
                       (n * out_h + ih // stride_h) * out_w * channels_out, channels_out, weight_t, zero_bias,
                       overwrite, reduction_block)


def _pointwise_backward_input(grad_rows, weight_t, zero_bias, out, stride_h, stride_w, reduction_block):
    run_shares(_pointwise_backward_input_slot, out.shape[0] * out.shape[1], grad_rows, weight_t, zero_bias, out,
               stride_h, stride_w, reduction_block)


@jit
def _pointwise_backward_weight_slot(slot, slots, x_rows, grad_flat, partials, batch, stride_h, stride_w, out_h, out_w,
                                    block_rows):
    """The weight-gradient chunks of one slot: partials (chunks, 1, 1, C_in, C_out), one per chunk of the
    (image, output row) range; a chunk walks its rows in blocks of block_rows rows of one image, running every
    (C_in, C_out) tile over a block while its pixels are in L1, so each entry sums its pixels in order."""
    chunks, _, _, channels_in, channels_out = partials.shape
    height = x_rows.shape[0] // batch
    row_step = x_rows.shape[1] * channels_in
    grad_row_step = out_w * channels_out
    chunk_size = channels_in * channels_out
    if channels_out % BROAD_TILE_CHANNELS == 0:
        kind, tile_rows, tile_channels = 2, BROAD_WEIGHT_TILE_ROWS, BROAD_TILE_CHANNELS
    elif channels_out % TILE_CHANNELS == 0:
        kind, tile_rows, tile_channels = 1, WEIGHT_TILE_ROWS, TILE_CHANNELS
    else:
        kind, tile_rows, tile_channels = 0, NARROW_WEIGHT_TILE_ROWS, NARROW_TILE_CHANNELS
    for chunk in range(slot * chunks // slots, (slot + 1) * chunks // slots):
        first, last = _chunk_bounds(batch * out_h, chunks, chunk)
        partials[chunk] = 0.0
        r = first
        while r < last:
            n = r // out_h
            oh = r % out_h
            count = min(last - r, out_h - oh, block_rows)
            x_start = (n * height + oh * stride_h) * row_step
            for ci in range(0, channels_in, tile_rows):
                for co in range(0, channels_out, tile_channels):
                    _run_weight_tile(kind, partials, chunk * chunk_size + ci * channels_out + co, x_rows, x_start + ci,
                                     stride_w * channels_in, stride_h * row_step, grad_flat, r * grad_row_step + co,
                                     grad_row_step, count, out_w, channels_out)
            r += count


def _pointwise_backward_weight(x_rows, grad_flat, partials, batch, stride_h, stride_w, out_h, out_w, block_rows):
    run_shares(_pointwise_backward_weight_slot, partials.shape[0], x_rows, grad_flat, partials, batch, stride_h,
               stride_w, out_h, out_w, block_rows)


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
    if channels_in != weight_shape[2] * groups:
        _guard(False, f"input channels {channels_in} != {weight_shape[2]} x {groups} groups")
    if channels_out % groups:
        _guard(False, f"output channels {channels_out} not divisible by groups {groups}")
    _guard(min(out_hw) >= 1 and min(weight_shape[:2]) >= 1, "empty output or kernel")


def _aligned_into(array, buffer):
    """array itself when it is C-contiguous and starts on a cache line, else its copy in buffer (a cache-line
    aligned workspace view of its shape, or None when the budget leaves no room: then array, misaligned). The
    tiles load weights as 64-byte vectors; from a misaligned array every such load straddles two cache lines
    (large NumPy arrays start 16 bytes past a page boundary)."""
    if buffer is None or (array.flags.c_contiguous and array.ctypes.data % CACHE_LINE == 0):
        return np.ascontiguousarray(array)
    buffer[...] = array
    return buffer


def _contiguous(array, dtype):
    if array.dtype != dtype:
        _guard(False, f"dtype {array.dtype} != {dtype}")
    return array if array.flags.c_contiguous else np.ascontiguousarray(array)


def _check_out(out, shape, dtype):
    if out.shape != tuple(shape):
        _guard(False, f"out has shape {out.shape}, expected {tuple(shape)}")
    _guard(out.dtype == dtype and out.flags.c_contiguous and out.flags.writeable,
           "out must be a writeable C-contiguous array of the input dtype")


def uses_fast_forward(dtype, weight_shape, out_shape, groups):
    """Whether conv2d_forward takes the register-tiled path: it needs whole 8-pixel x 32-channel tiles."""
    return dtype == np.float32 and groups == 1 and _tiles_fit(weight_shape[3], out_shape[2])


def uses_fast_backward_input(dtype, weight_shape, x_shape, stride, padding, dilation, groups):
    """Whether conv2d_backward_input runs as register-tiled forward convolutions of grad_out: one with stride 1,
    or one per stride phase (dilation 1) when every phase row is at least a whole tile wide."""
    if dtype != np.float32 or groups != 1:
        return False
    if tuple(stride) == (1, 1):
        return (padding[0] <= dilation[0] * (weight_shape[0] - 1) and padding[1] <= dilation[1] * (weight_shape[1] - 1)
                and _tiles_fit(x_shape[3], x_shape[2]))
    return tuple(dilation) == (1, 1) and _tiles_fit(x_shape[3], x_shape[2] // stride[1])


def uses_fast_backward_weight(dtype, weight_shape, groups, dilation=(1, 1)):
    """Whether conv2d_backward_weight takes the register-tiled path: whole 8 x 32 (C_in, C_out) tiles, where
    C_in may be the kW taps folded together (dilation 1 along the width)."""
    return (dtype == np.float32 and groups == 1 and weight_shape[3] % NARROW_TILE_CHANNELS == 0
            and (weight_shape[2] % _weight_tile_rows(weight_shape[3]) == 0 or dilation[1] == 1))


def uses_winograd(dtype, weight_shape, stride, padding, dilation, groups):
    """Whether a pass may take the Winograd F(2x2, 3x3) path (when its scratch fits the budget): float32, groups 1,
    a 3x3 kernel, stride 1, dilation 1, padding at most 2 (the backward-input pads by 2 - padding), C_in and C_out
    multiples of 16. One rule for the forward and both gradients."""
    return (dtype == np.float32 and groups == 1 and tuple(weight_shape[:2]) == (3, 3) and tuple(stride) == (1, 1)
            and tuple(dilation) == (1, 1) and max(padding) <= 2 and weight_shape[2] % LANES == 0
            and weight_shape[3] % LANES == 0)


# Layers with at most this many input and output channels, stride 1 and groups 1 run as the direct loops of
# conv2d_small.py (vectorised over pixels) when no register-tiled path applies.
SMALL_MAX_CHANNELS = 16


def uses_small(weight_shape, stride, groups):
    """Whether a pass that no tiled path takes runs in conv2d_small.py: stride 1, groups 1, few channels."""
    return groups == 1 and tuple(stride) == (1, 1) and max(weight_shape[2], weight_shape[3]) <= SMALL_MAX_CHANNELS


def uses_pointwise(dtype, x_shape, weight_shape, out_shape, stride, padding, groups):
    """Whether a pass takes the 1x1 path: float32, a 1x1 kernel, no padding, groups 1, and an output grid inside
    the input (the tiles then read and write the rows in place, with no padded strips)."""
    return (dtype == np.float32 and groups == 1 and tuple(weight_shape[:2]) == (1, 1) and tuple(padding) == (0, 0)
            and (out_shape[1] - 1) * stride[0] < x_shape[1] and (out_shape[2] - 1) * stride[1] < x_shape[2])


def _tiles_fit(channels, width):
    """Whether a forward output of `channels` channels and `width` pixels per row holds one whole tile."""
    if channels >= TILE_CHANNELS:
        return width >= TILE_PIXELS
    return channels >= NARROW_TILE_CHANNELS and width >= NARROW_TILE_PIXELS


def _weight_tile_rows(channels_out):
    """Input channels per weight-gradient tile: 4 with 64-channel tiles, 8 with 32-channel ones, 16 with the
    narrow 16-channel ones."""
    if channels_out % BROAD_TILE_CHANNELS == 0:
        return BROAD_WEIGHT_TILE_ROWS
    return WEIGHT_TILE_ROWS if channels_out % TILE_CHANNELS == 0 else NARROW_WEIGHT_TILE_ROWS


# Jobs the forward driver aims for: enough for the threads to share, few enough that a strip (the padded rows
# one job reads) is reused by many tiles. Strips larger than STRIP_BYTES are split so they stay in L2.
JOBS_WANTED = 16
STRIP_BYTES = 512 << 10


def _rows_per_job(batch, out_h, stride_h, frame_row_bytes):
    """Output rows per forward job: whole images when the batch alone makes enough jobs, else bands of rows."""
    rows = out_h if batch >= JOBS_WANTED else -(-out_h * batch // JOBS_WANTED)
    return max(1, min(rows, STRIP_BYTES // max(1, stride_h * frame_row_bytes)))


def _forward_geometry(x_shape, weight_shape, out_hw, stride, padding, dilation, itemsize):
    """(frame_w, output rows per job, strip rows, jobs) of a register-tiled forward: weight_shape unfolded."""
    kernel_h, kernel_w = weight_shape[:2]
    frame_w = max(padding[1] + x_shape[2], (out_hw[1] - 1) * stride[1] + dilation[1] * (kernel_w - 1) + 1)
    rows = _rows_per_job(x_shape[0], out_hw[0], stride[0], frame_w * x_shape[3] * itemsize)
    strip_h = (rows - 1) * stride[0] + dilation[0] * (kernel_h - 1) + 1
    return frame_w, rows, strip_h, x_shape[0] * -(-out_hw[0] // rows)


def _forward_fast(x, weight, bias, out, stride, padding, dilation, strips, slots, geometry, region=None, relu=False):
    """The register-tiled forward on contiguous float32 operands; with dilation 1 along the width the kW taps of
    a kernel row are adjacent in a padded row, so they are folded into the reduction axis (kW * C_in long).
    strips: a flat workspace view of at least slots strips of the geometry's size.
    region (out_h, out_w, first_h, first_w, step_h, step_w) places the output on a strided grid of out;
    padding may be negative there (the output grid starts inside the input)."""
    kernel_h, kernel_w, channels_in, channels_out = weight.shape
    out_h, out_w, first_h, first_w, step_h, step_w = region or (out.shape[1], out.shape[2], 0, 0, 1, 1)
    frame_w, rows, strip_h, _ = geometry
    strips = strips[:slots * strip_h * frame_w * x.shape[3]].reshape(slots, strip_h, frame_w, x.shape[3])
    if dilation[1] == 1:
        weight = weight.reshape(kernel_h, 1, kernel_w * channels_in, channels_out)
    _forward_rows(x, weight, bias, out, strips, (stride[0], stride[1], padding[0], padding[1], dilation[0],
                  dilation[1], rows, out_h, out_w, first_h, first_w, step_h, step_w, REDUCTION_BLOCK), relu)


def _input_phases(size, kernel, stride, pad):
    """The stride phases of one axis of a backward-input: for each first input index i0 < stride, the input
    indices i0, i0 + stride, ... receive the taps k = a, a + stride, ... (a = (i0 + pad) % stride); as a
    stride-1 correlation of grad_out with those taps reversed, that is (i0, count, first tap a, taps, pad)."""
    phases = []
    for first in range(min(stride, size)):
        tap = (first + pad) % stride
        taps = len(range(tap, kernel, stride))
        phases.append((first, -(-(size - first) // stride), tap, taps, taps - 1 - (first + pad) // stride))
    return phases


def _phase_grid(out_shape, weight_shape, stride, padding):
    """The (first_h, count_h, tap_h, taps_h, pad_h, first_w, count_w, tap_w, taps_w, pad_w) of every stride
    phase of a strided backward-input (see _input_phases)."""
    return [phase_h + phase_w for phase_h in _input_phases(out_shape[1], weight_shape[0], stride[0], padding[0])
            for phase_w in _input_phases(out_shape[2], weight_shape[1], stride[1], padding[1])]


def _phase_table(out_shape, weight_shape, stride, padding, geometries):
    """The int64 table of _forward_phases for the phases that have taps (phases without taps only get zeros):
    their flipped sub-kernels lie one after the other in the workspace's weight buffer (the phases share out
    the taps, so it holds them all), folded to (taps_h, 1, taps_w * C_out, C_in)."""
    rows, offset, cumulative = [], 0, 0
    channels_in, channels_out = weight_shape[2], weight_shape[3]
    for phase, (frame_w, rows_per_job, strip_h, jobs) in zip(_phase_grid(out_shape, weight_shape, stride, padding),
                                                             geometries):
        first_h, count_h, _, taps_h, pad_h, first_w, count_w, _, taps_w, pad_w = phase
        if taps_h == 0 or taps_w == 0:
            continue
        cost = taps_h * taps_w
        cumulative += jobs * cost
        rows.append((1, 1, pad_h, pad_w, 1, 1, rows_per_job, count_h, count_w, first_h, first_w, stride[0], stride[1],
                     strip_h, taps_h, 1, taps_w * channels_out, channels_in, offset, frame_w, jobs, cost, cumulative))
        offset += taps_h * taps_w * channels_out * channels_in
    return np.array(rows, np.int64).reshape(-1, 23)


def _backward_input_phases(grad_out, weight, out, stride, padding, scratch, plan):
    """Strided (dilation 1) backward-input as stride x stride phases, each a register-tiled forward of grad_out
    with a flipped sub-kernel (copied into the workspace) writing every stride-th input pixel: no zero-inserted
    grad_out, no wasted taps; all phases run in one parallel region."""
    slots, _, phases = plan
    weights = scratch["weight"]
    for phase in _phase_grid(out.shape, weight.shape, stride, padding):
        first_h, _, tap_h, taps_h, _, first_w, _, tap_w, taps_w, _ = phase
        if taps_h == 0 or taps_w == 0:
            out[:, first_h::stride[0], first_w::stride[1]] = 0.0
    for row, phase in zip(phases, [p for p in _phase_grid(out.shape, weight.shape, stride, padding) if p[3] and p[8]]):
        tap_h, taps_h, tap_w, taps_w = phase[2], phase[3], phase[7], phase[8]
        sub = weights[row[18]:row[18] + taps_h * taps_w * weight.shape[3] * weight.shape[2]]
        sub.reshape(taps_h, taps_w, weight.shape[3], weight.shape[2])[...] = \
            weight[tap_h::stride[0], tap_w::stride[1]][::-1, ::-1].transpose(0, 1, 3, 2)
    if len(phases):
        _forward_phases(grad_out, weights, scratch["zero_bias"], out, scratch["strips"], phases, REDUCTION_BLOCK,
                        False, slots)


def _reduction_chunks(pixels):
    """How many partial weight gradients a backward-weight call sums: a function of the shape only (so the
    result is bit-identical for any thread count), even (so two threads share them evenly), and few enough
    that each chunk's pixels outweigh zeroing and summing its partial buffer."""
    return max(2, min(MAX_REDUCTION_CHUNKS, pixels // PIXELS_PER_CHUNK) // 2 * 2)


def _backward_weight_fast(x, grad_out, out, stride, padding, dilation, scratch, plan):
    """The register-tiled weight gradient on contiguous float32 operands, into out (kH, kW, C_in, C_out): by
    kernel rows, or as one column matrix (shape (1, 1, R, C_out)) where the plan carves "columns"."""
    shape, chunks, band_rows = plan
    partials = scratch["partials"] if "partials" in scratch else out.reshape((1, *shape))
    if "columns" in scratch:
        _backward_weight_columns(x, grad_out, partials, scratch["strips"], scratch["columns"], stride, padding,
                                 dilation[0], out.shape[:2], band_rows)
    else:
        _backward_weight_rows(x, grad_out, partials, scratch["strips"], scratch["grad_blocks"], stride[0], stride[1],
                              padding[0], padding[1], dilation[0], dilation[1], band_rows)
    if "summed" not in scratch:
        sum_partials(partials, out.reshape(shape))
    else:
        # the folded reduction was padded to whole tiles: drop the padding rows
        summed = scratch["summed"]
        sum_partials(partials, summed)
        folded = out.size // (shape[0] * shape[3])
        out.reshape(shape[0], folded, shape[3])[...] = summed[:, 0, :folded]


# ---------------------------------------------------------------------------------------------------------
# Scratch plans: what each pass takes from its workspace (conv2d_workspace), from the shapes and the budget
# alone, so a memory planner can size one workspace for every pass before running any.
# ---------------------------------------------------------------------------------------------------------

# Input rows a backward-weight chunk pads into its strip at a time (at least the rows under one output row).
WEIGHT_STRIP_BYTES = 2 << 20


def _general_rows(pixels, channels, jobs, dtype, budget):
    per_slot = spec_bytes((pixels, channels), dtype)
    return ("rows", (slots_within(per_slot, 0, jobs, budget), pixels, channels), dtype)


@functools.lru_cache(maxsize=1024)
def _forward_plan(dtype, x_shape, weight_shape, out_shape, stride, padding, dilation, groups, budget):
    """(path, scratch specs, path details) of conv2d_forward."""
    winograd = uses_winograd(dtype, weight_shape, stride, padding, dilation, groups)
    if winograd and conv2d_winograd4.suits(weight_shape[2]) \
            and conv2d_winograd4.fits(dtype, weight_shape[2], weight_shape[3], budget):
        return ("winograd4", *conv2d_winograd4.plan(dtype, x_shape, weight_shape[3], out_shape[1:3], budget, False))
    if winograd and conv2d_winograd.fits(dtype, weight_shape[2], weight_shape[3], budget):
        return ("winograd", *conv2d_winograd.plan(dtype, x_shape, weight_shape[3], out_shape[1:3], budget, False))
    if uses_pointwise(dtype, x_shape, weight_shape, out_shape, stride, padding, groups) \
            and _tiles_fit(weight_shape[3], out_shape[2]) and spec_bytes(weight_shape, dtype) <= budget // 4:
        specs = (("zero_bias", (weight_shape[3],), dtype), ("weight", weight_shape, dtype))
        return "pointwise", specs, None
    if uses_fast_forward(dtype, weight_shape, out_shape, groups):
        specs = (("zero_bias", (weight_shape[3],), dtype),)
        if spec_bytes(weight_shape, dtype) <= budget // 4:
            specs += (("weight", weight_shape, dtype),)
        geometry = _forward_geometry(x_shape, weight_shape, out_shape[1:3], stride, padding, dilation,
                                     dtype.itemsize)
        strip = geometry[2] * geometry[0] * x_shape[3]
        slots = slots_within(spec_bytes((strip,), dtype), specs_bytes(specs), geometry[3], budget)
        return "fast", specs + (("strips", (slots * strip,), dtype),), (slots, geometry)
    if uses_small(weight_shape, stride, groups):
        return ("small", *conv2d_small.forward_plan(dtype, x_shape, weight_shape, out_shape, padding, dilation,
                                                    budget))
    if groups == 1:
        reduction = weight_shape[0] * weight_shape[1] * weight_shape[2]
        return "gemm", gemm_plan("forward", out_shape[0], out_shape[1], out_shape[2], reduction, weight_shape[3],
                                 dtype, budget)[0], None
    return "general", (_general_rows(out_shape[2], weight_shape[3], out_shape[0] * out_shape[1], dtype, budget),), None


@functools.lru_cache(maxsize=1024)
def _backward_input_plan(dtype, x_shape, weight_shape, out_shape, stride, padding, dilation, groups, budget):
    """(path, scratch specs, path details) of conv2d_backward_input; x_shape is the gradient's (out's) shape.
    The tiled paths need the weight flipped into the workspace: when it takes over a quarter of the budget,
    the GEMM path (which reads the weight in place) runs instead."""
    kernel_h, kernel_w, group_in, channels_out = weight_shape
    # the forward convolution of grad_out that gives the input gradient: C_out channels in, C_in out
    winograd = uses_winograd(dtype, weight_shape, stride, padding, dilation, groups)
    if winograd and conv2d_winograd4.suits(channels_out) \
            and conv2d_winograd4.fits(dtype, weight_shape[2], weight_shape[3], budget):
        return ("winograd4", *conv2d_winograd4.plan(dtype, out_shape, group_in, x_shape[1:3], budget, True))
    if winograd and conv2d_winograd.fits(dtype, weight_shape[2], weight_shape[3], budget):
        return ("winograd", *conv2d_winograd.plan(dtype, out_shape, group_in, x_shape[1:3], budget, True))
    fits = spec_bytes(weight_shape, dtype) <= budget // 4
    transposed = (kernel_h, kernel_w, channels_out, group_in)
    if fits and uses_pointwise(dtype, x_shape, weight_shape, out_shape, stride, padding, groups) \
            and _tiles_fit(group_in, out_shape[2]):
        specs = (("zero_bias", (group_in,), dtype), ("weight", transposed, dtype))
        return "pointwise", specs, None
    if fits and uses_fast_backward_input(dtype, weight_shape, x_shape, stride, padding, dilation, groups):
        specs = (("zero_bias", (x_shape[3],), dtype), ("weight", (kernel_h * kernel_w * channels_out * group_in,),
                                                       dtype))
        if max(stride) > 1:
            geometries = [_forward_geometry(out_shape, (p[3], p[8], channels_out, group_in), (p[1], p[6]), (1, 1),
                                            (p[4], p[9]), (1, 1), dtype.itemsize)
                          for p in _phase_grid(x_shape, weight_shape, stride, padding)]
        else:
            pad = (dilation[0] * (kernel_h - 1) - padding[0], dilation[1] * (kernel_w - 1) - padding[1])
            geometries = [_forward_geometry(out_shape, transposed, x_shape[1:3], (1, 1), pad, dilation,
                                            dtype.itemsize)]
        strip = max(g[2] * g[0] * channels_out for g in geometries)
        slots = slots_within(spec_bytes((strip,), dtype), specs_bytes(specs), max(g[3] for g in geometries), budget)
        phases = _phase_table(x_shape, weight_shape, stride, padding, geometries) if max(stride) > 1 else None
        return "fast", specs + (("strips", (slots * strip,), dtype),), (slots, geometries, phases)
    if uses_small(weight_shape, stride, groups):
        return ("small", *conv2d_small.backward_input_plan(dtype, x_shape, weight_shape, out_shape, padding,
                                                           dilation, budget))
    if groups == 1:
        return "gemm", gemm_plan("backward_input", out_shape[0], out_shape[1], out_shape[2],
                                 kernel_h * kernel_w * group_in, channels_out, dtype, budget)[0], None
    rows = _general_rows(x_shape[2], x_shape[3], x_shape[0] * x_shape[1], dtype,
                         budget - spec_bytes(transposed, dtype))
    return "general", (("weight_t", transposed, dtype), rows), None


def _backward_weight_columns_plan(dtype, x_shape, weight_shape, out_shape, stride, dilation, frame_w, reduction,
                                  half, budget):
    """(specs, (shape, chunks, band_rows)) of the column-matrix weight gradient (_backward_weight_columns): R =
    reduction rows, partials and their padded sum within half the budget, then per slot a strip of the input
    rows under a band of output rows and the columns of one block of them."""
    kernel_h, _, channels_in, channels_out = weight_shape
    batch, out_h, out_w, _ = out_shape
    shape = (1, 1, reduction, channels_out)
    specs = (("summed", shape, dtype),) if reduction != kernel_h * weight_shape[1] * channels_in else ()
    wanted = min(batch * out_h, _reduction_chunks(batch * out_h * out_w))
    chunks = int(max(1, min(wanted, (half - specs_bytes(specs)) // spec_bytes(shape, dtype))))
    if chunks > 1 or specs:
        specs += (("partials", (chunks, *shape), dtype),)
    band_rows = min(out_h, max(1, WEIGHT_STRIP_BYTES // (stride[0] * frame_w * channels_in * dtype.itemsize)))
    # spare rows and LANES floats: the whole-vector copies of the last run of a row read and write past its end
    spare = -(-LANES // (frame_w * channels_in))
    strip = ((band_rows - 1) * stride[0] + dilation[0] * (kernel_h - 1) + 1 + spare, frame_w, channels_in)
    columns = max(1, PIXELS_PER_BLOCK // out_w) * out_w * reduction + LANES
    slots = slots_within(spec_bytes(strip, dtype) + spec_bytes((columns,), dtype), specs_bytes(specs), chunks, budget)
    specs += (("strips", (slots, *strip), dtype), ("columns", (slots, columns), dtype))
    return specs, (shape, chunks, band_rows)


@functools.lru_cache(maxsize=1024)
def _backward_weight_plan(dtype, x_shape, weight_shape, out_shape, stride, padding, dilation, groups, budget):
    """(path, scratch specs, path details) of conv2d_backward_weight. The partial weight gradients and their
    padded sum take at most half the budget: the number of partials is the one _reduction_chunks wants, or as
    many as fit (at least one, which is then out itself) -- a function of the shape and budget only, so results
    stay bit-identical for any thread count. The strips and aligned grad_out blocks take the other half."""
    kernel_h, kernel_w, channels_in, channels_out = weight_shape
    batch, out_h, out_w, _ = out_shape
    half = budget // 2
    if uses_pointwise(dtype, x_shape, weight_shape, out_shape, stride, padding, groups) \
            and channels_out % NARROW_TILE_CHANNELS == 0 and channels_in % _weight_tile_rows(channels_out) == 0:
        wanted = min(batch * out_h, _reduction_chunks(batch * out_h * out_w))
        chunks = int(max(1, min(wanted, half // spec_bytes(weight_shape, dtype))))
        specs = (("partials", (chunks, *weight_shape), dtype),) if chunks > 1 else ()
        block_rows = max(1, PIXELS_PER_BLOCK // out_w)
        return "pointwise", specs, block_rows
    if uses_fast_backward_weight(dtype, weight_shape, groups, dilation):
        frame_w = max(padding[1] + x_shape[2], (out_w - 1) * stride[1] + dilation[1] * (kernel_w - 1) + 1)
        tile_rows = _weight_tile_rows(channels_out)
        folded = kernel_w * channels_in
        reduction = -(-folded // tile_rows) * tile_rows
        columns = kernel_h * folded
        padded_columns = -(-columns // tile_rows) * tile_rows
        if dilation[1] == 1 and padded_columns < kernel_h * reduction \
                and 2 * spec_bytes((padded_columns, channels_out), dtype) <= half:
            return "fast", *_backward_weight_columns_plan(dtype, x_shape, weight_shape, out_shape, stride, dilation,
                                                          frame_w, padded_columns, half, budget)
        fold = dilation[1] == 1
        if fold and reduction != folded and channels_in % tile_rows == 0 \
                and 2 * spec_bytes((kernel_h, reduction, channels_out), dtype) > half:
            fold = False  # the padded folded partial and its sum would not fit: keep the taps apart
        if fold:
            # The last tile of a folded row reads up to reduction - folded values past the window: keep them
            # inside the strip (they land in partial rows that are dropped).
            frame_w = max(frame_w, -(-((out_w - 1) * stride[1] * channels_in + reduction) // channels_in))
            shape = (kernel_h, 1, reduction, channels_out)
        else:
            reduction = folded = channels_in
            shape = weight_shape
        specs = (("summed", shape, dtype),) if reduction != folded else ()
        wanted = min(batch * out_h, _reduction_chunks(batch * out_h * out_w))
        chunks = int(max(1, min(wanted, (half - specs_bytes(specs)) // spec_bytes(shape, dtype))))
        if chunks > 1 or specs:
            specs += (("partials", (chunks, *shape), dtype),)
        frame_row_bytes = frame_w * channels_in * dtype.itemsize
        band_rows = min(out_h, max(1, WEIGHT_STRIP_BYTES // (stride[0] * frame_row_bytes)))
        strip = ((band_rows - 1) * stride[0] + dilation[0] * (kernel_h - 1) + 1, frame_w, channels_in)
        block = max(1, PIXELS_PER_BLOCK // out_w) * out_w * channels_out
        slots = slots_within(spec_bytes(strip, dtype) + spec_bytes((block,), dtype), specs_bytes(specs), chunks,
                             budget)
        specs += (("strips", (slots, *strip), dtype), ("grad_blocks", (slots, block), dtype))
        winograd = None
        if uses_winograd(dtype, weight_shape, stride, padding, dilation, groups):
            winograd = conv2d_winograd_weight.backward_weight_plan(dtype, x_shape, weight_shape, out_shape, padding,
                                                                   budget)
        if winograd is None:
            return "fast", specs, (shape, chunks, band_rows)
        # The direct plan rides along, in the same workspace: it reruns a Winograd gradient that came out inf or NaN
        winograd_specs, geometry = winograd
        room = specs_bytes(specs) - specs_bytes(winograd_specs)
        if room > 0:
            winograd_specs += (("direct_room", (room,), np.uint8),)
        return "winograd", winograd_specs, (geometry, specs, (shape, chunks, band_rows))
    if uses_small(weight_shape, stride, groups):
        return ("small", *conv2d_small.backward_weight_plan(dtype, x_shape, weight_shape, out_shape, padding,
                                                            dilation, budget))
    if groups == 1:
        return "gemm", gemm_plan("backward_weight", batch, out_h, out_w, kernel_h * kernel_w * channels_in,
                                 channels_out, dtype, budget)[0], None
    chunks = int(max(1, min(batch * out_h, MAX_REDUCTION_CHUNKS, half // spec_bytes(weight_shape, dtype))))
    return "general", ((("partials", (chunks, *weight_shape), dtype),) if chunks > 1 else ()), None


@functools.lru_cache(maxsize=1024)
def _backward_bias_plan(dtype, out_shape, budget):
    chunks = min(out_shape[0] * out_shape[1], MAX_REDUCTION_CHUNKS)
    return "general", (("partials", (chunks, out_shape[3]), dtype),), None


_PLANS = {"forward": _forward_plan, "backward_input": _backward_input_plan, "backward_weight": _backward_weight_plan}


def _plan(pass_name, dtype, x_shape, weight_shape, out_shape, stride, padding, dilation, groups):
    budget = conv2d_workspace.WORKSPACE_BYTES
    if pass_name == "backward_bias":
        return _backward_bias_plan(np.dtype(dtype), tuple(out_shape), budget)
    return _PLANS[pass_name](np.dtype(dtype), tuple(x_shape), tuple(weight_shape), tuple(out_shape), tuple(stride),
                             tuple(padding), tuple(dilation), int(groups), budget)


def conv2d_workspace_bytes(pass_name, x_shape, weight_shape, out_shape, dtype, stride=(1, 1), padding=(0, 0),
                           dilation=(1, 1), groups=1):
    """Bytes of workspace one pass needs: pass_name is "forward", "backward_input", "backward_weight" or
    "backward_bias"; x_shape (N, H, W, C_in) and out_shape (N, H_out, W_out, C_out) are the forward's NHWC
    input and output, weight_shape (kH, kW, C_in/groups, C_out). At most conv2d_workspace.WORKSPACE_BYTES
    (beyond it only where one slot's strip of kernel rows alone is larger). A workspace of that many bytes
    (or more), given to the pass as `workspace=`, lets it run without allocating."""
    return specs_bytes(_plan(pass_name, dtype, x_shape, weight_shape, out_shape, stride, padding, dilation,
                             groups)[1])


def conv2d_forward(x, weight, bias, out, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, relu=False,
                   workspace=None):
    """out[n, oh, ow, co] = bias[co] + sum over taps and the group's input channels of x * weight, then
    max(out, 0) when relu (NaN kept), applied as each output tile is stored. workspace: a 1-D uint8 array of at
    least conv2d_workspace_bytes("forward", ...) bytes holding all scratch, or None to allocate one."""
    dtype = x.dtype
    _check_geometry(x.shape, weight.shape, out.shape[1:3], stride, dilation, groups)
    _check_out(out, (x.shape[0], out.shape[1], out.shape[2], weight.shape[3]), dtype)
    x, weight = _contiguous(x, dtype), _contiguous(weight, dtype)
    if bias is not None:
        if bias.shape != (weight.shape[3],):
            _guard(False, f"bias shape {bias.shape}")
        bias = _contiguous(bias, dtype)
    path, specs, details = _plan("forward", dtype, x.shape, weight.shape, out.shape, stride, padding, dilation,
                                 groups)
    scratch = carve(workspace, specs) if path != "gemm" else None  # the GEMM path carves its own
    if path == "winograd4":
        conv2d_winograd4.forward(x, weight, bias, out, padding, relu, scratch, details)
    elif path == "winograd":
        conv2d_winograd.forward(x, weight, bias, out, padding, relu, scratch, details)
    elif path == "pointwise":
        if bias is None:
            bias = scratch["zero_bias"]
            bias[...] = 0.0
        _pointwise_forward(x.reshape(-1, x.shape[2], x.shape[3]), _aligned_into(weight, scratch["weight"]), bias, out,
                           stride[0], stride[1], 1 if relu else 0, REDUCTION_BLOCK)
    elif path == "fast":
        if bias is None:
            bias = scratch["zero_bias"]
            bias[...] = 0.0
        _forward_fast(x, _aligned_into(weight, scratch.get("weight")), bias, out, stride, padding, dilation,
                      scratch["strips"], *details, relu=relu)
    elif path == "small":
        conv2d_forward_small(x, weight, bias, out, padding, dilation, relu, scratch, details)
    elif path == "gemm":
        conv2d_forward_gemm(x, weight, bias, out, stride, padding, dilation, relu=relu, workspace=workspace)
    else:
        _forward_general(x, weight, bias, out, stride[0], stride[1], padding[0], padding[1], dilation[0],
                         dilation[1], groups, relu, scratch["rows"])
    return out


def conv2d_backward_input(grad_out, weight, out, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
                          workspace=None):
    """Gradient of the forward with respect to its input x, written into out (shape of x). workspace: at least
    conv2d_workspace_bytes("backward_input", ...) bytes, or None to allocate one."""
    dtype = grad_out.dtype
    _check_geometry(out.shape, weight.shape, grad_out.shape[1:3], stride, dilation, groups)
    _check_out(out, out.shape, dtype)
    _guard(grad_out.shape[0] == out.shape[0] and grad_out.shape[3] == weight.shape[3], "grad_out shape")
    grad_out, weight = _contiguous(grad_out, dtype), _contiguous(weight, dtype)
    kernel_h, kernel_w = weight.shape[:2]
    path, specs, details = _plan("backward_input", dtype, out.shape, weight.shape, grad_out.shape, stride, padding,
                                 dilation, groups)
    scratch = carve(workspace, specs) if path != "gemm" else None  # the GEMM path carves its own
    if path in ("fast", "pointwise"):
        scratch["zero_bias"][...] = 0.0
    if path == "winograd4":
        conv2d_winograd4.backward_input(grad_out, weight, out, padding, scratch, details)
    elif path == "winograd":
        conv2d_winograd.backward_input(grad_out, weight, out, padding, scratch, details)
    elif path == "pointwise":
        weight_t = scratch["weight"]
        weight_t[...] = weight.transpose(0, 1, 3, 2)
        _pointwise_backward_input(grad_out.reshape(-1, grad_out.shape[2], grad_out.shape[3]), weight_t,
                                  scratch["zero_bias"], out, stride[0], stride[1], REDUCTION_BLOCK)
    elif path == "fast" and max(stride) > 1:
        _backward_input_phases(grad_out, weight, out, stride, padding, scratch, details)
    elif path == "fast":
        # With stride 1 the input gradient is a forward convolution of grad_out, padded by the dilated kernel
        # extent minus the forward padding, with the kernel flipped and its channel axes swapped.
        pad_top = dilation[0] * (kernel_h - 1) - padding[0]
        pad_left = dilation[1] * (kernel_w - 1) - padding[1]
        flipped = scratch["weight"].reshape(kernel_h, kernel_w, weight.shape[3], weight.shape[2])
        flipped[...] = weight[::-1, ::-1].transpose(0, 1, 3, 2)
        slots, (geometry,), _ = details
        _forward_fast(grad_out, flipped, scratch["zero_bias"], out, (1, 1), (pad_top, pad_left), dilation,
                      scratch["strips"], slots, geometry)
    elif path == "small":
        conv2d_backward_input_small(grad_out, weight, out, padding, dilation, scratch, details)
    elif path == "gemm":
        conv2d_backward_input_gemm(grad_out, weight, out, stride, padding, dilation, workspace=workspace)
    else:
        weight_t = scratch["weight_t"]
        weight_t[...] = weight.transpose(0, 1, 3, 2)
        _backward_input_general(grad_out, weight_t, out, stride[0], stride[1], padding[0], padding[1], dilation[0],
                                dilation[1], groups, scratch["rows"])
    return out


def conv2d_backward_weight(x, grad_out, out, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
                           workspace=None):
    """Gradient of the forward with respect to its weight, written into out (kH, kW, C_in/groups, C_out).
    workspace: at least conv2d_workspace_bytes("backward_weight", ...) bytes, or None to allocate one."""
    dtype = x.dtype
    _check_geometry(x.shape, out.shape, grad_out.shape[1:3], stride, dilation, groups)
    _check_out(out, out.shape, dtype)
    _guard(grad_out.shape[0] == x.shape[0] and grad_out.shape[3] == out.shape[3], "grad_out shape")
    x, grad_out = _contiguous(x, dtype), _contiguous(grad_out, dtype)
    path, specs, details = _plan("backward_weight", dtype, x.shape, out.shape, grad_out.shape, stride, padding,
                                 dilation, groups)
    scratch = carve(workspace, specs) if path != "gemm" else None  # the GEMM path carves its own
    if path == "pointwise":
        partials = scratch["partials"] if "partials" in scratch else out.reshape((1, *out.shape))
        _pointwise_backward_weight(x.reshape(-1, x.shape[2], x.shape[3]), grad_out.reshape(-1), partials, x.shape[0],
                                   stride[0], stride[1], grad_out.shape[1], grad_out.shape[2], details)
        if "partials" in scratch:
            sum_partials(partials, out)
    elif path == "fast":
        _backward_weight_fast(x, grad_out, out, stride, padding, dilation, scratch, details)
    elif path == "winograd":
        geometry, direct_specs, direct_details = details
        conv2d_winograd_weight.conv2d_backward_weight_winograd(x, grad_out, out, scratch, geometry)
        # An inf among the inputs comes out of Winograd's differences as NaN (inf - inf, inf * 0) where the direct
        # products may give inf, and any inf or NaN input leaves some of out non-finite: then redo it directly.
        if not conv2d_small._all_finite(out.reshape(-1)):
            _backward_weight_fast(x, grad_out, out, stride, padding, dilation, carve(workspace, direct_specs),
                                  direct_details)
    elif path == "small":
        conv2d_backward_weight_small(x, grad_out, out, padding, dilation, scratch, details)
    elif path == "gemm":
        conv2d_backward_weight_gemm(x, grad_out, out, stride, padding, dilation, workspace=workspace)
    else:
        partials = scratch["partials"] if "partials" in scratch else out.reshape((1, *out.shape))
        _backward_weight_general(x, grad_out, partials, out, stride[0], stride[1], padding[0], padding[1],
                                 dilation[0], dilation[1], groups)
    return out


def conv2d_backward_bias(grad_out, out, workspace=None):
    """Gradient with respect to the bias: grad_out summed over images and pixels, written into out (C_out,).
    workspace: at least conv2d_workspace_bytes("backward_bias", ...) bytes, or None to allocate one."""
    _guard(grad_out.ndim == 4, "grad_out must be 4-D")
    _check_out(out, (grad_out.shape[3],), grad_out.dtype)
    scratch = carve(workspace, _plan("backward_bias", grad_out.dtype, None, None, grad_out.shape, None, None, None,
                                     1)[1])
    _backward_bias_kernel(np.ascontiguousarray(grad_out), scratch["partials"], out)
    return out
