"""Direct stride-1 convolution for few-channel layers (such as LeNet-5's 1→6 and 6→16), vectorised over pixels.

The register-tiled kernels of conv2d.py vectorise over output channels and need 16 or more of them; with 6
channels nothing vectorises that way, and im2col + GEMM spends its time building columns for tiny, skinny
products. Here each job (a band of output rows of one image) first copies the input rows its windows read
into a zero-padded, channel-planar frame `frame[c, r, j]` of width Wp = W_out + dilation·(kW - 1). With stride
1, output pixel (r, ow) and tap (kh, kw) read frame element (r + kh·dh)·Wp + ow + kw·dw, so every tap is one
contiguous run over the flattened band: `acc[co, p] += frame_flat[c, p + offset] * w` for p over rows·Wp
positions (the Wp - W_out positions past each row's end are computed and dropped). Those long unit-stride loops
are what LLVM vectorises; the accumulators of all C_out channels of a band stay in L1.

Layouts and conventions are those of conv2d.py: NHWC activations, (kH, kW, C_in, C_out) weights, (top, left)
padding (bottom/right implied by the output size), `out` written whole and returned. The caller (conv2d.py)
validates shapes; any padding works (negative padding too: the frame then starts inside the input), any
dilation, float32 and float64. The weight gradient reduces over the batch into per-chunk partial buffers whose
count depends only on the shape, summed in a fixed order, so results are bit-identical whatever the thread
count.
"""
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._jit import jit, parallel_jit

# Forward jobs wanted per call: whole images when the batch gives this many, else bands of rows.
JOBS_WANTED = 16
# Weight-gradient partial buffers: at most this many, each summing whole images.
MAX_WEIGHT_CHUNKS = 16
# Bytes of frame and accumulators one job keeps (forward band, weight-gradient block of images): small enough
# for L2, and a bound on scratch that does not grow with the image size or the batch.
JOB_BYTES = 256 << 10


# ---------------------------------------------------------------------------------------------------------
# float32 forward tile, spelled out in LLVM IR so its accumulators stay in vector registers (plain loops keep
# them in memory: one load and one store per FMA, 10-18 GFLOP/s on one thread). A tile is `outputs` output
# channels x 32 flattened pixels: per tap two <16 x float> frame loads and `outputs` broadcast weights feed
# 2 * outputs FMAs.
# ---------------------------------------------------------------------------------------------------------

LANES = 16
TILE_VECTORS = 2
TILE_PIXELS = TILE_VECTORS * LANES
_INDEX = ir.IntType(64)


def _vector_type():
    return ir.VectorType(ir.FloatType(), LANES)


