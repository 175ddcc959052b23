"""Direct stride-1 convolution for few-channel layers (such as LeNet-5's 1→6 and 6→16), vectorised over pixels.

The register-tiled kernels of conv2d.py vectorise over output channels and need 16 or more of them; with 6
channels nothing vectorises that way, and im2col + GEMM spends its time building columns for tiny, skinny
products. Here each job (a band of output rows of one image) first copies the input rows its windows read
into a zero-padded, channel-planar frame `frame[c, r, j]` of width Wp = W_out + dilation·(kW - 1). With stride
1, output pixel (r, ow) and tap (kh, kw) read frame element (r + kh·dh)·Wp + ow + kw·dw, so every tap is one
contiguous run over the flattened band: `acc[co, p] += frame_flat[c, p + offset] * w` for p over rows·Wp
positions (the Wp - W_out positions past each row's end are computed and dropped). Those long unit-stride loops
are what LLVM vectorises; the accumulators of all C_out channels of a band stay in L1.

float32 layers whose kernel rows read contiguous NHWC runs (width dilation 1, no negative padding: uses_row_runs)
have kernels that index the NHWC data directly instead: the input gradient as a scatter of per-pixel GEMM rows
into padded frames, and, from CHANNEL_TILE_MIN output channels, the forward and weight gradient vectorised over
output channels. Neither computes the positions past a row's end that the planar frames carry.

Layouts and conventions are those of conv2d.py: NHWC activations, (kH, kW, C_in, C_out) weights, (top, left)
padding (bottom/right implied by the output size), `out` written whole and returned. The caller (conv2d.py)
validates shapes; any padding works (negative padding too: the frame then starts inside the input), any
dilation, float32 and float64. All scratch (the transposed weight, the weight-gradient partials, each job's
frame and accumulators) comes from one workspace in the conv2d_workspace convention: `*_plan` give the specs
from the shapes and the budget, per-job scratch exists once per slot (a thread's scratch set: the threads claim
ranges of jobs, each running them in its own slot), and the number of partial weight gradients depends on the
shape and budget only, summed in a fixed order, so results are bit-identical whatever the thread count.
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from . import conv2d_workspace
from ._jit import jit
from ._slots import run_jobs
from ._vector import (INDEX, LANES, broadcast, element_pointer, lane_mask, load_vector, masked_load, masked_store,
                      offset_pointer, store_vector, vector_fma, vector_type)
from .conv2d_workspace import carve, slots_within, spec_bytes, specs_bytes, sum_partials

# Forward jobs wanted per call: whole images when the batch gives this many, else bands of rows.
JOBS_WANTED = 16
# Weight-gradient partial buffers: at most this many, each summing whole images over at least
# CHUNK_POSITIONS frame positions (every tile of a chunk ends in a sum across its vector lanes; with
# LeNet-5's 6->16 layer at batch 64 in 16 chunks of 4 images those sums were a third of the instructions).
MAX_WEIGHT_CHUNKS = 16
CHUNK_POSITIONS = 2048
# Bytes of frame and accumulators one job keeps (forward band, weight-gradient block of images): small enough
# for L2, and a bound on scratch that does not grow with the image size or the batch.
JOB_BYTES = 256 << 10


# ---------------------------------------------------------------------------------------------------------
# float32 forward tile, spelled out in LLVM IR so its accumulators stay in vector registers (plain loops keep
# them in memory: one load and one store per FMA, 10-18 GFLOP/s on one thread). A tile is `outputs` output
# channels x 32 flattened pixels: per tap two <16 x float> frame loads and `outputs` broadcast weights feed
# 2 * outputs FMAs.
# ---------------------------------------------------------------------------------------------------------

TILE_VECTORS = 2
TILE_PIXELS = TILE_VECTORS * LANES


def _make_pixel_tile(outputs):
    """An intrinsic computing acc[c, p0:p0+32] for `outputs` consecutive output channels c of one band."""

    @intrinsic
    def pixel_tile(typingctx, acc, acc_offset, acc_row_step, frame, frame_offset, weight, weight_offset, bias,
                   bias_offset, channels_in, plane_step, kernel_h, row_step, kernel_w, tap_step, channels_out):
        """acc[acc_offset + c * acc_row_step + i] = bias[bias_offset + c] + sum over (ci, kh, kw) of
        frame[frame_offset + ci * plane_step + kh * row_step + kw * tap_step + i] *
        weight[weight_offset + ((ci * kernel_h + kh) * kernel_w + kw) * channels_out + c], for c < outputs and
        i < 32; offsets and steps count float32 elements."""
        index = types.intp
        signature = types.void(acc, index, index, frame, index, weight, index, bias, index, index, index, index,
                               index, index, index, index)

        def codegen(context, builder, sig, args):
            (acc_value, acc_offset, acc_row_step, frame_value, frame_offset, weight_value, weight_offset, bias_value,
             bias_offset, channels_in, plane_step, kernel_h, row_step, kernel_w, tap_step, channels_out) = args
            vector = vector_type()
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector, [vector] * 3),
                                                 "llvm.fma.v16f32")

            def pointer(position, value, offset):
                data = context.make_array(sig.args[position])(context, builder, value).data
                return builder.gep(data, [offset])

            acc_pointer = pointer(0, acc_value, acc_offset)
            frame_pointer = pointer(3, frame_value, frame_offset)
            weight_pointer = pointer(5, weight_value, weight_offset)
            bias_pointer = pointer(7, bias_value, bias_offset)
            slots = []
            for c in range(outputs):
                start = broadcast(builder, builder.load(builder.gep(bias_pointer, [ir.Constant(INDEX, c)])))
                for _ in range(TILE_VECTORS):
                    slot = cgutils.alloca_once(builder, vector)
                    builder.store(start, slot)
                    slots.append(slot)
            with cgutils.for_range(builder, channels_in) as channel:
                frame_plane = builder.gep(frame_pointer, [builder.mul(channel.index, plane_step)])
                weight_plane = builder.gep(weight_pointer,
                                           [builder.mul(builder.mul(channel.index, kernel_h),
                                                        builder.mul(kernel_w, channels_out))])
                with cgutils.for_range(builder, kernel_h) as tap_h:
                    frame_row = builder.gep(frame_plane, [builder.mul(tap_h.index, row_step)])
                    weight_row = builder.gep(weight_plane,
                                             [builder.mul(tap_h.index, builder.mul(kernel_w, channels_out))])
                    with cgutils.for_range(builder, kernel_w) as tap_w:
                        frame_tap = builder.gep(frame_row, [builder.mul(tap_w.index, tap_step)])
                        weight_tap = builder.gep(weight_row, [builder.mul(tap_w.index, channels_out)])
                        pixels = [builder.load(builder.bitcast(builder.gep(frame_tap, [ir.Constant(INDEX, v * LANES)]),
                                                               vector.as_pointer()), align=4)
                                  for v in range(TILE_VECTORS)]
                        for c in range(outputs):
                            w = broadcast(builder, builder.load(builder.gep(weight_tap, [ir.Constant(INDEX, c)])))
                            for v in range(TILE_VECTORS):
                                slot = slots[c * TILE_VECTORS + v]
                                builder.store(builder.call(fma, [w, pixels[v], builder.load(slot)]), slot)
            for c in range(outputs):
                acc_row = builder.gep(acc_pointer, [builder.mul(acc_row_step, ir.Constant(INDEX, c))])
                for v in range(TILE_VECTORS):
                    target = builder.bitcast(builder.gep(acc_row, [ir.Constant(INDEX, v * LANES)]), vector.as_pointer())
                    builder.store(builder.load(slots[c * TILE_VECTORS + v]), target, align=4)
            return context.get_dummy_value()

        return signature, codegen

    return pixel_tile


_pixel_tile_8 = _make_pixel_tile(8)
_pixel_tile_7 = _make_pixel_tile(7)
_pixel_tile_6 = _make_pixel_tile(6)
_pixel_tile_5 = _make_pixel_tile(5)
_pixel_tile_4 = _make_pixel_tile(4)
_pixel_tile_3 = _make_pixel_tile(3)
_pixel_tile_2 = _make_pixel_tile(2)
_pixel_tile_1 = _make_pixel_tile(1)


@jit
def _run_pixel_tiles(acc, acc_row_step, frame, weight, bias, p0, channels_in, plane_step, kernel_h, row_step,
                     kernel_w, tap_step, channels_out):
    """All output channels of the 32 pixels from p0: tiles of 8 output channels, then one tile as wide as the
    rest (LeNet-5's 6 channels in one tile: 2 frame loads per 12 FMAs, not per 8 + 4)."""
    co = 0
    while co + 8 <= channels_out:
        _pixel_tile_8(acc, co * acc_row_step + p0, acc_row_step, frame, p0, weight, co, bias, co, channels_in,
                      plane_step, kernel_h, row_step, kernel_w, tap_step, channels_out)
        co += 8
    rest = channels_out - co
    args_offset = co * acc_row_step + p0
    if rest == 7:
        _pixel_tile_7(acc, args_offset, acc_row_step, frame, p0, weight, co, bias, co, channels_in, plane_step,
                      kernel_h, row_step, kernel_w, tap_step, channels_out)
    elif rest == 6:
        _pixel_tile_6(acc, args_offset, acc_row_step, frame, p0, weight, co, bias, co, channels_in, plane_step,
                      kernel_h, row_step, kernel_w, tap_step, channels_out)
    elif rest == 5:
        _pixel_tile_5(acc, args_offset, acc_row_step, frame, p0, weight, co, bias, co, channels_in, plane_step,
                      kernel_h, row_step, kernel_w, tap_step, channels_out)
    elif rest == 4:
        _pixel_tile_4(acc, args_offset, acc_row_step, frame, p0, weight, co, bias, co, channels_in, plane_step,
                      kernel_h, row_step, kernel_w, tap_step, channels_out)
    elif rest == 3:
        _pixel_tile_3(acc, args_offset, acc_row_step, frame, p0, weight, co, bias, co, channels_in, plane_step,
                      kernel_h, row_step, kernel_w, tap_step, channels_out)
    elif rest == 2:
        _pixel_tile_2(acc, args_offset, acc_row_step, frame, p0, weight, co, bias, co, channels_in, plane_step,
                      kernel_h, row_step, kernel_w, tap_step, channels_out)
    elif rest == 1:
        _pixel_tile_1(acc, args_offset, acc_row_step, frame, p0, weight, co, bias, co, channels_in, plane_step,
                      kernel_h, row_step, kernel_w, tap_step, channels_out)


def _make_weight_tile(taps, outputs):
    """An intrinsic adding to the weight gradient of `taps` consecutive kw taps x `outputs` output channels the
    dot products of their frame rows with grad_out, over `vectors` * 16 flattened pixels."""

    @intrinsic
    def weight_tile(typingctx, partial, partial_offset, partial_tap_step, frame, frame_offset, tap_step, grad,
                    grad_offset, grad_row_step, vectors):
        """partial[partial_offset + k * partial_tap_step + c] += sum over i < vectors * 16 of
        frame[frame_offset + k * tap_step + i] * grad[grad_offset + c * grad_row_step + i], for k < taps and
        c < outputs; offsets and steps count float32 elements. The 16 lanes are summed in a fixed order."""
        index = types.intp
        signature = types.void(partial, index, index, frame, index, index, grad, index, index, index)

        def codegen(context, builder, sig, args):
            (partial_value, partial_offset, partial_tap_step, frame_value, frame_offset, tap_step, grad_value,
             grad_offset, grad_row_step, vectors) = args
            vector = vector_type()
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector, [vector] * 3),
                                                 "llvm.fma.v16f32")

            def pointer(position, value, offset):
                data = context.make_array(sig.args[position])(context, builder, value).data
                return builder.gep(data, [offset])

            partial_pointer = pointer(0, partial_value, partial_offset)
            frame_pointer = pointer(3, frame_value, frame_offset)
            grad_pointer = pointer(6, grad_value, grad_offset)
            frame_rows = [builder.gep(frame_pointer, [builder.mul(tap_step, ir.Constant(INDEX, k))])
                          for k in range(taps)]
            grad_rows = [builder.gep(grad_pointer, [builder.mul(grad_row_step, ir.Constant(INDEX, c))])
                         for c in range(outputs)]
            slots = []
            for _ in range(taps * outputs):
                slot = cgutils.alloca_once(builder, vector)
                builder.store(ir.Constant(vector, [0.0] * LANES), slot)
                slots.append(slot)
            with cgutils.for_range(builder, vectors) as step:
                offset = builder.mul(step.index, ir.Constant(INDEX, LANES))

                def load(row):
                    return builder.load(builder.bitcast(builder.gep(row, [offset]), vector.as_pointer()), align=4)

                frames = [load(row) for row in frame_rows]
                grads = [load(row) for row in grad_rows]
                for k in range(taps):
                    for c in range(outputs):
                        slot = slots[k * outputs + c]
                        builder.store(builder.call(fma, [frames[k], grads[c], builder.load(slot)]), slot)
            for k in range(taps):
                tap_row = builder.gep(partial_pointer, [builder.mul(partial_tap_step, ir.Constant(INDEX, k))])
                for c in range(outputs):
                    total = builder.load(slots[k * outputs + c])
                    width = LANES
                    while width > 1:  # halves added lane by lane: a fixed order in log2(16) vector steps
                        width //= 2
                        halves = [builder.shuffle_vector(total, total, ir.Constant(ir.VectorType(ir.IntType(32),
                                                                                                 width),
                                                                                   list(range(start, start + width))))
                                  for start in (0, width)]
                        total = builder.fadd(halves[0], halves[1])
                    target = builder.gep(tap_row, [ir.Constant(INDEX, c)])
                    builder.store(builder.fadd(builder.load(target),
                                               builder.extract_element(total, ir.Constant(ir.IntType(32), 0))),
                                  target)
            return context.get_dummy_value()

        return signature, codegen

    return weight_tile


