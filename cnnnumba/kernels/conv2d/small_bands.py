"""The few-channel kernels over channel-planar frames (small.py explains the scheme): forward bands of output rows
and weight-gradient blocks of images, each job in its worker's frame and accumulators."""
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .._runtime import jit, run_jobs
from .._runtime.vector import (INDEX, LANES, element_pointer, lane_mask, masked_load, masked_store, offset_pointer,
                               vector_type)
from .pixel_tiles import PIXEL_TILE_PIXELS, run_pixel_tiles, run_pixel_weight_tiles
from .workspace import all_finite


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
    """Jobs first_job..last_job - 1 of _forward_bands_tiled (run by _runtime.jobs.run_jobs)."""
    _, _, dilation_h, dilation_w, band_rows = geometry
    channels_in = x.shape[3]
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
        padded = max((rows - 1) * frame_w + out_w, PIXEL_TILE_PIXELS)
        _fill_frame(x, n, first_oh - geometry[0], geometry[1],
                    frame[:channels_in * plane].reshape(channels_in, 1, frame_h, frame_w), first_image)
        # zeros after the last plane, which a tile reading past it (a band shorter than one tile) finds there
        for i in range(channels_in * plane, channels_in * plane + PIXEL_TILE_PIXELS):
            frame[i] = 0.0
        # tiles every 32 pixels; the last one shifted back to end at the band's end (it recomputes identical
        # values where it overlaps its neighbour) instead of remainder code
        for start in range(0, padded, PIXEL_TILE_PIXELS):
            run_pixel_tiles(acc, padded, frame, weight_t, bias, min(start, padded - PIXEL_TILE_PIXELS), channels_in,
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
    channels_in = x.shape[3]
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
                run_pixel_weight_tiles(partial, (kh * kernel_w + kw) * tap_step + ci * channels_out, tap_step, frame,
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
    """Chunks first_chunk..last_chunk - 1 of _backward_weight_tiled (run by _runtime.jobs.run_jobs)."""
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
            if all_finite(partial):
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
    """Chunks first_chunk..last_chunk - 1 of _backward_weight (run by _runtime.jobs.run_jobs)."""
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
            if all_finite(partial):
                break


def _backward_weight(x, grad_out, partials, frames, grads, geometry):
    """Weight gradient of any float dtype with plain loops (see _backward_weight_tiled)."""
    grads[...] = 0.0  # as in _backward_weight_tiled
    run_jobs(_backward_weight_chunks, partials.shape[0], frames.shape[0], x, grad_out, partials, frames, grads,
             geometry)