def _broadcast(builder, scalar):
    vector = _vector_type()
    single = builder.insert_element(ir.Constant(vector, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(single, ir.Constant(vector, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES))


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
            vector = _vector_type()
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
                start = _broadcast(builder, builder.load(builder.gep(bias_pointer, [ir.Constant(_INDEX, c)])))
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
                        pixels = [builder.load(builder.bitcast(builder.gep(frame_tap, [ir.Constant(_INDEX, v * LANES)]),
                                                               vector.as_pointer()), align=4)
                                  for v in range(TILE_VECTORS)]
                        for c in range(outputs):
                            w = _broadcast(builder, builder.load(builder.gep(weight_tap, [ir.Constant(_INDEX, c)])))
                            for v in range(TILE_VECTORS):
                                slot = slots[c * TILE_VECTORS + v]
                                builder.store(builder.call(fma, [w, pixels[v], builder.load(slot)]), slot)
            for c in range(outputs):
                acc_row = builder.gep(acc_pointer, [builder.mul(acc_row_step, ir.Constant(_INDEX, c))])
                for v in range(TILE_VECTORS):
                    target = builder.bitcast(builder.gep(acc_row, [ir.Constant(_INDEX, v * LANES)]), vector.as_pointer())
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
            vector = _vector_type()
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector, [vector] * 3),
                                                 "llvm.fma.v16f32")

            def pointer(position, value, offset):
                data = context.make_array(sig.args[position])(context, builder, value).data
                return builder.gep(data, [offset])

            partial_pointer = pointer(0, partial_value, partial_offset)
            frame_pointer = pointer(3, frame_value, frame_offset)
            grad_pointer = pointer(6, grad_value, grad_offset)
            frame_rows = [builder.gep(frame_pointer, [builder.mul(tap_step, ir.Constant(_INDEX, k))])
                          for k in range(taps)]
            grad_rows = [builder.gep(grad_pointer, [builder.mul(grad_row_step, ir.Constant(_INDEX, c))])
                         for c in range(outputs)]
            slots = []
            for _ in range(taps * outputs):
                slot = cgutils.alloca_once(builder, vector)
                builder.store(ir.Constant(vector, [0.0] * LANES), slot)
                slots.append(slot)
            with cgutils.for_range(builder, vectors) as step:
                offset = builder.mul(step.index, ir.Constant(_INDEX, LANES))

                def load(row):
                    return builder.load(builder.bitcast(builder.gep(row, [offset]), vector.as_pointer()), align=4)

                frames = [load(row) for row in frame_rows]
                grads = [load(row) for row in grad_rows]
                for k in range(taps):
                    for c in range(outputs):
                        slot = slots[k * outputs + c]
                        builder.store(builder.call(fma, [frames[k], grads[c], builder.load(slot)]), slot)
            for k in range(taps):
                tap_row = builder.gep(partial_pointer, [builder.mul(partial_tap_step, ir.Constant(_INDEX, k))])
                for c in range(outputs):
                    total = builder.load(slots[k * outputs + c])
                    lanes = [builder.extract_element(total, ir.Constant(ir.IntType(32), i)) for i in range(LANES)]
                    while len(lanes) > 1:  # pairwise, in a fixed order
                        lanes = [builder.fadd(lanes[i], lanes[i + 1]) for i in range(0, len(lanes), 2)]
                    target = builder.gep(tap_row, [ir.Constant(_INDEX, c)])
                    builder.store(builder.fadd(builder.load(target), lanes[0]), target)
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


@parallel_jit
def _backward_weight_images_tiled(x, grad_out, partials, pad_top, pad_left, dilation_h, dilation_w, block_images):
    """float32 _backward_weight_images with register tiles. The images of a chunk go in blocks of block_images,
    laid end to end in each frame plane, and grad_out the same way with zeros wherever no output pixel is (past
    each row, below each image), so every dot product runs over a whole block in 16-pixel vectors."""
    batch, _, _, channels_in = x.shape
    chunks, kernel_h, kernel_w, _, channels_out = partials.shape
    out_h, out_w = grad_out.shape[1], grad_out.shape[2]
    frame_w = out_w + dilation_w * (kernel_w - 1)
    frame_h = out_h + dilation_h * (kernel_h - 1)
    for chunk in prange(chunks):
        first, last = chunk * batch // chunks, (chunk + 1) * batch // chunks
        partial = partials[chunk]
        partial[...] = 0.0
        frames = np.empty((channels_in, block_images, frame_h, frame_w), x.dtype)
        grads = np.zeros((channels_out, block_images * frame_h * frame_w), x.dtype)
        for block in range(first, last, block_images):
            _backward_weight_block(x, grad_out, block, min(block_images, last - block), pad_top, pad_left,
                                   dilation_h, dilation_w, frames, grads, partial)


