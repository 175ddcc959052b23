"""Depthwise convolution (groups == C_in == C_out: one kH x kW filter per channel) on NHWC rows, vectorised over the
contiguous channel axis in 64-byte vectors (16 float32 or 8 float64 lanes; a last, partial vector masked). Any
stride, padding and dilation. The work is a few multiply-adds per element moved, so each pass reads its inputs and
writes its output once, with sums held in vector registers.

The forward and the input gradient are one kernel, a correlation of rows: each job writes one target row, whose
pixels sum their taps of a band of source rows in registers (tiles of TILES["depthwise_pixels"] pixels) and store
once. For the forward, output pixel ow takes input pixels ow * stride - pad + kw * dilation. For the input gradient,
input pixels of one stride phase are reached by a fixed subset of the taps: they gather grad_out in a correlation
of stride 1 along the phase (phase_taps), so no two jobs write one pixel and no pixel is summed twice. The pixels
whose windows the padding cuts (a row's ends) run one at a time over their valid taps; the interior runs whole
tiles, with no per-element branch.

The weight gradient sums each tap's products over an output row's valid pixels (TILES["depthwise_sums"] running
sums each) into one partial gradient per chunk of the (image, output row) range, then the partials in chunk order:
the chunks are a function of the shape alone, so the result does not depend on the thread count.
"""
import math

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .._runtime import WORKERS, jit, run_jobs
from .._runtime.vector import (INDEX, LANES, element_pointer, fma_function, lane_bytes, lane_mask, load_vector,
                               masked_load, masked_store, store_vector)
from .gemm import valid_span
from .tiles import RELU6_CODE, TILES
from .workspace import chunk_bounds, sum_partials

VECTOR_BYTES = 4 * LANES
TILE_PIXELS = TILES["depthwise_pixels"]


# ----- the register tiles --------------------------------------------------------------------------------------