_weight_tile_4x4 = _make_weight_tile(4, 4)
_weight_tile_4x2 = _make_weight_tile(4, 2)
_weight_tile_4x1 = _make_weight_tile(4, 1)
_weight_tile_1x4 = _make_weight_tile(1, 4)
_weight_tile_1x2 = _make_weight_tile(1, 2)
_weight_tile_1x1 = _make_weight_tile(1, 1)


@jit
def _run_weight_tiles(partial, partial_offset, partial_tap_step, frame, frame_offset, tap_step, grad, grad_row_step,
                      vectors, four_taps, channels_out):
    """One kw block (4 taps when four_taps, else 1) x all output channels: tiles of 4 channels, then 2 and 1."""
    co = 0
    while co + 4 <= channels_out:
        if four_taps:
            _weight_tile_4x4(partial, partial_offset + co, partial_tap_step, frame, frame_offset, tap_step, grad,
                             co * grad_row_step, grad_row_step, vectors)
        else:
            _weight_tile_1x4(partial, partial_offset + co, partial_tap_step, frame, frame_offset, tap_step, grad,
                             co * grad_row_step, grad_row_step, vectors)
        co += 4
    if co + 2 <= channels_out:
        if four_taps:
            _weight_tile_4x2(partial, partial_offset + co, partial_tap_step, frame, frame_offset, tap_step, grad,
                             co * grad_row_step, grad_row_step, vectors)
        else:
            _weight_tile_1x2(partial, partial_offset + co, partial_tap_step, frame, frame_offset, tap_step, grad,
                             co * grad_row_step, grad_row_step, vectors)
        co += 2
    if co < channels_out:
        if four_taps:
            _weight_tile_4x1(partial, partial_offset + co, partial_tap_step, frame, frame_offset, tap_step, grad,
                             co * grad_row_step, grad_row_step, vectors)
        else:
            _weight_tile_1x1(partial, partial_offset + co, partial_tap_step, frame, frame_offset, tap_step, grad,
                             co * grad_row_step, grad_row_step, vectors)



# ---------------------------------------------------------------------------------------------------------
# Frames: the input rows a job reads, zero-padded and channel-planar, in a flat slice of the slot's scratch.
# ---------------------------------------------------------------------------------------------------------

@jit
def _fill_frame(x, n, first_ih, pad_left, frames, i):
    """frames[c, i, r, j] = x[n, first_ih + r, j - pad_left, c], or 0 where that lies outside x; frames is
    (C, images, frame_h, frame_w). Explicit element loops: an array-to-array slice copy would compile Numba's
    broadcasting setitem and its error formatting."""
    _, height, width, channels = x.shape
    frame_h, frame_w = frames.shape[2], frames.shape[3]
    first = min(max(0, pad_left), frame_w)
    last = max(first, min(frame_w, width + pad_left))
    for r in range(frame_h):
        ih = first_ih + r
        inside = 0 <= ih < height
        for c in range(channels):
            target = frames[c, i, r]
            if inside:
                for j in range(first):
                    target[j] = 0.0
                for j in range(last, frame_w):
                    target[j] = 0.0
            else:
                for j in range(frame_w):
                    target[j] = 0.0
        if not inside:
            continue
        if channels <= 3:
            # plane by plane: contiguous stores, and for one channel contiguous loads too (a vectorised copy)
            for c in range(channels):
                source = x[n, ih, :, c]
                target = frames[c, i, r]
                for j in range(first, last):
                    target[j] = source[j - pad_left]
        else:
            # pixel by pixel: contiguous loads, faster than plane by plane from 6 channels up
            for j in range(first, last):
                pixel = x[n, ih, j - pad_left]
                for c in range(channels):
                    frames[c, i, r, j] = pixel[c]


# ---------------------------------------------------------------------------------------------------------
# Forward: the threads claim ranges of the (image, band of output rows) jobs.
# ---------------------------------------------------------------------------------------------------------

@jit
def _store_rows(acc, acc_row_step, out, n, first_oh, rows, frame_w, relu):
    """out[n, first_oh + r, ow, co] = acc[co * acc_row_step + r * frame_w + ow], clamped at 0 when relu (NaN kept,
    as in torch.relu): the band's accumulators back to NHWC, dropping the positions past each row."""
    out_w, channels_out = out.shape[2], out.shape[3]
    acc_rows = acc[:channels_out * acc_row_step].reshape(channels_out, acc_row_step)
    for r in range(rows):
        result = out[n, first_oh + r]
        for ow in range(out_w):
            for co in range(channels_out):
                value = acc_rows[co, r * frame_w + ow]
                result[ow, co] = 0.0 if relu and value < 0 else value


