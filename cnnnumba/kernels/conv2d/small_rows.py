"""The few-channel kernels that read a kernel row's kW * C_in inputs as one contiguous run of a zero-padded NHWC
frame (small.py's uses_row_runs): the input gradient as a scatter of per-pixel GEMM rows, and the forward and weight
gradient vectorised over output channels."""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .._runtime import jit, run_jobs
from .._runtime.vector import (INDEX, LANES, broadcast, element_pointer, lane_mask, load_vector, masked_load,
                               masked_store, offset_pointer, store_vector, vector_fma, vector_type)
from .tiles import TILES


# ---------------------------------------------------------------------------------------------------------
# float32 input gradient as a scatter: grad_in[oh + kh·dh - pt, ow + kw - pl, ci] += sum over co of
# grad_out[oh, ow, co] · w[kh, kw, ci, co]. For one output pixel and kernel row kh the kW·C_in values it adds are
# contiguous in NHWC, so a pixel's contribution is a short GEMM row (C_out long reduction, kW·C_in wide) added
# into a zero-padded per-image frame, whose inside is then copied out. Every product computed is one the input
# gradient has (the gather form, a forward of grad_out padded by the kernel extent, also multiplies the padding's
# zeros). A tile is the same pixel of SCATTER_IMAGES images, so its
# read-modify-writes go to different frames and none waits on the one before it.
# ---------------------------------------------------------------------------------------------------------

SCATTER_IMAGES = TILES["row_images"]


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
# W_out + kW - 1 positions per row), and the accumulators are NHWC already. A tile
# is the same pixel of SCATTER_IMAGES images (one weight load per SCATTER_IMAGES FMAs).
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

WEIGHT_ROWS_PER_TILE = TILES["row_weight_rows"]


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