def _vectors(context, builder, array_type, slots):
    """(the 64-byte vector type of an array's elements, its FMA, its zero, `slots` stack slots of it; LLVM keeps
    the slots in registers)."""
    element = context.get_value_type(array_type.dtype)
    vector = ir.VectorType(element, VECTOR_BYTES // (8 if isinstance(element, ir.DoubleType) else 4))
    return (vector, fma_function(builder, vector), ir.Constant(vector, [0.0] * vector.count),
            [cgutils.alloca_once(builder, vector) for _ in range(slots)])


def _load(builder, pointer, vector, mask):
    if mask is None:
        return load_vector(builder, pointer, vector)
    return masked_load(builder, pointer, mask, vector, lane_bytes(vector))


def _store(builder, value, pointer, mask):
    if mask is None:
        store_vector(builder, value, pointer)
    else:
        masked_store(builder, value, pointer, mask, lane_bytes(value.type))


def _over_channels(builder, channels, lanes, body):
    """body(first channel, mask) for each vector of `channels`: the whole vectors with mask None, then the rest
    (if any) under a lane mask."""
    width = ir.Constant(INDEX, lanes)
    whole = builder.sdiv(channels, width)
    with cgutils.for_range(builder, whole) as block:
        body(builder.mul(block.index, width), None)
    done = builder.mul(whole, width)
    rest = builder.sub(channels, done)
    with builder.if_then(builder.icmp_signed(">", rest, ir.Constant(INDEX, 0)), likely=False):
        body(done, lane_mask(builder, rest, lanes))


def _make_correlation_tile(pixels):
    """An intrinsic computing `pixels` target pixels of a correlation of rows, all channels."""

    @intrinsic
    def correlation_tile(typingctx, out, source, weight, bias, steps):
        """out[out_offset + p * out_pixel_step + c] = bias[c] (0 unless use_bias) + the sum over i < tap_rows and
        j < taps of source[source_offset + p * source_pixel_step + i * source_row_step + j * source_tap_step + c] *
        weight[weight_offset + i * weight_row_step + j * weight_tap_step + c], in that order, clamped at 0 (NaN
        kept) when relu is nonzero, also at 6 when it is tiles.RELU6_CODE, for p < pixels and c < channels, where
        steps is the tuple of int64 (out_offset, out_pixel_step, source_offset, source_pixel_step, source_row_step,
        source_tap_step, weight_offset, weight_row_step, weight_tap_step, use_bias, relu, tap_rows, taps,
        channels). Offsets and steps count
        elements; steps may be negative. The integers come as one tuple and the arrays apart: a tuple holding the
        arrays would take and drop a reference to each per call, atomic operations on counters that every thread
        shares."""
        if not (isinstance(steps, types.UniTuple) and steps.dtype == types.intp and steps.count == 14):
            return None
        signature = types.void(out, source, weight, bias, steps)

        def codegen(context, builder, sig, args):
            out_value, source_value, weight_value, bias_value, steps_value = args
            (out_offset, out_pixel_step, source_offset, source_pixel_step, source_row_step, source_tap_step,
             weight_offset, weight_row_step, weight_tap_step, use_bias, relu, tap_rows, taps, channels) = (
                builder.extract_value(steps_value, i) for i in range(14))
            vector, fma, zero, sums = _vectors(context, builder, sig.args[0], pixels)
            out_pointer = element_pointer(context, builder, sig.args[0], out_value, out_offset)
            source_pointer = element_pointer(context, builder, sig.args[1], source_value, source_offset)
            weight_pointer = element_pointer(context, builder, sig.args[2], weight_value, weight_offset)
            bias_pointer = element_pointer(context, builder, sig.args[3], bias_value, ir.Constant(INDEX, 0))
            with_bias = builder.icmp_signed("!=", use_bias, ir.Constant(INDEX, 0))
            clamp = builder.icmp_signed("!=", relu, ir.Constant(INDEX, 0))
            # the upper bound: 6 for ReLU6 (tiles.RELU6_CODE), else +inf, which no sum exceeds
            upper = builder.select(builder.icmp_signed("==", relu, ir.Constant(INDEX, RELU6_CODE)),
                                   ir.Constant(vector, [6.0] * vector.count),
                                   ir.Constant(vector, [math.inf] * vector.count))

            def block(first, mask):
                with builder.if_else(with_bias) as (then, otherwise):
                    with then:
                        builder.store(_load(builder, builder.gep(bias_pointer, [first]), vector, mask), sums[0])
                    with otherwise:
                        builder.store(zero, sums[0])
                start = builder.load(sums[0])
                for slot in sums[1:]:
                    builder.store(start, slot)
                with cgutils.for_range(builder, tap_rows) as row:
                    source_row = builder.gep(source_pointer, [builder.add(first, builder.mul(row.index,
                                                                                            source_row_step))])
                    weight_row = builder.gep(weight_pointer, [builder.add(first, builder.mul(row.index,
                                                                                            weight_row_step))])
                    with cgutils.for_range(builder, taps) as tap:
                        weights = _load(builder, builder.gep(weight_row, [builder.mul(tap.index, weight_tap_step)]),
                                        vector, mask)
                        pixel = builder.gep(source_row, [builder.mul(tap.index, source_tap_step)])
                        for p, slot in enumerate(sums):
                            # pixel by pixel: one step in a register, not one precomputed offset per pixel
                            if p:
                                pixel = builder.gep(pixel, [source_pixel_step])
                            value = _load(builder, pixel, vector, mask)
                            builder.store(builder.call(fma, [value, weights, builder.load(slot)]), slot)
                for p, slot in enumerate(sums):
                    total = builder.load(slot)
                    # ordered `<` is false for NaN, so NaN passes through the ReLU, as in PyTorch
                    clamped = builder.select(builder.fcmp_ordered("<", total, zero), zero, total)
                    clamped = builder.select(builder.fcmp_ordered(">", clamped, upper), upper, clamped)
                    target = builder.gep(out_pointer, [builder.add(first, builder.mul(out_pixel_step,
                                                                                      ir.Constant(INDEX, p)))])
                    _store(builder, builder.select(clamp, clamped, total), target, mask)

            _over_channels(builder, channels, vector.count, block)
            return context.get_dummy_value()

        return signature, codegen

    return correlation_tile


def _make_weight_tap(running_sums):
    """An intrinsic adding one tap's products over a run of pixels into a weight-gradient row, all channels."""

    @intrinsic
    def weight_tap(typingctx, partial, partial_offset, x, x_offset, x_pixel_step, grad, grad_offset, pixels,
                   channels):
        """partial[partial_offset + c] += the sum over p < pixels of x[x_offset + p * x_pixel_step + c] *
        grad[grad_offset + p * channels + c], for c < channels: pixel p goes to running sum p % running_sums
        (the pixels past the last whole round to the first), and the sums are added pairwise."""
        index = types.intp
        signature = types.void(partial, index, x, index, index, grad, index, index, index)

        def codegen(context, builder, sig, args):
            (partial_value, partial_offset, x_value, x_offset, x_pixel_step, grad_value, grad_offset, pixels,
             channels) = args
            vector, fma, zero, sums = _vectors(context, builder, sig.args[0], running_sums)
            partial_pointer = element_pointer(context, builder, sig.args[0], partial_value, partial_offset)
            x_pointer = element_pointer(context, builder, sig.args[2], x_value, x_offset)
            grad_pointer = element_pointer(context, builder, sig.args[5], grad_value, grad_offset)
            count = ir.Constant(INDEX, running_sums)
            rounds = builder.sdiv(pixels, count)

            def add_pixel(first, mask, pixel, slot):
                x_vector = _load(builder, builder.gep(x_pointer, [builder.add(first, builder.mul(pixel,
                                                                                                 x_pixel_step))]),
                                 vector, mask)
                grad_vector = _load(builder, builder.gep(grad_pointer, [builder.add(first, builder.mul(pixel,
                                                                                                       channels))]),
                                    vector, mask)
                builder.store(builder.call(fma, [x_vector, grad_vector, builder.load(slot)]), slot)

            def block(first, mask):
                for slot in sums:
                    builder.store(zero, slot)
                with cgutils.for_range(builder, rounds) as round_:
                    start = builder.mul(round_.index, count)
                    for u, slot in enumerate(sums):
                        add_pixel(first, mask, builder.add(start, ir.Constant(INDEX, u)), slot)
                one = ir.Constant(INDEX, 1)
                with cgutils.for_range_slice(builder, builder.mul(rounds, count), pixels, one) as (pixel, _):
                    add_pixel(first, mask, pixel, sums[0])
                values = [builder.load(slot) for slot in sums]
                while len(values) > 1:
                    values = [builder.fadd(values[i], values[i + 1]) if i + 1 < len(values) else values[i]
                              for i in range(0, len(values), 2)]
                target = builder.gep(partial_pointer, [first])
                _store(builder, builder.fadd(_load(builder, target, vector, mask), values[0]), target, mask)

            _over_channels(builder, channels, vector.count, block)
            return context.get_dummy_value()

        return signature, codegen

    return weight_tap


_correlate_tile = _make_correlation_tile(TILE_PIXELS)
_correlate_pixel = _make_correlation_tile(1)
_weight_tap = _make_weight_tap(TILES["depthwise_sums"])


# ----- the passes ----------------------------------------------------------------------------------------------

@jit
def phase_taps(phase, stride, padding, dilation, kernel):
    """The taps that reach the input-gradient positions phase + j * stride (j = 0, 1, ...), as a correlation of
    grad_out along j with stride 1: (padding', dilation', taps, first kernel index, kernel index step) such that
    position j takes grad_out at j - padding' + m * dilation' times the kernel entry first + m * step, m < taps."""
    step = stride // math.gcd(stride, dilation)
    first = -1
    for k in range(min(kernel, step)):  # the solutions of k * dilation = phase + padding (mod stride) repeat by step
        if (phase + padding - k * dilation) % stride == 0:
            first = k
            break
    if first < 0:
        return 0, 1, 0, 0, 0
    taps = (kernel - 1 - first) // step + 1
    spacing = dilation * step // stride
    shift = (phase + padding - first * dilation) // stride
    return (taps - 1) * spacing - shift, spacing, taps, first + step * (taps - 1), -step


@jit
def _interior(targets, stride, padding, dilation, taps, size):
    """The targets [first, last) all of whose taps (target * stride - padding + m * dilation, m < taps) are in
    [0, size)."""
    if taps == 0:
        return 0, targets
    first = min(targets, max(0, -(-padding // stride)))
    last = min(targets, (size - 1 + padding - (taps - 1) * dilation) // stride + 1)
    return first, max(first, last)


@jit
def _correlate_rows(first_job, last_job, worker, source, weight, bias, use_bias, out, stride_h, stride_w, pad_top,
                    pad_left, dilation_h, dilation_w, gradient, relu):
    """Target rows (image, row) first_job..last_job - 1 (run by _runtime.jobs.run_jobs): the forward (source x,
    out the output) or, when gradient, the input gradient (source grad_out, out the input's gradient)."""
    _, source_h, source_w, channels = source.shape
    _, target_h, target_w, _ = out.shape
    kernel_h, kernel_w = weight.shape[0], weight.shape[1]
    phases = stride_w if gradient else 1
    for job in range(first_job, last_job):
        n = job // target_h
        target_row = job % target_h
        if gradient:
            pad_h, spacing_h, taps_h, first_kh, step_kh = phase_taps(target_row % stride_h, stride_h, pad_top,
                                                                     dilation_h, kernel_h)
            origin_h = target_row // stride_h - pad_h
        else:
            pad_h, spacing_h, taps_h, first_kh, step_kh = pad_top, dilation_h, kernel_h, 0, 1
            origin_h = target_row * stride_h - pad_h
        low, high = valid_span(taps_h, source_h, spacing_h, origin_h)
        source_row = (n * source_h + origin_h + low * spacing_h) * source_w * channels
        weight_row = (first_kh + low * step_kh) * kernel_w * channels
        source_row_step = spacing_h * source_w * channels
        weight_row_step = step_kh * kernel_w * channels
        for phase in range(phases):
            if gradient:
                pad_w, spacing_w, taps_w, first_kw, step_kw = phase_taps(phase, stride_w, pad_left, dilation_w,
                                                                         kernel_w)
                pixel_stride, out_step = 1, stride_w
                targets = (target_w - phase + stride_w - 1) // stride_w
            else:
                pad_w, spacing_w, taps_w, first_kw, step_kw = pad_left, dilation_w, kernel_w, 0, 1
                pixel_stride, out_step = stride_w, 1
                targets = target_w
            first, last = _interior(targets, pixel_stride, pad_w, spacing_w, taps_w, source_w)
            t = 0
            while t < targets:
                origin = t * pixel_stride - pad_w
                whole = first <= t and t + TILE_PIXELS <= last
                low_w, high_w = (0, taps_w) if whole else valid_span(taps_w, source_w, spacing_w, origin)
                steps = ((job * target_w + phase + t * out_step) * channels, out_step * channels,
                         source_row + (origin + low_w * spacing_w) * channels, pixel_stride * channels,
                         source_row_step, spacing_w * channels, weight_row + (first_kw + low_w * step_kw) * channels,
                         weight_row_step, step_kw * channels, use_bias, relu, high - low, high_w - low_w, channels)
                if whole:
                    _correlate_tile(out, source, weight, bias, steps)
                    t += TILE_PIXELS
                else:
                    _correlate_pixel(out, source, weight, bias, steps)
                    t += 1


@jit
def _weight_chunks(first_chunk, last_chunk, worker, x, grad_out, partials, stride_h, stride_w, pad_top, pad_left,
                   dilation_h, dilation_w):
    """Chunks first_chunk..last_chunk - 1 of the (image, output row) range (run by _runtime.jobs.run_jobs):
    partials[chunk] (kH, kW, C) = the weight gradient of the chunk's rows, summed row by row."""
    batch, height, width, channels = x.shape
    chunks, kernel_h, kernel_w = partials.shape[0], partials.shape[1], partials.shape[2]
    out_h, out_w = grad_out.shape[1], grad_out.shape[2]
    for chunk in range(first_chunk, last_chunk):
        first, last = chunk_bounds(batch * out_h, chunks, chunk)
        partials[chunk] = 0.0
        for r in range(first, last):
            n = r // out_h
            origin_h = r % out_h * stride_h - pad_top
            low, high = valid_span(kernel_h, height, dilation_h, origin_h)
            for kh in range(low, high):
                x_row = (n * height + origin_h + kh * dilation_h) * width * channels
                for kw in range(kernel_w):
                    offset = kw * dilation_w - pad_left
                    first_ow, last_ow = valid_span(out_w, width, stride_w, offset)
                    if last_ow > first_ow:
                        _weight_tap(partials, ((chunk * kernel_h + kh) * kernel_w + kw) * channels, x,
                                    x_row + (first_ow * stride_w + offset) * channels, stride_w * channels, grad_out,
                                    (r * out_w + first_ow) * channels, last_ow - first_ow, channels)


def _correlate(source, weight, bias, out, stride, padding, dilation, gradient, relu):
    # without a bias, the weight stands in for the bias array, unread
    run_jobs(_correlate_rows, out.shape[0] * out.shape[1], WORKERS, source, weight,
             weight.reshape(-1) if bias is None else bias, int(bias is not None), out, int(stride[0]),
             int(stride[1]), int(padding[0]), int(padding[1]), int(dilation[0]), int(dilation[1]), int(gradient),
             int(relu))


def forward(x, weight, bias, out, stride, padding, dilation, relu):
    """out (N, H_out, W_out, C) = the depthwise convolution of x (N, H, W, C) with weight (kH, kW, 1, C), plus
    bias (C,) or None, then max(out, 0) when relu (and min(out, 6) when relu is tiles.RELU6_CODE)."""
    _correlate(x, weight, bias, out, stride, padding, dilation, False, relu)


def backward_input(grad_out, weight, out, stride, padding, dilation):
    """out (N, H, W, C) = the gradient of forward with respect to x."""
    _correlate(grad_out, weight, None, out, stride, padding, dilation, True, False)


def backward_weight(x, grad_out, out, stride, padding, dilation, scratch):
    """out (kH, kW, 1, C) = the gradient of forward with respect to weight; scratch["partials"] (chunks, kH, kW,
    1, C) as general.backward_weight_plan gives it, absent for one chunk (then out itself)."""
    kernel_h, kernel_w, _, channels = out.shape
    partials = (scratch["partials"] if "partials" in scratch else out).reshape(-1, kernel_h, kernel_w, channels)
    run_jobs(_weight_chunks, partials.shape[0], WORKERS, x, grad_out, partials, int(stride[0]), int(stride[1]),
             int(padding[0]), int(padding[1]), int(dilation[0]), int(dilation[1]))
    if partials.shape[0] > 1:
        sum_partials(partials, out.reshape(kernel_h, kernel_w, channels))
