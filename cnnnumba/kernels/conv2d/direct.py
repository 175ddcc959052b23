"""Register-tiled direct convolution (float32, groups 1) on NHWC activations and (kH, kW, C_in, C_out) weights,
and its 1x1 form: each job pads the input rows it reads into a strip that stays in cache while the tiles of
tiles.py run over it; the weight gradients by kernel rows and as one column matrix; the input gradient, forwards
of grad_out, is direct_input.py. Padding is (top, left), the bottom/right implied by the output size; outputs are
written whole into the caller's `out`.
"""
import numpy as np
from numba import types
from numba.extending import intrinsic

from .._runtime import jit, run_jobs
from .._runtime.jobs import bind_jobs
from .._runtime.vector import (LANES, PREFETCH_MIN_BYTES, element_pointer, lane_mask, load_vector, masked_load,
                               masked_store, prefetch_span, store_vector)
from .tiles import (KERNEL_ROW_FIRSTS, KERNEL_ROW_GROUP, KERNEL_ROW_RUN, KERNEL_ROW_TILE_LANES, SHORT,
                    SHORT_TILE_PIXELS, forward_row_cover, forward_tile, kernel_row_tile, kernel_row_tile_applies,
                    run_row_tile, run_weight_tiles, second_kernel_row_tile, weight_rows_multiple)
from .workspace import (CACHE_LINE, MAX_REDUCTION_CHUNKS, chunk_bounds, slots_within, spec_bytes, specs_bytes,
                        sum_partials)

# Reduction (kW * C_in) entries per forward pass over a strip, so that a 32-channel weight block stays in L1/L2
# while every tile of the strip uses it; narrower layers run whole (smaller blocks were no faster).
REDUCTION_BLOCK = 256
# Output pixels per backward-weight block: every tap and tile runs over a block while it is in L1.
PIXELS_PER_BLOCK = 64
# Output pixels per weight-gradient partial, at least (see _reduction_chunks).
PIXELS_PER_CHUNK = 1024


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
def _forward_rows_claimed(first_job, last_job, worker, x, weight, bias, out, strips, geometry, relu, channel_splits):
    """Jobs first_job..last_job - 1 of _bind_forward_rows (run by _runtime.jobs.bind_jobs), in worker's strip."""
    _forward_rows_jobs(first_job, last_job, x, weight, bias, out, strips[worker], geometry, relu, channel_splits)