def _make_interleave_store(channels):
    """An intrinsic storing up to 16 pixels of `channels` accumulator planes as NHWC: a transpose of
    channels x 16 floats in registers (constant shuffles) instead of one scalar load and store per element."""

    @intrinsic
    def interleave_store(typingctx, acc, acc_offset, plane_step, out, out_offset, pixels, relu):
        """out[out_offset + p * channels + c] = acc[acc_offset + c * plane_step + p] for p < pixels (<= 16) and
        c < channels, clamped at 0 when relu (NaN kept); offsets in float32 elements."""
        index = types.intp
        signature = types.void(acc, index, index, out, index, index, types.boolean)

        def codegen(context, builder, sig, args):
            acc_value, acc_offset, plane_step, out_value, out_offset, pixels, relu = args
            vector = vector_type()
            shuffle_mask = ir.VectorType(ir.IntType(32), LANES)


            acc_pointer = element_pointer(context, builder, sig.args[0], acc_value, acc_offset)
            out_pointer = element_pointer(context, builder, sig.args[3], out_value, out_offset)
            zero = ir.Constant(vector, [0.0] * LANES)
            planes = []
            for c in range(channels):
                value = masked_load(builder, builder.gep(acc_pointer, [builder.mul(plane_step, ir.Constant(INDEX, c))]),
                                     lane_mask(builder, pixels))
                clamped = builder.select(builder.fcmp_ordered("<", value, zero), zero, value)
                planes.append(builder.select(relu, clamped, value))
            total = builder.mul(pixels, ir.Constant(INDEX, channels))
            for k in range(channels):
                # output lane l holds element e = 16k + l: channel e % channels of pixel e // channels
                sources = [((LANES * k + l) % channels, (LANES * k + l) // channels) for l in range(LANES)]
                used = sorted(set(c for c, _ in sources))
                result = planes[used[0]]
                held = {l for l, (c, _) in enumerate(sources) if c == used[0]}
                # lanes of result: the channel's pixel p sits at lane p of its plane
                mask = [sources[l][1] if l in held else 0 for l in range(LANES)]
                result = builder.shuffle_vector(result, result, ir.Constant(shuffle_mask, mask))
                for c in used[1:]:
                    mask = [LANES + sources[l][1] if sources[l][0] == c else l for l in range(LANES)]
                    result = builder.shuffle_vector(result, planes[c], ir.Constant(shuffle_mask, mask))
                count = builder.sub(total, ir.Constant(INDEX, LANES * k))
                masked_store(builder, result, offset_pointer(builder, out_pointer, LANES * k),
                             lane_mask(builder, count))
            return context.get_dummy_value()

        return signature, codegen

    return interleave_store


_interleave_store_8 = _make_interleave_store(8)
_interleave_store_7 = _make_interleave_store(7)
_interleave_store_6 = _make_interleave_store(6)
_interleave_store_5 = _make_interleave_store(5)
_interleave_store_4 = _make_interleave_store(4)
_interleave_store_3 = _make_interleave_store(3)
_interleave_store_2 = _make_interleave_store(2)
_interleave_store_1 = _make_interleave_store(1)


def _make_deinterleave_load(channels):
    """An intrinsic copying up to 16 NHWC pixels of `channels` channels into channel planes: the inverse of
    _make_interleave_store's transpose."""

    @intrinsic
    def deinterleave_load(typingctx, source, source_offset, pixels, planes, plane_offset, plane_step):
        """planes[plane_offset + c * plane_step + p] = source[source_offset + p * channels + c] for p < pixels
        (<= 16) and c < channels; offsets in float32 elements."""
        index = types.intp
        signature = types.void(source, index, index, planes, index, index)

        def codegen(context, builder, sig, args):
            source_value, source_offset, pixels, planes_value, plane_offset, plane_step = args
            shuffle_mask = ir.VectorType(ir.IntType(32), LANES)


            source_pointer = element_pointer(context, builder, sig.args[0], source_value, source_offset)
            plane_pointer = element_pointer(context, builder, sig.args[3], planes_value, plane_offset)
            total = builder.mul(pixels, ir.Constant(INDEX, channels))
            pieces = [masked_load(builder, offset_pointer(builder, source_pointer, LANES * k),
                                   lane_mask(builder, builder.sub(total, ir.Constant(INDEX, LANES * k))))
                      for k in range(channels)]
            for c in range(channels):
                # plane lane p holds element e = p * channels + c: lane e % 16 of piece e // 16
                sources = [divmod(p * channels + c, LANES) for p in range(LANES)]
                used = sorted(set(k for k, _ in sources))
                mask = [lane if k == used[0] else 0 for k, lane in sources]
                result = builder.shuffle_vector(pieces[used[0]], pieces[used[0]], ir.Constant(shuffle_mask, mask))
                for k in used[1:]:
                    mask = [LANES + lane if piece == k else p for p, (piece, lane) in enumerate(sources)]
                    result = builder.shuffle_vector(result, pieces[k], ir.Constant(shuffle_mask, mask))
                masked_store(builder, result, builder.gep(plane_pointer, [builder.mul(plane_step,
                                                                                       ir.Constant(INDEX, c))]),
                              lane_mask(builder, pixels))
            return context.get_dummy_value()

        return signature, codegen

    return deinterleave_load


_deinterleave_load_8 = _make_deinterleave_load(8)
_deinterleave_load_7 = _make_deinterleave_load(7)
_deinterleave_load_6 = _make_deinterleave_load(6)
_deinterleave_load_5 = _make_deinterleave_load(5)
_deinterleave_load_4 = _make_deinterleave_load(4)
_deinterleave_load_3 = _make_deinterleave_load(3)
_deinterleave_load_2 = _make_deinterleave_load(2)
_deinterleave_load_1 = _make_deinterleave_load(1)


@jit
def _store_rows_tiled(acc, acc_row_step, out, n, first_oh, rows, frame_w, relu):
    """_store_rows for float32, 16 pixels at a time through _interleave_store_* up to 8 channels."""
    out_w, channels_out = out.shape[2], out.shape[3]
    if channels_out > 8:
        _store_rows(acc, acc_row_step, out, n, first_oh, rows, frame_w, relu)
        return
    flat_out = out.reshape(-1)
    for r in range(rows):
        row = ((n * out.shape[1] + first_oh + r) * out_w) * channels_out
        for ow in range(0, out_w, LANES):
            pixels = min(LANES, out_w - ow)
            source = r * frame_w + ow
            target = row + ow * channels_out
            if channels_out == 6:
                _interleave_store_6(acc, source, acc_row_step, flat_out, target, pixels, relu)
            elif channels_out == 8:
                _interleave_store_8(acc, source, acc_row_step, flat_out, target, pixels, relu)
            elif channels_out == 7:
                _interleave_store_7(acc, source, acc_row_step, flat_out, target, pixels, relu)
            elif channels_out == 5:
                _interleave_store_5(acc, source, acc_row_step, flat_out, target, pixels, relu)
            elif channels_out == 4:
                _interleave_store_4(acc, source, acc_row_step, flat_out, target, pixels, relu)
            elif channels_out == 3:
                _interleave_store_3(acc, source, acc_row_step, flat_out, target, pixels, relu)
            elif channels_out == 2:
                _interleave_store_2(acc, source, acc_row_step, flat_out, target, pixels, relu)
            else:
                _interleave_store_1(acc, source, acc_row_step, flat_out, target, pixels, relu)


def _band_jobs(out, band_rows):
    """How many (image, band of output rows) jobs a forward of out (N, H_out, W_out, C_out) has."""
    return out.shape[0] * -(-out.shape[1] // band_rows)


@jit
def _forward_jobs_tiled(first_job, last_job, worker, x, weight_t, bias, out, frames, accs, geometry, relu):
    """Jobs first_job..last_job - 1 of _forward_bands_tiled (run by kernels/_slots.run_jobs)."""
    _, _, dilation_h, dilation_w, band_rows = geometry
    batch, channels_in = x.shape[0], x.shape[3]
    _, kernel_h, kernel_w, channels_out = weight_t.shape
    out_h, out_w = out.shape[1], out.shape[2]
    frame_w = out_w + dilation_w * (kernel_w - 1)
    bands = (out_h + band_rows - 1) // band_rows
    frame, acc = frames[worker], accs[worker]
    first_image = np.int64(0)  # a band's frame holds one image; not a literal 0 (a second signature)
    for job in range(first_job, last_job):
        n = job // bands
        first_oh = (job % bands) * band_rows
        rows = min(band_rows, out_h - first_oh)
        frame_h = rows + dilation_h * (kernel_h - 1)
        plane = frame_h * frame_w
        padded = max((rows - 1) * frame_w + out_w, TILE_PIXELS)
        _fill_frame(x, n, first_oh - geometry[0], geometry[1],
                    frame[:channels_in * plane].reshape(channels_in, 1, frame_h, frame_w), first_image)
        # zeros after the last plane, which a tile reading past it (a band shorter than one tile) finds there
        for i in range(channels_in * plane, channels_in * plane + TILE_PIXELS):
            frame[i] = 0.0
        # tiles every 32 pixels; the last one shifted back to end at the band's end (it recomputes identical
        # values where it overlaps its neighbour) instead of remainder code
        for start in range(0, padded, TILE_PIXELS):
            _run_pixel_tiles(acc, padded, frame, weight_t, bias, min(start, padded - TILE_PIXELS), channels_in,
                             plane, kernel_h, dilation_h * frame_w, kernel_w, dilation_w, channels_out)
        _store_rows_tiled(acc, padded, out, n, first_oh, rows, frame_w, relu)


def _forward_bands_tiled(x, weight_t, bias, out, frames, accs, geometry, relu):
    """float32 forward with register tiles; weight_t is (C_in, kH, kW, C_out). frames and accs: one row of
    scratch per slot. geometry: (pad_top, pad_left, dilation_h, dilation_w, band_rows)."""
    run_jobs(_forward_jobs_tiled, _band_jobs(out, geometry[4]), frames.shape[0], x, weight_t, bias, out, frames,
             accs, geometry, relu)


@jit
def _forward_jobs(first_job, last_job, worker, x, weight, bias, out, frames, accs, geometry, relu):
    """Jobs first_job..last_job - 1 of _forward_bands: plain loops, each tap one unit-stride axpy over the band."""
    _, _, dilation_h, dilation_w, band_rows = geometry
    batch, channels_in = x.shape[0], x.shape[3]
    kernel_h, kernel_w, _, channels_out = weight.shape
    out_h, out_w = out.shape[1], out.shape[2]
    frame_w = out_w + dilation_w * (kernel_w - 1)
    bands = (out_h + band_rows - 1) // band_rows
    frame, acc = frames[worker], accs[worker]
    first_image = np.int64(0)  # a band's frame holds one image; not a literal 0 (a second signature)
    for job in range(first_job, last_job):
        n = job // bands
        first_oh = (job % bands) * band_rows
        rows = min(band_rows, out_h - first_oh)
        frame_h = rows + dilation_h * (kernel_h - 1)
        plane = frame_h * frame_w
        length = (rows - 1) * frame_w + out_w
        _fill_frame(x, n, first_oh - geometry[0], geometry[1],
                    frame[:channels_in * plane].reshape(channels_in, 1, frame_h, frame_w), first_image)
        for co in range(channels_out):
            start = bias[co]
            for p in range(co * length, (co + 1) * length):
                acc[p] = start
        for ci in range(channels_in):
            for kh in range(kernel_h):
                for kw in range(kernel_w):
                    source = frame[ci * plane + kh * dilation_h * frame_w + kw * dilation_w:]
                    for co in range(channels_out):
                        w = weight[kh, kw, ci, co]
                        target = acc[co * length:(co + 1) * length]
                        for p in range(length):
                            target[p] += source[p] * w
        _store_rows(acc, length, out, n, first_oh, rows, frame_w, relu)


def _forward_bands(x, weight, bias, out, frames, accs, geometry, relu):
    """Forward of any float dtype with plain loops; weight is (kH, kW, C_in, C_out)."""
    run_jobs(_forward_jobs, _band_jobs(out, geometry[4]), frames.shape[0], x, weight, bias, out, frames, accs,
             geometry, relu)


# ---------------------------------------------------------------------------------------------------------
# Weight gradient: the threads claim ranges of the partial sums (chunks of whole images); a chunk
# goes in blocks of images laid end to end in the slot's frame planes, and grad_out laid out the same way with
# zeros wherever no output pixel is (past each row, below each image), so every dot product runs over a whole
# block. A position past a row's end reads a real pixel of the frame and multiplies it by that zero, which
# adds nothing -- unless the pixel is inf or NaN (inf * 0 is NaN), where PyTorch, which never forms that
# product, may give a finite value. Any such product leaves the chunk's partial non-finite, so a chunk whose
# partial is not all finite is summed again over the output pixels only (exact, and slower).
# ---------------------------------------------------------------------------------------------------------

@jit
def _fill_block(x, grad_out, first, images, pad_top, pad_left, frames, grad):
    """Frames (C_in, block, frame_h, frame_w) and grad_out planes (C_out, block planes) of images first ..
    first + images - 1; grad's positions where no output pixel is stay as they are (zero)."""
    block, frame_h, frame_w = frames.shape[1], frames.shape[2], frames.shape[3]
    out_h, out_w, channels_out = grad_out.shape[1], grad_out.shape[2], grad_out.shape[3]
    plane = frame_h * frame_w
    for i in range(images):
        n = first + i
        _fill_frame(x, n, -pad_top, pad_left, frames, i)
        for oh in range(out_h):
            # one channel at a time: contiguous stores, loads a fixed stride apart
            source = grad_out[n, oh].reshape(-1)
            for co in range(channels_out):
                target = grad[(co * block + i) * plane + oh * frame_w:(co * block + i) * plane + oh * frame_w + out_w]
                pixels = source[co:]
                for ow in range(out_w):
                    target[ow] = pixels[ow * channels_out]


@jit
def _fill_block_tiled(x, grad_out, first, images, pad_top, pad_left, frames, grad):
    """_fill_block for float32: grad_out rows of up to 8 channels go to their planes 16 pixels at a time through
    _deinterleave_load_*."""
    channels_out = grad_out.shape[3]
    if channels_out > 8:
        _fill_block(x, grad_out, first, images, pad_top, pad_left, frames, grad)
        return
    block, frame_h, frame_w = frames.shape[1], frames.shape[2], frames.shape[3]
    out_h, out_w = grad_out.shape[1], grad_out.shape[2]
    plane = frame_h * frame_w
    flat_grad = grad_out.reshape(-1)
    for i in range(images):
        n = first + i
        _fill_frame(x, n, -pad_top, pad_left, frames, i)
        for oh in range(out_h):
            for ow in range(0, out_w, LANES):
                pixels = min(LANES, out_w - ow)
                source = ((n * out_h + oh) * out_w + ow) * channels_out
                target = i * plane + oh * frame_w + ow
                span = block * plane
                if channels_out == 6:
                    _deinterleave_load_6(flat_grad, source, pixels, grad, target, span)
                elif channels_out == 8:
                    _deinterleave_load_8(flat_grad, source, pixels, grad, target, span)
                elif channels_out == 7:
                    _deinterleave_load_7(flat_grad, source, pixels, grad, target, span)
                elif channels_out == 5:
                    _deinterleave_load_5(flat_grad, source, pixels, grad, target, span)
                elif channels_out == 4:
                    _deinterleave_load_4(flat_grad, source, pixels, grad, target, span)
                elif channels_out == 3:
                    _deinterleave_load_3(flat_grad, source, pixels, grad, target, span)
                elif channels_out == 2:
                    _deinterleave_load_2(flat_grad, source, pixels, grad, target, span)
                else:
                    _deinterleave_load_1(flat_grad, source, pixels, grad, target, span)


@jit
def _block_dots_tiled(frame, grad, partial, images, sizes):
    """float32: adds to partial (flat kH, kW, C_in, C_out) the dot products of every tap's frame run with
    grad_out over a block of images, in register tiles of whole 16-pixel vectors: up to 15 positions past the
    run, still inside the last image's plane (weight_frame_rows), grad_out is zero."""
    kernel_h, kernel_w, channels_in, channels_out, dilation_h, dilation_w, out_h, out_w, frame_w, plane, span = sizes
    tap_step = channels_in * channels_out  # between kw taps in a partial (kH, kW, C_in, C_out)
    length = (images - 1) * plane + (out_h - 1) * frame_w + out_w
    vectors = -(-length // LANES)
    for ci in range(channels_in):
        for kh in range(kernel_h):
            row_offset = ci * span + kh * dilation_h * frame_w
            kw = 0
            while kw < kernel_w:
                four = kw + 4 <= kernel_w
                _run_weight_tiles(partial, (kh * kernel_w + kw) * tap_step + ci * channels_out, tap_step, frame,
                                  row_offset + kw * dilation_w, dilation_w, grad, span, vectors, four, channels_out)
                kw += 4 if four else 1


@jit
def _block_dots(frame, grad, partial, images, sizes):
    """Any float dtype: _block_dots_tiled with plain loops (one running sum per dot product)."""
    kernel_h, kernel_w, channels_in, channels_out, dilation_h, dilation_w, out_h, out_w, frame_w, plane, span = sizes
    length = (images - 1) * plane + (out_h - 1) * frame_w + out_w
    index = 0
    for kh in range(kernel_h):
        for kw in range(kernel_w):
            for ci in range(channels_in):
                source = frame[ci * span + kh * dilation_h * frame_w + kw * dilation_w:]
                for co in range(channels_out):
                    g = grad[co * span:]
                    total = partial[index]
                    for p in range(length):
                        total += source[p] * g[p]
                    partial[index] = total
                    index += 1


@jit
def _block_dots_exact(frame, grad, partial, images, sizes):
    """_block_dots over the output pixels only (never a position past a row's end), for input with inf or NaN."""
    kernel_h, kernel_w, channels_in, channels_out, dilation_h, dilation_w, out_h, out_w, frame_w, plane, span = sizes
    index = 0
    for kh in range(kernel_h):
        for kw in range(kernel_w):
            for ci in range(channels_in):
                source = ci * span + kh * dilation_h * frame_w + kw * dilation_w
                for co in range(channels_out):
                    total = partial[index]
                    for i in range(images):
                        for oh in range(out_h):
                            base = i * plane + oh * frame_w
                            for ow in range(base, base + out_w):
                                total += frame[source + ow] * grad[co * span + ow]
                    partial[index] = total
                    index += 1


@jit
def _all_finite(values):
    """Whether a 1-D array holds no inf or NaN (v - v is NaN exactly for those)."""
    bad = False
    for k in range(values.shape[0]):
        residue = values[k] - values[k]
        bad |= residue != residue
    return not bad


@jit
def weight_frame_rows(out_h, out_w, kernel_h, kernel_w, dilation_h, dilation_w):
    """Rows of a weight-gradient frame: the input rows the windows read, and more where needed so that at least
    LANES positions follow the last output pixel of an image within its plane (the whole-vector dot products
    read that far past a run; the grad_out plane is zero there)."""
    frame_w = out_w + dilation_w * (kernel_w - 1)
    rows = out_h + dilation_h * (kernel_h - 1)
    after_last = dilation_h * (kernel_h - 1) * frame_w + dilation_w * (kernel_w - 1)
    return rows + max(0, -(-(LANES - after_last) // frame_w))


@jit
def _weight_sizes(grad_out, partials, dilation_h, dilation_w, block):
    """(kH, kW, C_in, C_out, dilation_h, dilation_w, H_out, W_out, frame_w, plane, span) of a weight gradient;
    span = block planes, the run of one channel in the frames and grad_out planes."""
    _, kernel_h, kernel_w, channels_in, channels_out = partials.shape
    out_h, out_w = grad_out.shape[1], grad_out.shape[2]
    frame_w = out_w + dilation_w * (kernel_w - 1)
    plane = weight_frame_rows(out_h, out_w, kernel_h, kernel_w, dilation_h, dilation_w) * frame_w
    return (kernel_h, kernel_w, channels_in, channels_out, dilation_h, dilation_w, out_h, out_w, frame_w, plane,
            block * plane)


@jit
def _backward_weight_chunks_tiled(first_chunk, last_chunk, worker, x, grad_out, partials, frames, grads, geometry):
    """Chunks first_chunk..last_chunk - 1 of _backward_weight_tiled (run by kernels/_slots.run_jobs)."""
    pad_top, pad_left, dilation_h, dilation_w, block = geometry
    sizes = _weight_sizes(grad_out, partials, dilation_h, dilation_w, block)
    frame_w, plane = sizes[8], sizes[9]
    batch, chunks = x.shape[0], partials.shape[0]
    flat_partials = partials.reshape(chunks, -1)
    frame, grad = frames[worker], grads[worker]
    frames_4d = frame[:sizes[2] * sizes[10]].reshape(sizes[2], block, plane // frame_w, frame_w)
    for chunk in range(first_chunk, last_chunk):
        partial = flat_partials[chunk]
        begin, last = chunk * batch // chunks, (chunk + 1) * batch // chunks
        for exact in (False, True):
            for i in range(partial.shape[0]):
                partial[i] = 0.0
            for first in range(begin, last, block):
                images = min(block, last - first)
                _fill_block_tiled(x, grad_out, first, images, pad_top, pad_left, frames_4d, grad)
                if exact:
                    _block_dots_exact(frame, grad, partial, images, sizes)
                else:
                    _block_dots_tiled(frame, grad, partial, images, sizes)
            # a finite partial read no inf or NaN, so no product was dropped wrongly: done; otherwise sum
            # the chunk again over the output pixels only
            if _all_finite(partial):
                break


def _backward_weight_tiled(x, grad_out, partials, frames, grads, geometry):
    """float32 weight gradient with register tiles: partials[chunk] (kH, kW, C_in, C_out) = the gradient of the
    chunk's images. frames (slots, C_in * block planes) and grads (slots, C_out * block planes): one row per
    slot. geometry: (pad_top, pad_left, dilation_h, dilation_w, images per block)."""
    # the whole-vector runs read past the filled planes (into the slack, or an image slot a short block leaves
    # unfilled): zeros there, not whatever the workspace held, which could be inf or NaN; zeroed once here, not
    # once per range of chunks
    grads[...] = 0.0
    frames[...] = 0.0
    run_jobs(_backward_weight_chunks_tiled, partials.shape[0], frames.shape[0], x, grad_out, partials, frames, grads,
             geometry)


@jit
def _backward_weight_chunks(first_chunk, last_chunk, worker, x, grad_out, partials, frames, grads, geometry):
    """Chunks first_chunk..last_chunk - 1 of _backward_weight (run by kernels/_slots.run_jobs)."""
    pad_top, pad_left, dilation_h, dilation_w, block = geometry
    sizes = _weight_sizes(grad_out, partials, dilation_h, dilation_w, block)
    frame_w, plane = sizes[8], sizes[9]
    batch, chunks = x.shape[0], partials.shape[0]
    flat_partials = partials.reshape(chunks, -1)
    frame, grad = frames[worker], grads[worker]
    frames_4d = frame[:sizes[2] * sizes[10]].reshape(sizes[2], block, plane // frame_w, frame_w)
    for chunk in range(first_chunk, last_chunk):
        partial = flat_partials[chunk]
        begin, last = chunk * batch // chunks, (chunk + 1) * batch // chunks
        for exact in (False, True):
            for i in range(partial.shape[0]):
                partial[i] = 0.0
            for first in range(begin, last, block):
                images = min(block, last - first)
                _fill_block(x, grad_out, first, images, pad_top, pad_left, frames_4d, grad)
                if exact:
                    _block_dots_exact(frame, grad, partial, images, sizes)
                else:
                    _block_dots(frame, grad, partial, images, sizes)
            # a finite partial read no inf or NaN, so no product was dropped wrongly: done; otherwise sum
            # the chunk again over the output pixels only
            if _all_finite(partial):
                break


def _backward_weight(x, grad_out, partials, frames, grads, geometry):
    """Weight gradient of any float dtype with plain loops (see _backward_weight_tiled)."""
    grads[...] = 0.0  # as in _backward_weight_tiled
    run_jobs(_backward_weight_chunks, partials.shape[0], frames.shape[0], x, grad_out, partials, frames, grads,
             geometry)


# ---------------------------------------------------------------------------------------------------------
# float32 input gradient as a scatter: grad_in[oh + kh·dh - pt, ow + kw - pl, ci] += sum over co of
# grad_out[oh, ow, co] · w[kh, kw, ci, co]. For one output pixel and kernel row kh the kW·C_in values it adds are
# contiguous in NHWC, so a pixel's contribution is a short GEMM row (C_out long reduction, kW·C_in wide) added
# into a zero-padded per-image frame, whose inside is then copied out. Every product computed is one the input
# gradient has (the gather form, a forward of grad_out padded by the kernel extent, multiplies zeros: 2.5x the
# FMAs at LeNet-5's 16->6 channels, 10x10 -> 14x14). A tile is the same pixel of SCATTER_IMAGES images, so its
# read-modify-writes go to different frames and none waits on the one before it.
# ---------------------------------------------------------------------------------------------------------

SCATTER_IMAGES = 8


def _make_scatter_tile(vectors):
    """An intrinsic adding, for the same output pixel of up to SCATTER_IMAGES images, `vectors` 16-lane runs of one
    kernel row's products into the images' frames."""

    @intrinsic
    def scatter_tile(typingctx, grad, grad_offset, grad_image_step, images, weight, weight_offset, weight_step,
                     channels_out, frame, frame_offset, frame_image_step, lanes):
        """For i < SCATTER_IMAGES (images i >= `images` read image images - 1 and write nothing) and v < vectors:
        frame[frame_offset + i * frame_image_step + 16 v + l] += sum over co < channels_out of
        grad[grad_offset + i * grad_image_step + co] * weight[weight_offset + co * weight_step + 16 v + l], for the
        lanes l < lanes - 16 v (offsets in float32 elements)."""
        index = types.intp
        signature = types.void(grad, index, index, index, weight, index, index, index, frame, index, index, index)

        def codegen(context, builder, sig, args):
            (grad_value, grad_offset, grad_image_step, images, weight_value, weight_offset, weight_step,
             channels_out, frame_value, frame_offset, frame_image_step, lanes) = args
            vector = vector_type()
            fma = vector_fma(builder)
            grad_pointer = element_pointer(context, builder, sig.args[0], grad_value, grad_offset)
            weight_pointer = element_pointer(context, builder, sig.args[4], weight_value, weight_offset)
            frame_pointer = element_pointer(context, builder, sig.args[8], frame_value, frame_offset)
            last = builder.sub(images, ir.Constant(INDEX, 1))
            rows = []
            for i in range(SCATTER_IMAGES):
                image = builder.select(builder.icmp_signed("<", ir.Constant(INDEX, i), images),
                                       ir.Constant(INDEX, i), last)
                rows.append(builder.gep(grad_pointer, [builder.mul(image, grad_image_step)]))
            slots = []
            for _ in range(SCATTER_IMAGES * vectors):
                slot = cgutils.alloca_once(builder, vector)
                builder.store(ir.Constant(vector, [0.0] * LANES), slot)
                slots.append(slot)
            with cgutils.for_range(builder, channels_out) as channel:
                weight_row = builder.gep(weight_pointer, [builder.mul(channel.index, weight_step)])
                weights = [load_vector(builder, offset_pointer(builder, weight_row, v * LANES))
                           for v in range(vectors)]
                for i in range(SCATTER_IMAGES):
                    g = broadcast(builder, builder.load(builder.gep(rows[i], [channel.index])))
                    for v in range(vectors):
                        slot = slots[i * vectors + v]
                        builder.store(builder.call(fma, [g, weights[v], builder.load(slot)]), slot)
            for i in range(SCATTER_IMAGES):
                valid = builder.icmp_signed("<", ir.Constant(INDEX, i), images)
                target = builder.gep(frame_pointer, [builder.mul(ir.Constant(INDEX, i), frame_image_step)])
                for v in range(vectors):
                    count = builder.select(valid, builder.sub(lanes, ir.Constant(INDEX, v * LANES)),
                                           ir.Constant(INDEX, 0))
                    mask = lane_mask(builder, count)
                    pointer = offset_pointer(builder, target, v * LANES)
                    old = masked_load(builder, pointer, mask)
                    masked_store(builder, builder.fadd(old, builder.load(slots[i * vectors + v])), pointer, mask)
            return context.get_dummy_value()

        return signature, codegen

    return scatter_tile


_scatter_tile_2 = _make_scatter_tile(2)
_scatter_tile_1 = _make_scatter_tile(1)


@jit
def _backward_input_scatter_blocks(first_block, last_block, worker, grad_out, weight_rows, out, frames, geometry):
    """Image blocks first_block..last_block - 1 of _backward_input_scatter."""
    pad_top, pad_left, dilation_h, row_vectors, _ = geometry
    batch, out_h, out_w, channels_out = grad_out.shape
    _, height, width, channels_in = out.shape
    kernel_h = weight_rows.shape[1]
    row_lanes = weight_rows.shape[2]  # row_vectors * 16
    lanes = geometry[4]  # kW * C_in
    frame_h = out_h + dilation_h * (kernel_h - 1)
    frame_w = out_w + lanes // channels_in - 1
    image_step = frame_h * frame_w * channels_in
    grad_image_step = out_h * out_w * channels_out
    frame = frames[worker]
    flat_grad = grad_out.reshape(-1)
    flat_weight = weight_rows.reshape(-1)
    for block in range(first_block, last_block):
        first = block * SCATTER_IMAGES
        images = min(SCATTER_IMAGES, batch - first)
        for i in range(images * image_step):
            frame[i] = 0.0
        for oh in range(out_h):
            for ow in range(out_w):
                grad_offset = first * grad_image_step + (oh * out_w + ow) * channels_out
                for kh in range(kernel_h):
                    frame_offset = ((oh + kh * dilation_h) * frame_w + ow) * channels_in
                    v = 0
                    while v < row_vectors:
                        if v + 2 <= row_vectors:
                            _scatter_tile_2(flat_grad, grad_offset, grad_image_step, images, flat_weight,
                                            kh * row_lanes + v * LANES, kernel_h * row_lanes, channels_out, frame,
                                            frame_offset + v * LANES, image_step, lanes - v * LANES)
                            v += 2
                        else:
                            _scatter_tile_1(flat_grad, grad_offset, grad_image_step, images, flat_weight,
                                            kh * row_lanes + v * LANES, kernel_h * row_lanes, channels_out, frame,
                                            frame_offset + v * LANES, image_step, lanes - v * LANES)
                            v += 1
        for i in range(images):
            target = out[first + i].reshape(-1)
            for ih in range(height):
                source = (i * frame_h + ih + pad_top) * frame_w * channels_in + pad_left * channels_in
                row = target[ih * width * channels_in:(ih + 1) * width * channels_in]
                for j in range(width * channels_in):
                    row[j] = frame[source + j]


def _backward_input_scatter(grad_out, weight_rows, out, frames, geometry):
    """float32 input gradient of a stride-1 layer with width dilation 1 and no negative padding: weight_rows is
    (C_out, kH, row_vectors * 16) holding w[kh, kw, ci, co] at [co, kh, kw * C_in + ci] (zeros after), frames one
    row of SCATTER_IMAGES zero-padded input frames per slot. geometry: (pad_top, pad_left, dilation_h,
    row_vectors, kW * C_in)."""
    run_jobs(_backward_input_scatter_blocks, -(-grad_out.shape[0] // SCATTER_IMAGES), frames.shape[0], grad_out,
             weight_rows, out, frames, geometry)


# ---------------------------------------------------------------------------------------------------------
# float32 forward vectorised over output channels, for layers with enough of them (LeNet-5's 6->16): for one
# output pixel and kernel row kh the input it reads, x[oh + kh·dh, ow .. ow + kW - 1, :], is kW·C_in contiguous
# floats of an NHWC frame, so out[pixel, co0:co0+16] += sum over those j of x_run[j] · rows[kh, j, co0:co0+16]
# with one broadcast and one FMA per j. Nothing is computed past a row's end (the pixel-vectorised tiles compute
# W_out + kW - 1 positions per row: 40% waste at 10 output columns), and the accumulators are NHWC already. A tile
# is the same pixel of SCATTER_IMAGES images (8 accumulators, one weight load per 8 FMAs).
# ---------------------------------------------------------------------------------------------------------

@intrinsic
def _channel_tile(typingctx, frame, frame_offset, frame_image_step, frame_row_step, images, weight, weight_offset,
                  weight_row_step, weight_kh_step, kernel_h, lanes, bias, out, out_offset, out_image_step, channels,
                  relu):
    """For i < SCATTER_IMAGES (images i >= `images` read image images - 1 and store nothing):
    out[out_offset + i * out_image_step + c] = bias[c] + sum over kh < kernel_h, j < lanes of
    frame[frame_offset + i * frame_image_step + kh * frame_row_step + j] *
    weight[weight_offset + kh * weight_kh_step + j * weight_row_step + c] for c < channels (<= 16), clamped at 0
    when relu (NaN kept); offsets in float32 elements, weight readable for all 16 lanes."""
    index = types.intp
    signature = types.void(frame, index, index, index, index, weight, index, index, index, index, index, bias, out,
                           index, index, index, types.boolean)

    def codegen(context, builder, sig, args):
        (frame_value, frame_offset, frame_image_step, frame_row_step, images, weight_value, weight_offset,
         weight_row_step, weight_kh_step, kernel_h, lanes, bias_value, out_value, out_offset, out_image_step,
         channels, relu) = args
        vector = vector_type()
        fma = vector_fma(builder)
        frame_pointer = element_pointer(context, builder, sig.args[0], frame_value, frame_offset)
        weight_pointer = element_pointer(context, builder, sig.args[5], weight_value, weight_offset)
        bias_pointer = element_pointer(context, builder, sig.args[11], bias_value, ir.Constant(INDEX, 0))
        out_pointer = element_pointer(context, builder, sig.args[12], out_value, out_offset)


        start = masked_load(builder, bias_pointer, lane_mask(builder, channels))
        last = builder.sub(images, ir.Constant(INDEX, 1))
        rows, slots = [], []
        for i in range(SCATTER_IMAGES):
            image = builder.select(builder.icmp_signed("<", ir.Constant(INDEX, i), images), ir.Constant(INDEX, i),
                                   last)
            rows.append(builder.gep(frame_pointer, [builder.mul(image, frame_image_step)]))
            slot = cgutils.alloca_once(builder, vector)
            builder.store(start, slot)
            slots.append(slot)
        with cgutils.for_range(builder, kernel_h) as tap_h:
            weight_row = builder.gep(weight_pointer, [builder.mul(tap_h.index, weight_kh_step)])
            frame_rows = [builder.gep(row, [builder.mul(tap_h.index, frame_row_step)]) for row in rows]
            with cgutils.for_range(builder, lanes) as tap:
                w = load_vector(builder, builder.gep(weight_row, [builder.mul(tap.index, weight_row_step)]))
                for i in range(SCATTER_IMAGES):
                    x = broadcast(builder, builder.load(builder.gep(frame_rows[i], [tap.index])))
                    builder.store(builder.call(fma, [x, w, builder.load(slots[i])]), slots[i])
        zero = ir.Constant(vector, [0.0] * LANES)
        for i in range(SCATTER_IMAGES):
            valid = builder.icmp_signed("<", ir.Constant(INDEX, i), images)
            mask = lane_mask(builder, builder.select(valid, channels, ir.Constant(INDEX, 0)))
            value = builder.load(slots[i])
            clamped = builder.select(builder.fcmp_ordered("<", value, zero), zero, value)
            value = builder.select(relu, clamped, value)
            target = builder.gep(out_pointer, [builder.mul(ir.Constant(INDEX, i), out_image_step)])
            masked_store(builder, value, target, mask)
        return context.get_dummy_value()

    return signature, codegen


@jit
def _forward_channels_blocks(first_block, last_block, worker, x, weight_rows, bias, out, frames, geometry, relu):
    """Image blocks first_block..last_block - 1 of _forward_channels."""
    pad_top, pad_left, dilation_h, lanes = geometry
    batch, height, width, channels_in = x.shape
    _, out_h, out_w, channels_out = out.shape
    kernel_h, _, row_step = weight_rows.shape
    frame_h = out_h + dilation_h * (kernel_h - 1)
    frame_w = out_w + lanes // channels_in - 1
    image_step = frame_h * frame_w * channels_in
    out_image_step = out_h * out_w * channels_out
    frame = frames[worker]
    flat_weight = weight_rows.reshape(-1)
    flat_out = out.reshape(-1)
    for block in range(first_block, last_block):
        first = block * SCATTER_IMAGES
        images = min(SCATTER_IMAGES, batch - first)
        for i in range(images * image_step):
            frame[i] = 0.0
        for i in range(images):
            source = x[first + i].reshape(-1)
            for ih in range(height):
                target = frame[((i * frame_h + ih + pad_top) * frame_w + pad_left) * channels_in:]
                row = source[ih * width * channels_in:(ih + 1) * width * channels_in]
                for j in range(width * channels_in):
                    target[j] = row[j]
        for oh in range(out_h):
            for ow in range(out_w):
                frame_offset = (oh * frame_w + ow) * channels_in
                out_offset = first * out_image_step + (oh * out_w + ow) * channels_out
                for co in range(0, channels_out, LANES):
                    _channel_tile(frame, frame_offset, image_step, dilation_h * frame_w * channels_in, images,
                                  flat_weight, co, row_step, lanes * row_step, kernel_h, lanes, bias[co:], flat_out,
                                  out_offset + co, out_image_step, min(LANES, channels_out - co), relu)


def _forward_channels(x, weight_rows, bias, out, frames, geometry, relu):
    """float32 forward of a stride-1 layer with width dilation 1 and no negative padding, vectorised over output
    channels: weight_rows is (kH, kW * C_in, 16 * ceil(C_out / 16)) holding w[kh, kw, ci, co] at
    [kh, kw * C_in + ci, co] (zeros after), frames one row of SCATTER_IMAGES zero-padded input frames per slot.
    geometry: (pad_top, pad_left, dilation_h, kW * C_in)."""
    run_jobs(_forward_channels_blocks, -(-x.shape[0] // SCATTER_IMAGES), frames.shape[0], x, weight_rows, bias, out,
             frames, geometry, relu)


# ---------------------------------------------------------------------------------------------------------
# float32 weight gradient vectorised over output channels (the layers _forward_channels takes): partial[kh, j, co]
# += frame_run[pixel, kh, j] · grad_out[pixel, co] over every output pixel, j < kW·C_in the contiguous NHWC inputs
# of kernel row kh. A tile holds WEIGHT_ROWS_PER_TILE values of j for one 16-channel vector: per pixel one grad_out
# load feeds that many FMAs, every product is one the gradient has, and the partials are whole vectors (no lane
# sums).
# ---------------------------------------------------------------------------------------------------------

WEIGHT_ROWS_PER_TILE = 15


@intrinsic
def _channel_weight_tile(typingctx, frame, frame_offset, frame_row_step, frame_pixel_step, out_h, out_w, grad,
                         grad_offset, grad_pixel_step, channels, partial, partial_offset, partial_row_step, rows):
    """partial[partial_offset + t * partial_row_step + c] += sum over oh < out_h, ow < out_w of
    frame[frame_offset + oh * frame_row_step + ow * frame_pixel_step + t] *
    grad[grad_offset + (oh * out_w + ow) * grad_pixel_step + c], for t < rows (<= WEIGHT_ROWS_PER_TILE) and all 16
    lanes c (grad_out read for c < channels, 0 above); offsets in float32 elements."""
    index = types.intp
    signature = types.void(frame, index, index, index, index, index, grad, index, index, index, partial, index,
                           index, index)

    def codegen(context, builder, sig, args):
        (frame_value, frame_offset, frame_row_step, frame_pixel_step, out_h, out_w, grad_value, grad_offset,
         grad_pixel_step, channels, partial_value, partial_offset, partial_row_step, rows) = args
        vector = vector_type()
        fma = vector_fma(builder)
        frame_pointer = element_pointer(context, builder, sig.args[0], frame_value, frame_offset)
        grad_pointer = element_pointer(context, builder, sig.args[6], grad_value, grad_offset)
        partial_pointer = element_pointer(context, builder, sig.args[10], partial_value, partial_offset)
        mask = lane_mask(builder, channels)
        last = builder.sub(rows, ir.Constant(INDEX, 1))
        taps = [builder.select(builder.icmp_signed("<", ir.Constant(INDEX, t), rows), ir.Constant(INDEX, t), last)
                for t in range(WEIGHT_ROWS_PER_TILE)]
        slots = []
        for _ in range(WEIGHT_ROWS_PER_TILE):
            slot = cgutils.alloca_once(builder, vector)
            builder.store(ir.Constant(vector, [0.0] * LANES), slot)
            slots.append(slot)
        with cgutils.for_range(builder, out_h) as row:
            frame_row = builder.gep(frame_pointer, [builder.mul(row.index, frame_row_step)])
            grad_row = builder.gep(grad_pointer, [builder.mul(builder.mul(row.index, out_w), grad_pixel_step)])
            with cgutils.for_range(builder, out_w) as column:
                pixel = builder.gep(frame_row, [builder.mul(column.index, frame_pixel_step)])
                g = masked_load(builder, builder.gep(grad_row, [builder.mul(column.index, grad_pixel_step)]), mask)
                for t in range(WEIGHT_ROWS_PER_TILE):
                    x = broadcast(builder, builder.load(builder.gep(pixel, [taps[t]])))
                    builder.store(builder.call(fma, [x, g, builder.load(slots[t])]), slots[t])
        for t in range(WEIGHT_ROWS_PER_TILE):
            with builder.if_then(builder.icmp_signed("<", ir.Constant(INDEX, t), rows)):
                target = builder.gep(partial_pointer, [builder.mul(ir.Constant(INDEX, t), partial_row_step)])
                store_vector(builder, builder.fadd(load_vector(builder, target), builder.load(slots[t])), target)
        return context.get_dummy_value()

    return signature, codegen


@jit
def _backward_weight_channels_chunks(first_chunk, last_chunk, worker, x, grad_out, partials, frames, geometry):
    """Chunks first_chunk..last_chunk - 1 of _backward_weight_channels, one image at a time through the
    worker's frame."""
    pad_top, pad_left, dilation_h, lanes = geometry
    batch, height, width, channels_in = x.shape
    _, out_h, out_w, channels_out = grad_out.shape
    chunks, kernel_h, _, row_step = partials.shape
    frame_w = out_w + lanes // channels_in - 1
    frame = frames[worker]
    flat_grad = grad_out.reshape(-1)
    flat_partials = partials.reshape(chunks, -1)
    for chunk in range(first_chunk, last_chunk):
        partial = flat_partials[chunk]
        for i in range(partial.shape[0]):
            partial[i] = 0.0
        for n in range(chunk * batch // chunks, (chunk + 1) * batch // chunks):
            source = x[n].reshape(-1)
            for ih in range(height):
                target = frame[((ih + pad_top) * frame_w + pad_left) * channels_in:]
                row = source[ih * width * channels_in:(ih + 1) * width * channels_in]
                for j in range(width * channels_in):
                    target[j] = row[j]
            for kh in range(kernel_h):
                for j in range(0, lanes, WEIGHT_ROWS_PER_TILE):
                    for co in range(0, channels_out, LANES):
                        _channel_weight_tile(frame, kh * dilation_h * frame_w * channels_in + j,
                                             frame_w * channels_in, channels_in, out_h, out_w, flat_grad,
                                             n * out_h * out_w * channels_out + co, channels_out,
                                             min(LANES, channels_out - co), partial, (kh * lanes + j) * row_step + co,
                                             row_step, min(WEIGHT_ROWS_PER_TILE, lanes - j))


def _backward_weight_channels(x, grad_out, partials, frames, geometry):
    """float32 weight gradient vectorised over output channels: partials (chunks, kH, kW * C_in, 16 *
    ceil(C_out / 16)) the per-chunk sums at [kh, kw * C_in + ci, co]; frames one zero-padded input frame per
    slot. geometry: (pad_top, pad_left, dilation_h, kW * C_in)."""
    frames[...] = 0.0  # the padding stays zero; the inside is overwritten per image
    run_jobs(_backward_weight_channels_chunks, partials.shape[0], frames.shape[0], x, grad_out, partials, frames,
             geometry)


# ---------------------------------------------------------------------------------------------------------
# Scratch plans (the conv2d_workspace convention): specs from the shapes and the budget alone.
# ---------------------------------------------------------------------------------------------------------

def band_rows(batch, out_h, row_bytes):
    """Output rows per forward job: whole images when the batch alone makes enough jobs, else bands; at most
    JOB_BYTES of frame and accumulator rows (row_bytes each)."""
    rows = out_h if batch >= JOBS_WANTED else -(-out_h * batch // JOBS_WANTED)
    return max(1, min(rows, JOB_BYTES // row_bytes))


def block_images(image_bytes):
    """Images per weight-gradient block: as many as JOB_BYTES of frames and grad_out planes hold, at least 1."""
    return max(1, JOB_BYTES // image_bytes)


def weight_chunks(batch, plane, weight_bytes, budget):
    """How many partial weight gradients a backward-weight call sums: at most MAX_WEIGHT_CHUNKS, each of at least
    CHUNK_POSITIONS frame positions (plane per image), and as many as fit half the budget (at least one: then the
    output itself) -- a function of the shape and budget only, so results are bit-identical for any thread
    count."""
    return int(max(1, min(batch, MAX_WEIGHT_CHUNKS, batch * plane // CHUNK_POSITIONS,
                          (budget // 2) // weight_bytes)))


# Output channels from which the forward vectorises over channels (_forward_channels): 12 of 16 lanes busy.
CHANNEL_TILE_MIN = 12


def forward_plan(dtype, x_shape, weight_shape, out_shape, padding, dilation, budget, copy_weight=False):
    """(scratch specs, geometry) of the forward; weight_shape is (kH, kW, C_in, C_out). With at least
    CHANNEL_TILE_MIN output channels (float32, frames that need no negative padding) the kernel rows ("weight_rows")
    and per slot the frames of SCATTER_IMAGES images; otherwise the band kernels': the float32 one reads the weight
    as (C_in, kH, kW, C_out) from the workspace ("weight"), the float64 one in place unless copy_weight (the caller
    then fills "weight" in (kH, kW, C_in, C_out)), geometry (padding, dilation, band rows)."""
    dtype = np.dtype(dtype)
    batch, out_h, out_w, channels_out = out_shape
    kernel_h, kernel_w, channels_in, _ = weight_shape
    if (not copy_weight and channels_out >= CHANNEL_TILE_MIN
            and uses_row_runs(dtype, x_shape, weight_shape, out_shape, padding, dilation)):
        lanes = kernel_w * channels_in
        specs = (("zero_bias", (channels_out,), dtype),
                 ("weight_rows", (kernel_h, lanes, -(-channels_out // LANES) * LANES), dtype))
        frames = SCATTER_IMAGES * (out_h + dilation[0] * (kernel_h - 1)) * (out_w + kernel_w - 1) * channels_in
        slots = slots_within(spec_bytes((frames,), dtype), specs_bytes(specs), -(-batch // SCATTER_IMAGES), budget)
        specs += (("frames", (slots, frames), dtype),)
        return specs, (padding[0], padding[1], dilation[0], lanes)
    frame_w = out_w + dilation[1] * (kernel_w - 1)
    rows = band_rows(batch, out_h, (channels_in + channels_out) * frame_w * dtype.itemsize)
    frame = channels_in * (rows + dilation[0] * (kernel_h - 1)) * frame_w + TILE_PIXELS
    acc = channels_out * max((rows - 1) * frame_w + out_w, TILE_PIXELS)
    specs = (("zero_bias", (channels_out,), dtype),)
    if dtype == np.float32:
        specs += (("weight", (channels_in, kernel_h, kernel_w, channels_out), dtype),)
    elif copy_weight:
        specs += (("weight", tuple(weight_shape), dtype),)
    slots = slots_within(spec_bytes((frame,), dtype) + spec_bytes((acc,), dtype), specs_bytes(specs),
                         batch * -(-out_h // rows), budget)
    specs += (("frames", (slots, frame), dtype), ("accs", (slots, acc), dtype))
    return specs, (padding[0], padding[1], dilation[0], dilation[1], rows)


def uses_row_runs(dtype, x_shape, weight_shape, out_shape, padding, dilation):
    """Whether the kernels that take a kernel row's kW * C_in inputs as one contiguous run of a zero-padded NHWC
    frame apply (_backward_input_scatter; _forward_channels and _backward_weight_channels given enough output
    channels): float32, width dilation 1, and the frame covering the input on every side (no negative padding)."""
    kernel_h, kernel_w = weight_shape[:2]
    frame_h = out_shape[1] + dilation[0] * (kernel_h - 1)
    frame_w = out_shape[2] + kernel_w - 1
    return (np.dtype(dtype) == np.float32 and dilation[1] == 1 and min(padding) >= 0
            and frame_h >= x_shape[1] + padding[0] and frame_w >= x_shape[2] + padding[1])


def backward_input_plan(dtype, x_shape, weight_shape, out_shape, padding, dilation, budget):
    """Scratch specs and geometry of the input gradient: the scatter's (uses_row_runs: the kernel rows as
    "weight_rows", per slot the frames of SCATTER_IMAGES images), else forward_plan's for a forward of grad_out
    (out_shape) into x_shape with the kernel flipped, its channel axes swapped, padded by the dilated extent
    minus the forward padding."""
    kernel_h, kernel_w, channels_in, channels_out = weight_shape
    if uses_row_runs(dtype, x_shape, weight_shape, out_shape, padding, dilation):
        batch, out_h, out_w, _ = out_shape
        lanes = kernel_w * channels_in
        row_vectors = -(-lanes // LANES)
        image = (out_h + dilation[0] * (kernel_h - 1)) * (out_w + kernel_w - 1) * channels_in
        specs = (("weight_rows", (channels_out, kernel_h, row_vectors * LANES), np.dtype(dtype)),)
        frames = SCATTER_IMAGES * image
        slots = slots_within(spec_bytes((frames,), dtype), specs_bytes(specs), -(-batch // SCATTER_IMAGES), budget)
        specs += (("frames", (slots, frames), np.dtype(dtype)),)
        return specs, (padding[0], padding[1], dilation[0], row_vectors, lanes)
    pad = (dilation[0] * (kernel_h - 1) - padding[0], dilation[1] * (kernel_w - 1) - padding[1])
    return forward_plan(dtype, out_shape, (kernel_h, kernel_w, channels_out, channels_in), x_shape, pad, dilation,
                        budget, copy_weight=True)


def backward_weight_plan(dtype, x_shape, weight_shape, out_shape, padding, dilation, budget):
    """(scratch specs, geometry) of the weight gradient. The layers _forward_channels takes: per-chunk partials
    in the (kH, kW * C_in, 16-padded C_out) layout, their sum ("total"), one input frame per slot; geometry
    (padding, dilation_h, kW * C_in). Others: the partials (none when one chunk: it is the output), then per slot
    the frames and grad_out planes of one block of images; geometry (padding, dilation, images per block)."""
    dtype = np.dtype(dtype)
    batch, out_h, out_w, _ = out_shape
    kernel_h, kernel_w, channels_in, channels_out = weight_shape
    if (channels_out >= CHANNEL_TILE_MIN
            and uses_row_runs(dtype, x_shape, weight_shape, out_shape, padding, dilation)):
        lanes = kernel_w * channels_in
        total = (kernel_h, lanes, -(-channels_out // LANES) * LANES)
        chunks = weight_chunks(batch, CHUNK_POSITIONS, spec_bytes(total, dtype), budget)
        specs = (("partials", (chunks, *total), dtype), ("total", total, dtype))
        frame = (out_h + dilation[0] * (kernel_h - 1)) * (out_w + kernel_w - 1) * channels_in
        slots = slots_within(spec_bytes((frame,), dtype), specs_bytes(specs), chunks, budget)
        specs += (("frames", (slots, frame), dtype),)
        return specs, (padding[0], padding[1], dilation[0], lanes)
    plane = (weight_frame_rows(out_h, out_w, kernel_h, kernel_w, dilation[0], dilation[1])
             * (out_w + dilation[1] * (kernel_w - 1)))
    chunks = weight_chunks(batch, plane, spec_bytes(weight_shape, dtype), budget)
    specs = (("partials", (chunks, *weight_shape), dtype),) if chunks > 1 else ()
    block = min(block_images((channels_in + channels_out) * plane * dtype.itemsize), -(-batch // chunks))
    # LANES of frame slack: the last tap's whole-vector run reads up to 15 positions past the last plane
    frame, grad = channels_in * block * plane + LANES, channels_out * block * plane
    slots = slots_within(spec_bytes((frame,), dtype) + spec_bytes((grad,), dtype), specs_bytes(specs), chunks,
                         budget)
    specs += (("frames", (slots, frame), dtype), ("grads", (slots, grad), dtype))
    return specs, (padding[0], padding[1], dilation[0], dilation[1], block)


# ---------------------------------------------------------------------------------------------------------
# Entry points (called by conv2d.py with its plan's scratch, or on their own with a fresh workspace).
# ---------------------------------------------------------------------------------------------------------

def _own_scratch(plan_function, *shapes_and_options):
    specs, geometry = plan_function(*shapes_and_options, conv2d_workspace.WORKSPACE_BYTES)
    return carve(None, specs), geometry


def _forward(x, weight, bias, out, relu, scratch, geometry):
    """The forward on contiguous operands; weight is scratch["weight"] already filled for float32."""
    if bias is None:
        bias = scratch["zero_bias"]
        bias[...] = 0.0
    if out.dtype == np.float32:
        _forward_bands_tiled(x, weight, bias, out, scratch["frames"], scratch["accs"], geometry, relu)
    else:
        _forward_bands(x, weight, bias, out, scratch["frames"], scratch["accs"], geometry, relu)
    return out


def conv2d_forward_small(x, weight, bias, out, padding=(0, 0), dilation=(1, 1), relu=False, scratch=None,
                         geometry=None):
    """out (N, H_out, W_out, C_out) = conv(x, weight) + bias with stride 1, groups 1, on contiguous operands;
    clamped at 0 when relu (NaN kept), as the accumulators are stored. scratch and geometry: from the specs and
    details of forward_plan (conv2d.py carves them from its workspace), or None for a fresh workspace."""
    if scratch is None:
        scratch, geometry = _own_scratch(forward_plan, out.dtype, x.shape, weight.shape, out.shape, padding,
                                         dilation)
    if "weight_rows" in scratch:
        kernel_h, kernel_w, channels_in, channels_out = weight.shape
        rows = scratch["weight_rows"]
        rows[...] = 0.0
        rows[:, :, :channels_out] = weight.reshape(kernel_h, kernel_w * channels_in, channels_out)
        if bias is None:
            bias = scratch["zero_bias"]
            bias[...] = 0.0
        _forward_channels(x, rows, bias, out, scratch["frames"], geometry, relu)
        return out
    if out.dtype == np.float32:
        weight_t = scratch["weight"]
        weight_t[...] = weight.transpose(2, 0, 1, 3)
        weight = weight_t
    return _forward(x, weight, bias, out, relu, scratch, geometry)


def conv2d_backward_input_small(grad_out, weight, out, padding=(0, 0), dilation=(1, 1), scratch=None, geometry=None):
    """out (N, H, W, C_in) = the input gradient of conv2d_forward_small: a forward convolution of grad_out with
    the kernel flipped and its channel axes swapped, padded by the dilated extent minus the forward padding
    (negative where the forward padding exceeds it: the frame then starts inside grad_out)."""
    if scratch is None:
        scratch, geometry = _own_scratch(backward_input_plan, out.dtype, out.shape, weight.shape, grad_out.shape,
                                         padding, dilation)
    if "weight_rows" in scratch:
        kernel_h, kernel_w, channels_in, channels_out = weight.shape
        rows = scratch["weight_rows"]
        rows[...] = 0.0
        rows[:, :, :kernel_w * channels_in] = weight.transpose(3, 0, 1, 2).reshape(channels_out, kernel_h, -1)
        _backward_input_scatter(grad_out, rows, out, scratch["frames"], geometry)
        return out
    flipped = scratch["weight"]
    # (C_out, kH, kW, C_in) for the float32 kernel, (kH, kW, C_out, C_in) for the other
    flipped[...] = weight[::-1, ::-1].transpose((3, 0, 1, 2) if out.dtype == np.float32 else (0, 1, 3, 2))
    return _forward(grad_out, flipped, None, out, False, scratch, geometry)


def conv2d_backward_weight_small(x, grad_out, out, padding=(0, 0), dilation=(1, 1), scratch=None, geometry=None):
    """out (kH, kW, C_in, C_out) = the weight gradient of conv2d_forward_small, summed over the batch in chunks."""
    if scratch is None:
        scratch, geometry = _own_scratch(backward_weight_plan, out.dtype, x.shape, out.shape, grad_out.shape,
                                         padding, dilation)
    if "total" in scratch:
        total = scratch["total"]
        _backward_weight_channels(x, grad_out, scratch["partials"], scratch["frames"], geometry)
        sum_partials(scratch["partials"], total)
        out.reshape(total.shape[0], total.shape[1], -1)[...] = total[:, :, :out.shape[3]]
        return out
    partials = scratch["partials"] if "partials" in scratch else out.reshape((1, *out.shape))
    kernel = _backward_weight_tiled if out.dtype == np.float32 else _backward_weight
    kernel(x, grad_out, partials, scratch["frames"], scratch["grads"], geometry)
    if partials.shape[0] > 1:
        sum_partials(partials, out)
    return out