@jit
def _backward_weight_block(x, grad_out, first, images, pad_top, pad_left, dilation_h, dilation_w, frames, grads,
                           partial):
    """Adds to partial the weight gradient of the images first .. first + images - 1 (images <= the block)."""
    channels_in, block_images, frame_h, frame_w = frames.shape
    kernel_h, kernel_w, _, channels_out = partial.shape
    out_h, out_w = grad_out.shape[1], grad_out.shape[2]
    plane = frame_h * frame_w
    span = block_images * plane
    tap_step = channels_in * channels_out  # between kw taps in a partial (kH, kW, C_in, C_out)
    length = (images - 1) * plane + (out_h - 1) * frame_w + out_w
    vectors = length // LANES
    flat_partial = partial.reshape(-1)
    flat_frames = frames.reshape(-1)
    flat_grads = grads.reshape(-1)
    for i in range(images):
        n = first + i
        _fill_frame(x, n, -pad_top, pad_left, frames[:, i])
        for oh in range(out_h):
            grad_row = grad_out[n, oh]
            for ow in range(out_w):
                for co in range(channels_out):
                    grads[co, i * plane + oh * frame_w + ow] = grad_row[ow, co]
    for ci in range(channels_in):
        for kh in range(kernel_h):
            row_offset = ci * span + kh * dilation_h * frame_w
            kw = 0
            while kw < kernel_w:
                four = kw + 4 <= kernel_w
                _run_weight_tiles(flat_partial, (kh * kernel_w + kw) * tap_step + ci * channels_out, tap_step,
                                  flat_frames, row_offset + kw * dilation_w, dilation_w, flat_grads, span, vectors,
                                  four, channels_out)
                kw += 4 if four else 1
            for kw in range(kernel_w):
                source = flat_frames[row_offset + kw * dilation_w:]
                for co in range(channels_out):
                    g = grads[co]
                    total = partial[kh, kw, ci, co]
                    for p in range(vectors * LANES, length):
                        total += source[p] * g[p]
                    partial[kh, kw, ci, co] = total


@parallel_jit
def _forward_bands_tiled(x, weight_t, bias, out, pad_top, pad_left, dilation_h, dilation_w, band_rows, relu):
    """float32 _forward_bands with register tiles; weight_t is (C_in, kH, kW, C_out), contiguous."""
    batch, _, _, channels_in = x.shape
    _, kernel_h, kernel_w, channels_out = weight_t.shape
    out_h, out_w = out.shape[1], out.shape[2]
    frame_w = out_w + dilation_w * (kernel_w - 1)
    bands = (out_h + band_rows - 1) // band_rows
    for job in prange(batch * bands):
        n = job // bands
        first_oh = (job % bands) * band_rows
        rows = min(band_rows, out_h - first_oh)
        frame_h = rows + dilation_h * (kernel_h - 1)
        plane = frame_h * frame_w
        length = (rows - 1) * frame_w + out_w
        padded = max(length, TILE_PIXELS)
        # the frame's planes, then TILE_PIXELS zeros that a tile reading past the last plane (only for a band
        # shorter than one tile) finds there
        storage = np.empty(channels_in * plane + TILE_PIXELS, x.dtype)
        storage[channels_in * plane:] = 0.0
        frame = storage[:channels_in * plane].reshape(channels_in, frame_h, frame_w)
        _fill_frame(x, n, first_oh - pad_top, pad_left, frame)
        acc = np.empty((channels_out, padded), out.dtype)
        # tiles every 32 pixels; the last one shifted back to end at the band's end (it recomputes identical
        # values where it overlaps its neighbour) instead of remainder code
        for start in range(0, padded, TILE_PIXELS):
            p0 = min(start, padded - TILE_PIXELS)
            _run_pixel_tiles(acc, padded, storage, weight_t, bias, p0, channels_in, plane, kernel_h,
                             dilation_h * frame_w, kernel_w, dilation_w, channels_out)
        _store_rows(acc, out, n, first_oh, rows, frame_w, relu)


@jit
def _store_rows(acc, out, n, first_oh, rows, frame_w, relu):
    """out[n, first_oh + r, ow, co] = acc[co, r * frame_w + ow], clamped at 0 when relu (NaN kept, as in
    torch.relu): the band's accumulators back to NHWC, dropping the positions past each row."""
    out_w, channels_out = out.shape[2], out.shape[3]
    for r in range(rows):
        result = out[n, first_oh + r]
        for ow in range(out_w):
            for co in range(channels_out):
                value = acc[co, r * frame_w + ow]
                result[ow, co] = 0.0 if relu and value < 0 else value


