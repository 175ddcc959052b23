"""1x1 convolutions on the register tiles of tiles.py, reading and writing the NHWC rows where they lie (float32,
groups 1, no padding): no strip is padded, since a 1x1 window never leaves the image."""
import numpy as np

from .._runtime import jit, run_shares
from . import direct
from .direct import PIXELS_PER_BLOCK, _reduction_chunks, aligned_into
from .tiles import SHORT, SHORT_TILE_PIXELS, forward_row_cover, run_row_tile, run_weight_tiles
from .workspace import chunk_bounds, spec_bytes, sum_partials


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
    runs in blocks of reduction_block input channels (direct.REDUCTION_BLOCK, a parameter so tests can shrink it)."""
    _, _, reduction, channels_out = weight.shape
    kernel_h, kernel_w = weight.shape[0], weight.shape[1]
    weight_tap_step = reduction * channels_out
    overwrite = np.int64(0)  # not a literal 0: that would compile a second run_row_tile signature
    kind, tile_pixels, tile_channels, main, whole = forward_row_cover(channels_out, pixels)
    for co_block in range(0, channels_out, tile_channels):
        co = min(co_block, channels_out - tile_channels)
        # as in _forward_rows_jobs: later reduction blocks add to the sums in out, only the last may clamp, and
        # an overlapping last tile recomputes its whole reduction
        for r in range(0, reduction, reduction_block):
            block = min(reduction_block, reduction - r)
            final = relu if r + block >= reduction else 0
            for p in range(0, main, tile_pixels):
                run_row_tile(kind, out, out_row + p * out_pixel_step + co, out_pixel_step, r, final, x_rows,
                             x_row + p * x_pixel_step + r, x_pixel_step, weight, r * channels_out + co, bias, co,
                             kernel_h, kernel_w, x_pixel_step, x_pixel_step, weight_tap_step, block, channels_out)
            if main < whole:  # tiers without a short tile have none (and a step of 0)
                for p in range(main, whole, SHORT_TILE_PIXELS):
                    run_row_tile(SHORT, out, out_row + p * out_pixel_step + co, out_pixel_step, r, final, x_rows,
                                 x_row + p * x_pixel_step + r, x_pixel_step, weight, r * channels_out + co, bias, co,
                                 kernel_h, kernel_w, x_pixel_step, x_pixel_step, weight_tap_step, block, channels_out)
        if whole < pixels:
            p = pixels - tile_pixels
            run_row_tile(kind, out, out_row + p * out_pixel_step + co, out_pixel_step, overwrite, relu, x_rows,
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
    for chunk in range(slot * chunks // slots, (slot + 1) * chunks // slots):
        first, last = chunk_bounds(batch * out_h, chunks, chunk)
        partials[chunk] = 0.0
        r = first
        while r < last:
            n = r // out_h
            oh = r % out_h
            count = min(last - r, out_h - oh, block_rows)
            x_start = (n * height + oh * stride_h) * row_step
            run_weight_tiles(partials, chunk * chunk_size, x_rows, x_start, stride_w * channels_in, stride_h * row_step,
                             grad_flat, r * grad_row_step, grad_row_step, count, out_w, channels_in, channels_out)
            r += count


def _pointwise_backward_weight(x_rows, grad_flat, partials, batch, stride_h, stride_w, out_h, out_w, block_rows):
    run_shares(_pointwise_backward_weight_slot, partials.shape[0], x_rows, grad_flat, partials, batch, stride_h,
               stride_w, out_h, out_w, block_rows)


# Jobs the forward driver aims for: enough for the threads to share, few enough that a strip (the padded rows


def forward_plan(dtype, weight_shape):
    return (("zero_bias", (weight_shape[3],), dtype), ("weight", weight_shape, dtype)), None


def backward_input_plan(dtype, weight_shape):
    kernel_h, kernel_w, group_in, channels_out = weight_shape
    return (("zero_bias", (group_in,), dtype), ("weight", (kernel_h, kernel_w, channels_out, group_in), dtype)), None


def backward_weight_plan(dtype, weight_shape, out_shape, budget):
    """(specs, rows per block) of the 1x1 weight gradient: partials as _reduction_chunks wants within half the
    budget (none when one: it is out itself)."""
    batch, out_h, out_w, _ = out_shape
    wanted = min(batch * out_h, _reduction_chunks(batch * out_h * out_w))
    chunks = int(max(1, min(wanted, budget // 2 // spec_bytes(weight_shape, dtype))))
    specs = (("partials", (chunks, *weight_shape), dtype),) if chunks > 1 else ()
    return specs, max(1, PIXELS_PER_BLOCK // out_w)


def forward(x, weight, bias, out, stride, relu, scratch):
    if bias is None:
        bias = scratch["zero_bias"]
        bias[...] = 0.0
    _pointwise_forward(x.reshape(-1, x.shape[2], x.shape[3]), aligned_into(weight, scratch["weight"]), bias, out,
                       stride[0], stride[1], int(relu), direct.REDUCTION_BLOCK)


def backward_input(grad_out, weight, out, stride, scratch):
    scratch["zero_bias"][...] = 0.0
    weight_t = scratch["weight"]
    weight_t[...] = weight.transpose(0, 1, 3, 2)
    _pointwise_backward_input(grad_out.reshape(-1, grad_out.shape[2], grad_out.shape[3]), weight_t,
                              scratch["zero_bias"], out, stride[0], stride[1], direct.REDUCTION_BLOCK)


def backward_weight(x, grad_out, out, stride, scratch, block_rows):
    partials = scratch["partials"] if "partials" in scratch else out.reshape((1, *out.shape))
    _pointwise_backward_weight(x.reshape(-1, x.shape[2], x.shape[3]), grad_out.reshape(-1), partials, x.shape[0],
                               stride[0], stride[1], grad_out.shape[1], grad_out.shape[2], block_rows)
    if partials.shape[0] > 1:
        sum_partials(partials, out)