@jit
def _forward_rows_jobs(first_job, last_job, x, weight, bias, out, strip, geometry, relu, channel_splits):
    """Jobs first_job..last_job of a register-tiled forward (see _bind_forward_rows), padding rows into strip."""
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
    overwrite = np.int64(0)  # not a literal 0: that would compile a second run_row_tile signature
    kind, tile_pixels, tile_channels, main_w, whole_w = forward_row_cover(channels_out, out_w)
    tiles = -(-channels_out // tile_channels)
    for job in range(first_job, last_job):
        band, split = job // channel_splits, job % channel_splits
        n = band // blocks
        first = (band % blocks) * rows_per_job
        last = min(first + rows_per_job, out_h)
        _fill_strip(x, n, first * stride_h - pad_top, pad_left, strip)
        # The reduction is split into blocks whose weights (kH * kW * block * 32 floats) stay in L1 while every
        # whole pixel tile of the strip uses them; later blocks add to the partial sums already in out, so only
        # the last block's store may apply the ReLU. A last tile that overlaps its neighbour (a row the tiles do
        # not cover exactly) runs the whole reduction at once after them, so the overlapped pixels are recomputed
        # rather than added twice.
        for co_block in range(split * tiles // channel_splits * tile_channels,
                              (split + 1) * tiles // channel_splits * tile_channels, tile_channels):
            co = min(co_block, channels_out - tile_channels)
            for r in range(0, reduction, reduction_block):
                block = min(reduction_block, reduction - r)
                final = relu if r + block >= reduction else 0
                for oh in range(first, last):
                    x_row = (oh - first) * x_row_step + r
                    out_row = ((n * full_h + out_first_h + oh * out_step_h) * full_w + out_first_w) * channels_out
                    for ow in range(0, main_w, tile_pixels):
                        run_row_tile(kind, out, out_row + ow * out_pixel_step + co, out_pixel_step, r, final, strip,
                                     x_row + ow * x_pixel_step, x_pixel_step, weight, r * channels_out + co, bias, co,
                                     kernel_h, kernel_w, x_tap_h_step, x_tap_w_step, weight_tap_step, block,
                                     channels_out)
                    if main_w < whole_w:  # tiers without a short tile have none (and a step of 0)
                        for ow in range(main_w, whole_w, SHORT_TILE_PIXELS):
                            run_row_tile(SHORT, out, out_row + ow * out_pixel_step + co, out_pixel_step, r, final,
                                         strip, x_row + ow * x_pixel_step, x_pixel_step, weight,
                                         r * channels_out + co, bias, co, kernel_h, kernel_w, x_tap_h_step,
                                         x_tap_w_step, weight_tap_step, block, channels_out)
            if whole_w < out_w:
                ow = out_w - tile_pixels
                for oh in range(first, last):
                    out_row = ((n * full_h + out_first_h + oh * out_step_h) * full_w + out_first_w) * channels_out
                    run_row_tile(kind, out, out_row + ow * out_pixel_step + co, out_pixel_step, overwrite, relu,
                                 strip, (oh - first) * x_row_step + ow * x_pixel_step, x_pixel_step, weight, co,
                                 bias, co, kernel_h, kernel_w, x_tap_h_step, x_tap_w_step, weight_tap_step,
                                 reduction, channels_out)


def _bind_forward_rows(x, weight, bias, out, strips, geometry, relu, channel_splits=1):
    """The launch of a register-tiled forward, bound (jobs.bind_jobs). Each job pads the input rows under rows_per_job output rows of one image into its worker's strip (no
    whole-batch padded copy: the strip stays in cache while the tiles read it), then runs the tiles. strips is
    (workers, strip_h, frame_w, C_in); the threads claim ranges of the jobs.
    The out_h x out_w output pixels land in out at rows out_first_h + out_step_h * oh and columns
    out_first_w + out_step_w * ow (steps of 1 for a plain forward; the phases of a strided backward-input
    each fill every stride-th pixel). relu clamps the stored sums at 0 (NaN kept) in the tiles' last store.
    weight is (kH, kW, R, C_out) where R is C_in, or kW' * C_in with kW = 1 when the taps of a kernel row
    are folded into the reduction (dilation 1 along the width makes them contiguous in the strip).
    geometry is (stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, rows_per_job, out_h, out_w,
    out_first_h, out_first_w, out_step_h, out_step_w, reduction_block). With channel_splits > 1 each band of rows is
    that many jobs, each running its share of the tiles of output channels (see channel_splits)."""
    rows_per_job, out_h = geometry[6], geometry[7]
    return bind_jobs(_forward_rows_claimed, x.shape[0] * -(-out_h // rows_per_job) * channel_splits,
                     strips.shape[0], x, weight, bias, out, strips, geometry, relu, channel_splits)


@jit
def _backward_weight_rows_chunks(first_chunk, last_chunk, worker, x, grad_out, partials, strips, grad_blocks,
                                 stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, band_rows):
    """Chunks first_chunk..last_chunk - 1 of _backward_weight_rows (run by _runtime.jobs.run_jobs), in
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
    grad_flat = grad_out.reshape(-1)
    strip = strips[worker]
    # The tiles load grad_out as 64-byte vectors: each block's rows are copied once to the worker's
    # cache-line-aligned buffer (the caller's array may start anywhere), then read by every tap and tile.
    grad_block = grad_blocks[worker]
    for chunk in range(first_chunk, last_chunk):
        first, last = chunk_bounds(rows, chunks, chunk)
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
                        run_weight_tiles(partials, tap_start, strip, x_start, x_pixel_step, x_row_step, grad_block, 0,
                                         grad_row_step, count, out_w, reduction, channels_out)
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


# Pixels a kernel-row tile sums per call: 64 (2 rows of 32) keeps a block's gradient in L1 beside the next block's
# prefetched rows; cifar-cnn's first layer ran 0.72 ms against 256's 0.81 (AVX2), 0.54 against 0.63 (AVX-512)
# (bench/README.md).
KERNEL_ROW_BLOCK_PIXELS = 64


@jit
def _kernel_row_block(partials, partial_offset, strip, x_start, grad_flat, grad_start, ahead, count, out_w,
                      stride_h, stride_w, dilation_h, kernel_h, prefetch):
    """One block of count output rows through the kernel-row tiles (tiles.kernel_row_tile_applies): group by
    group of kernel rows, each tile reads its rows of the group's (kh, kw, ci) values in place from the strip; the
    partial keeps the column matrix's (kh, kw, ci) rows. Where prefetch, a share of the next block's grad_out rows
    (from `ahead`) before each tile."""
    channels_out = partials.shape[4]
    frame_w, channels = strip.shape[1], strip.shape[2]
    grad_row_step = out_w * channels_out
    kernel_row_step = dilation_h * frame_w * channels
    groups = kernel_h * KERNEL_ROW_RUN // KERNEL_ROW_GROUP
    tiles = len(KERNEL_ROW_FIRSTS)
    share = -(-count * grad_row_step // (groups * tiles * (channels_out // KERNEL_ROW_TILE_LANES)))
    x_pixel_step, x_row_step = stride_w * channels, stride_h * frame_w * channels
    call = 0
    for group in range(groups):
        x_group = x_start + group * (KERNEL_ROW_GROUP // KERNEL_ROW_RUN) * kernel_row_step
        partial_group = partial_offset + group * KERNEL_ROW_GROUP * channels_out
        for co in range(0, channels_out, KERNEL_ROW_TILE_LANES):
            if prefetch:
                prefetch_span(grad_flat, ahead + call * share, share)
            call += 1
            kernel_row_tile(partials, partial_group + co, strip, x_group, x_pixel_step, x_row_step, kernel_row_step,
                            grad_flat, grad_start + co, grad_row_step, count, out_w, channels_out)
            if tiles > 1:
                if prefetch:
                    prefetch_span(grad_flat, ahead + call * share, share)
                call += 1
                second_kernel_row_tile(partials, partial_group + co, strip, x_group, x_pixel_step, x_row_step,
                                       kernel_row_step, grad_flat, grad_start + co, grad_row_step, count, out_w,
                                       channels_out)


@jit
def _backward_weight_columns_chunks(first_chunk, last_chunk, worker, x, grad_out, partials, strips, columns,
                                    stride_h, stride_w, pad_top, pad_left, dilation_h, kernel_h, kernel_w, band_rows,
                                    block_rows, kernel_rows, prefetch):
    """Chunks first_chunk..last_chunk - 1 of _backward_weight_columns (run by _runtime.jobs.run_jobs), in
    worker's strip and columns (none where kernel_rows: _kernel_row_block); prefetching grad_out's next block where
    prefetch."""
    batch, _, _, channels = x.shape
    chunks, _, _, reduction, channels_out = partials.shape
    frame_w = strips.shape[2]
    out_h, out_w = grad_out.shape[1], grad_out.shape[2]
    grad_row_step = out_w * channels_out
    chunk_size = reduction * channels_out
    run = kernel_w * channels  # the kW taps of a kernel row, side by side in a strip row (dilation 1 across)
    strip = strips[worker]
    column_block = columns[worker]
    # the tiles get the operand types of _backward_weight_rows_chunks's (a 3-D x, a flat grad_out), so a network
    # with both kinds of layer compiles run_weight_tiles once for them
    column_rows = column_block.reshape((1, 1, column_block.size))
    grad_flat = grad_out.reshape(-1)
    for chunk in range(first_chunk, last_chunk):
        first, last = chunk_bounds(batch * out_h, chunks, chunk)
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
                ahead = (r + b + count) * grad_row_step
                if kernel_rows:
                    _kernel_row_block(partials, chunk * chunk_size, strip, b * stride_h * frame_w * channels,
                                      grad_flat, (r + b) * grad_row_step, ahead, count, out_w, stride_h, stride_w,
                                      dilation_h, kernel_h, prefetch)
                    continue
                # the next block's grad_out rows, a pixel's worth per pixel copied: the tiles then find them in L1
                for row in range(count):
                    for ow in range(out_w):
                        if prefetch:
                            prefetch_span(grad_flat, ahead + (row * out_w + ow) * channels_out, channels_out)
                        target = (row * out_w + ow) * reduction
                        for kh in range(kernel_h):
                            source = (((b + row) * stride_h + kh * dilation_h) * frame_w + ow * stride_w) * channels
                            for i in range(0, run, LANES):
                                _copy_vector(column_block, target + kh * run + i, strip, source + i)
                # grad_out is read in place: its rows stream through once, so an aligned copy would cost more
                run_weight_tiles(partials, chunk * chunk_size, column_rows, 0, reduction, out_w * reduction, grad_flat,
                                 (r + b) * grad_row_step, grad_row_step, count, out_w, reduction, channels_out)
            r += span


def _backward_weight_columns(x, grad_out, partials, strips, columns, stride, padding, dilation_h, kernel_hw,
                             band_rows):
    """partials[chunk] = the weight gradient of the chunk's share of the (image, output row) range as one
    (1, 1, R, C_out) matrix, R >= kH * kW * C_in rounded up to a whole tile: for layers with few input channels
    (a network's first), where folding only the kW taps (_backward_weight_rows) pads each kernel row's reduction
    to a whole tile. A chunk pads the input rows under at most band_rows output rows of one image into its strip
    (workers, strip_h, frame_w, C_in), then, a block of about PIXELS_PER_BLOCK output pixels at a time, copies the
    kH * kW * C_in values under each pixel side by side into its columns (workers, block pixels * R) and runs
    every tile over the block; where the tier's kernel-row tile applies (columns None), the tiles read the strip
    in place instead (_kernel_row_block), with the same sums. Dilation 1 along the width. Each
    entry sums its pixels in (image, row, column) order, so the result depends on the chunks only."""
    prefetch = grad_out.nbytes >= PREFETCH_MIN_BYTES
    kernel_rows = columns is None  # the tier's kernel-row tile applies (the plan made no columns)
    out_w = grad_out.shape[2]
    if kernel_rows:
        columns = np.empty((strips.shape[0], 0), strips.dtype)
        block_rows = max(1, KERNEL_ROW_BLOCK_PIXELS // out_w)
    else:
        # Whole vectors are copied: each overwrites up to 15 floats past its run, which the next run or pixel then
        # writes (or which are the padding rows past kH * kW * C_in, whose products land in dropped rows); the
        # last ones reach into LANES floats of slack at the end of the columns and into the strips' spare rows,
        # zeroed here once for every range of chunks.
        row_size = strips.shape[2] * strips.shape[3]
        columns[...] = 0.0
        strips[:, strips.shape[1] - (LANES + row_size - 1) // row_size:] = 0.0
        block_rows = (columns.shape[1] - LANES) // (out_w * partials.shape[3])
    run_jobs(_backward_weight_columns_chunks, partials.shape[0], strips.shape[0], x, grad_out, partials, strips,
             columns, stride[0], stride[1], padding[0], padding[1], dilation_h, kernel_hw[0], kernel_hw[1], band_rows,
             block_rows, kernel_rows, prefetch)


# Forward jobs wanted per call, so that the threads share them evenly; each job's strip (the padded input rows
# one job reads) is reused by many tiles. Strips larger than STRIP_BYTES are split so they stay in L2.
JOBS_WANTED = 16
STRIP_BYTES = 512 << 10


def _rows_per_job(batch, out_h, stride_h, frame_row_bytes, whole_images=False):
    """Output rows per forward job: whole images when the batch alone makes enough jobs (or whole_images), else
    bands of rows."""
    rows = out_h if batch >= JOBS_WANTED or whole_images else -(-out_h * batch // JOBS_WANTED)
    return max(1, min(rows, STRIP_BYTES // max(1, stride_h * frame_row_bytes)))


def _forward_geometry(x_shape, weight_shape, out_hw, stride, padding, dilation, itemsize, channel_splits=1):
    """(frame_w, output rows per job, strip rows, jobs) of a register-tiled forward: weight_shape unfolded. Split
    channels (channel_splits) run whole images."""
    kernel_h, kernel_w = weight_shape[:2]
    frame_w = max(padding[1] + x_shape[2], (out_hw[1] - 1) * stride[1] + dilation[1] * (kernel_w - 1) + 1)
    rows = _rows_per_job(x_shape[0], out_hw[0], stride[0], frame_w * x_shape[3] * itemsize, channel_splits > 1)
    strip_h = (rows - 1) * stride[0] + dilation[0] * (kernel_h - 1) + 1
    return frame_w, rows, strip_h, x_shape[0] * -(-out_hw[0] // rows) * channel_splits


# A forward at a batch too small for whole images per job (JOBS_WANTED) runs bands of rows, each re-reading the
# whole weight; past this many bytes (more than L2 keeps beside the strip) the jobs split the output channels
# instead, each running whole images for its share of the weight, so the weight is read about once.
SPLIT_CHANNELS_WEIGHT_BYTES = 1 << 20


def channel_splits(batch, weight_shape, itemsize):
    """How many shares of the output channels' tiles the forward jobs split (1: none): the fewest that divide the
    tiles evenly with at most SPLIT_CHANNELS_WEIGHT_BYTES of weight each, at a batch under JOBS_WANTED."""
    channels_out = weight_shape[3]
    _, _, tile_channels = forward_tile(channels_out)
    weight_bytes = int(np.prod(weight_shape)) * itemsize
    if batch >= JOBS_WANTED or channels_out % tile_channels or weight_bytes <= SPLIT_CHANNELS_WEIGHT_BYTES:
        return 1
    tiles = channels_out // tile_channels
    wanted = min(tiles, -(-weight_bytes // SPLIT_CHANNELS_WEIGHT_BYTES))
    return min(d for d in range(wanted, tiles + 1) if tiles % d == 0)


def _bind_forward_fast(x, weight, bias, out, stride, padding, dilation, strips, slots, geometry, splits=1,
                       region=None, relu=0):
    """The register-tiled forward on contiguous float32 operands, its launch bound; with dilation 1 along the width the kW taps of
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
    return _bind_forward_rows(x, weight, bias, out, strips, (stride[0], stride[1], padding[0], padding[1],
                              dilation[0], dilation[1], rows, out_h, out_w, first_h, first_w, step_h, step_w,
                              REDUCTION_BLOCK), relu, splits)


def _reduction_chunks(pixels):
    """How many partial weight gradients a backward-weight call sums: a function of the shape only (so the
    result is bit-identical for any thread count), even (so two threads share them evenly), and few enough
    that each chunk's pixels outweigh zeroing and summing its partial buffer."""
    return max(2, min(MAX_REDUCTION_CHUNKS, pixels // PIXELS_PER_CHUNK) // 2 * 2)


def backward_weight(x, grad_out, out, stride, padding, dilation, scratch, details, columns=False):
    """The register-tiled weight gradient on contiguous float32 operands, into out (kH, kW, C_in, C_out): by
    kernel rows, or as one column matrix (shape (1, 1, R, C_out)) when columns (Variant.DIRECT_COLUMNS)."""
    shape, chunks, band_rows = details
    partials = scratch["partials"] if chunks > 1 or "summed" in scratch else out.reshape((1, *shape))
    if columns:
        _backward_weight_columns(x, grad_out, partials, scratch["strips"], scratch.get("columns"), stride, padding,
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
# Scratch plans: what each variant takes from its workspace (workspace.py), from the shapes and the budget
# alone, so a memory planner can size one workspace for every pass before running any.
# ---------------------------------------------------------------------------------------------------------

# Input rows a backward-weight chunk pads into its strip at a time (at least the rows under one output row).
WEIGHT_STRIP_BYTES = 2 << 20


def forward_plan(dtype, x_shape, weight_shape, out_shape, stride, padding, dilation, budget):
    """(specs, (slots, geometry, channel splits)) of the register-tiled forward."""
    specs = (("zero_bias", (weight_shape[3],), dtype),)
    if spec_bytes(weight_shape, dtype) <= budget // 4:
        specs += (("weight", weight_shape, dtype),)
    splits = channel_splits(x_shape[0], weight_shape, dtype.itemsize)
    geometry = _forward_geometry(x_shape, weight_shape, out_shape[1:3], stride, padding, dilation, dtype.itemsize,
                                 splits)
    strip = geometry[2] * geometry[0] * x_shape[3]
    slots = slots_within(spec_bytes((strip,), dtype), specs_bytes(specs), geometry[3], budget)
    return specs + (("strips", (slots * strip,), dtype),), (slots, geometry, splits)


def _folded_reduction(weight_shape, machine=None):
    """(tile input channels, kW * C_in, that padded to whole tiles) of a weight gradient with the taps folded, for
    `machine`'s tiles (default: the ones compiled here)."""
    tile_rows = weight_rows_multiple(weight_shape[3], machine)
    folded = weight_shape[1] * weight_shape[2]
    return tile_rows, folded, -(-folded // tile_rows) * tile_rows


def _padded_columns(weight_shape, machine=None):
    """Rows of the column matrix of Variant.DIRECT_COLUMNS: kH * kW * C_in, padded to whole tiles unless the
    kernel-row tile reads them (tiles.kernel_row_tile_applies)."""
    if kernel_row_tile_applies(weight_shape, 1, machine):
        return weight_shape[0] * weight_shape[1] * weight_shape[2]
    tile_rows, folded, _ = _folded_reduction(weight_shape, machine)
    return -(-(weight_shape[0] * folded) // tile_rows) * tile_rows


def weight_columns_fit(dtype, weight_shape, budget, machine=None):
    """Whether the column matrix's partial and its padded sum fit half the budget."""
    return 2 * spec_bytes((_padded_columns(weight_shape, machine), weight_shape[3]), dtype) <= budget // 2


def weight_columns_pad_less(weight_shape, machine=None):
    """Whether the column matrix pads the reduction to whole tiles less than folding each kernel row does."""
    _, _, reduction = _folded_reduction(weight_shape, machine)
    return _padded_columns(weight_shape, machine) < weight_shape[0] * reduction


def _weight_frame_w(x_shape, weight_shape, out_shape, stride, padding, dilation):
    return max(padding[1] + x_shape[2], (out_shape[2] - 1) * stride[1] + dilation[1] * (weight_shape[1] - 1) + 1)


def backward_weight_columns_plan(dtype, x_shape, weight_shape, out_shape, stride, padding, dilation, budget):
    """(specs, (shape, chunks, band_rows)) of the column-matrix weight gradient (_backward_weight_columns): R =
    the padded columns, partials and their padded sum within half the budget, then per slot a strip of the input
    rows under a band of output rows and the columns of one block of them."""
    kernel_h, _, channels_in, channels_out = weight_shape
    batch, out_h, out_w, _ = out_shape
    half = budget // 2
    reduction = _padded_columns(weight_shape)
    frame_w = _weight_frame_w(x_shape, weight_shape, out_shape, stride, padding, dilation)
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
    # the kernel-row tile reads the strip in place: no columns
    runs = kernel_row_tile_applies(weight_shape, dilation[1])
    columns = 0 if runs else max(1, PIXELS_PER_BLOCK // out_w) * out_w * reduction + LANES
    slots = slots_within(spec_bytes(strip, dtype) + spec_bytes((columns,), dtype), specs_bytes(specs), chunks, budget)
    specs += (("strips", (slots, *strip), dtype),) + ((("columns", (slots, columns), dtype),) if columns else ())
    return specs, (shape, chunks, band_rows)


def backward_weight_plan(dtype, x_shape, weight_shape, out_shape, stride, padding, dilation, budget):
    """(specs, (shape, chunks, band_rows)) of the weight gradient by kernel rows. The partial weight gradients and
    their padded sum take at most half the budget: the number of partials is the one _reduction_chunks wants, or
    as many as fit (at least one, which is then out itself) -- a function of the shape and budget only, so results
    stay bit-identical for any thread count. The strips and aligned grad_out blocks take the other half."""
    kernel_h, kernel_w, channels_in, channels_out = weight_shape
    batch, out_h, out_w, _ = out_shape
    half = budget // 2
    frame_w = _weight_frame_w(x_shape, weight_shape, out_shape, stride, padding, dilation)
    tile_rows, folded, reduction = _folded_reduction(weight_shape)
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
    slots = slots_within(spec_bytes(strip, dtype) + spec_bytes((block,), dtype), specs_bytes(specs), chunks, budget)
    specs += (("strips", (slots, *strip), dtype), ("grad_blocks", (slots, block), dtype))
    return specs, (shape, chunks, band_rows)


# ---------------------------------------------------------------------------------------------------------
# Running the variants on contiguous operands with the scratch carved from their plan.
# ---------------------------------------------------------------------------------------------------------

def _copies_to_align(array, buffer):
    """Whether aligned_into copies array into buffer: a buffer is there and array is not C-contiguous from a cache
    line."""
    return buffer is not None and not (array.flags.c_contiguous and array.ctypes.data % CACHE_LINE == 0)


def aligned_into(array, buffer):
    """array itself when it is C-contiguous and starts on a cache line, else its copy in buffer (a cache-line
    aligned workspace view of its shape, or None when the budget leaves no room: then array, misaligned). The
    tiles load weights as 64-byte vectors; from a misaligned array every such load straddles two cache lines
    (large NumPy arrays start 16 bytes past a page boundary)."""
    if not _copies_to_align(array, buffer):
        return np.ascontiguousarray(array)
    buffer[...] = array
    return buffer


def bind_forward(x, weight, bias, out, stride, padding, dilation, relu, scratch, details):
    """The register-tiled forward, its launch bound (kernels.conv2d.bind_forward): what is left to each call is
    zeroing the stand-in for an absent bias and copying a misaligned weight (aligned_into), as the scratch holding
    them is shared with other passes."""
    zero_bias, buffer = scratch["zero_bias"] if bias is None else None, scratch.get("weight")
    copy = _copies_to_align(weight, buffer)
    launch = _bind_forward_fast(x, buffer if copy else np.ascontiguousarray(weight),
                                zero_bias if bias is None else bias, out, stride, padding, dilation,
                                scratch["strips"], *details, relu=int(relu))

    def forward():
        if zero_bias is not None:
            zero_bias[...] = 0.0
        if copy:
            buffer[...] = weight
        launch()

    return forward