@jit
def _fill_frame(x, n, first_ih, pad_left, frame):
    """frame[c, r, j] = x[n, first_ih + r, j - pad_left, c], or 0 where that lies outside x."""
    _, height, width, channels = x.shape
    frame_h, frame_w = frame.shape[1], frame.shape[2]
    first = min(max(0, pad_left), frame_w)
    last = max(first, min(frame_w, width + pad_left))
    for r in range(frame_h):
        ih = first_ih + r
        if ih < 0 or ih >= height:
            frame[:, r, :] = 0.0
            continue
        frame[:, r, :first] = 0.0
        frame[:, r, last:] = 0.0
        for j in range(first, last):
            pixel = x[n, ih, j - pad_left]
            for c in range(channels):
                frame[c, r, j] = pixel[c]


@parallel_jit
def _forward_bands(x, weight, bias, out, pad_top, pad_left, dilation_h, dilation_w, band_rows, relu):
    batch, _, _, channels_in = x.shape
    kernel_h, kernel_w, _, channels_out = weight.shape
    out_h, out_w = out.shape[1], out.shape[2]
    frame_w = out_w + dilation_w * (kernel_w - 1)
    bands = (out_h + band_rows - 1) // band_rows
    for job in prange(batch * bands):
        n = job // bands
        first_oh = (job % bands) * band_rows
        rows = min(band_rows, out_h - first_oh)
        frame = np.empty((channels_in, rows + dilation_h * (kernel_h - 1), frame_w), x.dtype)
        _fill_frame(x, n, first_oh - pad_top, pad_left, frame)
        flat = frame.reshape(channels_in, -1)
        length = (rows - 1) * frame_w + out_w
        acc = np.empty((channels_out, length), out.dtype)
        for co in range(channels_out):
            acc[co, :] = bias[co]
        for ci in range(channels_in):
            for kh in range(kernel_h):
                for kw in range(kernel_w):
                    source = flat[ci, kh * dilation_h * frame_w + kw * dilation_w:]
                    for co in range(channels_out):
                        w = weight[kh, kw, ci, co]
                        target = acc[co]
                        for p in range(length):
                            target[p] += source[p] * w
        _store_rows(acc, out, n, first_oh, rows, frame_w, relu)


@parallel_jit
def _backward_weight_images(x, grad_out, partials, pad_top, pad_left, dilation_h, dilation_w):
    batch, _, _, channels_in = x.shape
    chunks, kernel_h, kernel_w, _, channels_out = partials.shape
    out_h, out_w = grad_out.shape[1], grad_out.shape[2]
    frame_w = out_w + dilation_w * (kernel_w - 1)
    length = (out_h - 1) * frame_w + out_w
    for chunk in prange(chunks):
        partial = partials[chunk]
        partial[...] = 0.0
        frame = np.empty((channels_in, out_h + dilation_h * (kernel_h - 1), frame_w), x.dtype)
        flat = frame.reshape(channels_in, -1)
        # grad_out laid out like the forward's accumulators, zero at the dropped positions past each row
        grad_planar = np.zeros((channels_out, out_h, frame_w), x.dtype)
        grad_flat = grad_planar.reshape(channels_out, -1)
        zero = grad_planar[0, 0, 0]  # a zero of the operands' dtype: a float64 literal would widen the sums
        for n in range(chunk * batch // chunks, (chunk + 1) * batch // chunks):
            _fill_frame(x, n, -pad_top, pad_left, frame)
            for oh in range(out_h):
                grad_row = grad_out[n, oh]
                for ow in range(out_w):
                    for co in range(channels_out):
                        grad_planar[co, oh, ow] = grad_row[ow, co]
            for ci in range(channels_in):
                for kh in range(kernel_h):
                    for kw in range(kernel_w):
                        source = flat[ci, kh * dilation_h * frame_w + kw * dilation_w:]
                        for co in range(channels_out):
                            g = grad_flat[co]
                            total = zero
                            for p in range(length):
                                total += source[p] * g[p]
                            partial[kh, kw, ci, co] += total


@jit
def _sum_partials(partials, out):
    """Fixed-order sum over the leading (chunk) axis, so the result does not depend on the thread count."""
    flat_out = out.reshape(-1)
    flat = partials.reshape(partials.shape[0], -1)
    flat_out[:] = flat[0]
    for c in range(1, flat.shape[0]):
        for i in range(flat.shape[1]):
            flat_out[i] += flat[c, i]


def band_rows(batch, out_h, row_bytes):
    """Output rows per forward job: whole images when the batch alone makes enough jobs, else bands; at most
    JOB_BYTES of frame and accumulator rows (row_bytes each)."""
    rows = out_h if batch >= JOBS_WANTED else -(-out_h * batch // JOBS_WANTED)
    return max(1, min(rows, JOB_BYTES // row_bytes))


def block_images(image_bytes):
    """Images per weight-gradient block: as many as JOB_BYTES of frames and grad_out planes hold, at least 1."""
    return max(1, JOB_BYTES // image_bytes)


def weight_chunks(batch):
    """How many partial weight gradients a backward-weight call sums: a function of the shape only."""
    return min(batch, MAX_WEIGHT_CHUNKS)


def conv2d_forward_small(x, weight, bias, out, padding=(0, 0), dilation=(1, 1), relu=False):
    """out (N, H_out, W_out, C_out) = conv(x, weight) + bias with stride 1, groups 1, on contiguous operands;
    clamped at 0 when relu (NaN kept), as the accumulators are stored."""
    if bias is None:
        bias = np.zeros(weight.shape[3], out.dtype)
    frame_w = out.shape[2] + dilation[1] * (weight.shape[1] - 1)
    rows = band_rows(out.shape[0], out.shape[1], (weight.shape[2] + weight.shape[3]) * frame_w * out.itemsize)
    if out.dtype == np.float32:
        weight_t = np.ascontiguousarray(weight.transpose(2, 0, 1, 3))
        _forward_bands_tiled(x, weight_t, bias, out, padding[0], padding[1], dilation[0], dilation[1], rows, relu)
    else:
        _forward_bands(x, weight, bias, out, padding[0], padding[1], dilation[0], dilation[1], rows, relu)
    return out


def conv2d_backward_input_small(grad_out, weight, out, padding=(0, 0), dilation=(1, 1)):
    """out (N, H, W, C_in) = the input gradient of conv2d_forward_small: a forward convolution of grad_out with
    the kernel flipped and its channel axes swapped, padded by the dilated extent minus the forward padding
    (negative where the forward padding exceeds it: the frame then starts inside grad_out)."""
    kernel_h, kernel_w = weight.shape[:2]
    flipped = np.ascontiguousarray(weight[::-1, ::-1].transpose(0, 1, 3, 2))
    pad = (dilation[0] * (kernel_h - 1) - padding[0], dilation[1] * (kernel_w - 1) - padding[1])
    return conv2d_forward_small(grad_out, flipped, None, out, pad, dilation)


def conv2d_backward_weight_small(x, grad_out, out, padding=(0, 0), dilation=(1, 1)):
    """out (kH, kW, C_in, C_out) = the weight gradient of conv2d_forward_small, summed over the batch in chunks."""
    partials = np.empty((weight_chunks(x.shape[0]), *out.shape), out.dtype)
    if out.dtype == np.float32:
        kernel_h, kernel_w, channels_in, channels_out = out.shape
        plane = ((grad_out.shape[1] + dilation[0] * (kernel_h - 1)) * (grad_out.shape[2] + dilation[1] * (kernel_w - 1)))
        _backward_weight_images_tiled(x, grad_out, partials, padding[0], padding[1], dilation[0], dilation[1],
                                      block_images((channels_in + channels_out) * plane * out.itemsize))
    else:
        _backward_weight_images(x, grad_out, partials, padding[0], padding[1], dilation[0], dilation[1])
    _sum_partials(partials, out)
    return out
