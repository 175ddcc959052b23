"""The forward of a tiny output (a few pixels per image) over a batch of at most a few hundred output pixels (the
last stages of ResNet-18 at 64x64 input, any network's at batch 1): im2col into pixel-major rows, then the register
tiles of tiles.py over strips of output channels, a run of neighbouring strips per slot.

Such a layer is a product of a few rows with a weight of megabytes (ResNet-18's 512-channel 3x3: 9.4 MB for 4
output pixels at batch 1), so its time is mostly the weight's trip from memory. BLAS packs that weight before
multiplying; the tiles read each strip of it where it lies, and the strips split the work among the threads
without any sum crossing two of them (results do not depend on the thread count). float32, groups 1, C_out a
multiple of the tile channels (tiles.product_tile).
"""
from .._runtime import WORKERS, jit, run_slots
from .direct import REDUCTION_BLOCK
from .tiles import product_tile, run_product_tile

# Each thread takes about this many shares of the strips, each a run of neighbouring strips: a share streams its
# part of each weight row in order (one strip per share read 128 of every 2048 bytes, 1.2-1.4x slower on AVX2's
# 1x2x2 512->512 and 1x4x4 256->256), and a thread that finishes early can claim another (bench/README.md).
SLOTS_PER_WORKER = 2


@jit
def _gather_rows(x, out_h, out_w, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, kernel_h, kernel_w,
                 rows):
    """rows[p, (kh * kW + kw) * C + c] = x[n, ih, iw, c] (0 outside the image) for output pixel
    p = (n * H_out + oh) * W_out + ow; rows past the output's pixels are zero."""
    batch, height, width, channels = x.shape
    pixels = batch * out_h * out_w
    rows[pixels:] = 0.0
    for p in range(pixels):
        n = p // (out_h * out_w)
        oh = p // out_w % out_h
        ow = p % out_w
        for kh in range(kernel_h):
            ih = oh * stride_h - pad_top + kh * dilation_h
            for kw in range(kernel_w):
                iw = ow * stride_w - pad_left + kw * dilation_w
                start = (kh * kernel_w + kw) * channels
                if 0 <= ih < height and 0 <= iw < width:
                    for c in range(channels):
                        rows[p, start + c] = x[n, ih, iw, c]
                else:
                    for c in range(channels):
                        rows[p, start + c] = 0.0


@jit
def _strips_slot(slot, slots, rows, weight, bias, out, relu, kind, tile_pixels, tile_channels, reduction_block):
    """This slot's share of the strips of output channels (tile_channels each) of every row: out (1, 1, P, C_out) =
    rows (1, P, K) @ weight (1, 1, K, C_out) + bias, clamped at 0 when relu is nonzero; P a multiple of
    tile_pixels. The reduction runs in blocks, and each block takes the slot's strips in turn: its weight rows are
    read in order, the slot's part of each, and every pixel tile reuses a strip's block from cache; later blocks
    add to the sums in out."""
    pixels, reduction = rows.shape[1], rows.shape[2]
    channels_out = weight.shape[3]
    strips = channels_out // tile_channels
    first, last = slot * strips // slots, (slot + 1) * strips // slots
    for r in range(0, reduction, reduction_block):
        block = min(reduction_block, reduction - r)
        final = relu if r + block >= reduction else 0
        for strip in range(first, last):
            co = strip * tile_channels
            for p in range(0, pixels, tile_pixels):
                run_product_tile(kind, out, p * channels_out + co, channels_out, r, final, rows, p * reduction + r,
                                 reduction, weight, r * channels_out + co, bias, co, 1, 1, reduction, reduction,
                                 reduction * channels_out, block, channels_out)


def plan(dtype, weight_shape, out_shape):
    """(specs, (kind, tile pixels, tile channels)): pixel-major rows padded to whole tiles, an output of that many
    rows when the pixels do not fill the last tile, and a zero bias for a layer without one."""
    kernel_h, kernel_w, channels_in, channels_out = weight_shape
    pixels = out_shape[0] * out_shape[1] * out_shape[2]
    kind, tile_pixels, tile_channels = product_tile(pixels, channels_out)
    padded = -(-pixels // tile_pixels) * tile_pixels
    specs = (("rows", (1, padded, kernel_h * kernel_w * channels_in), dtype), ("zero_bias", (channels_out,), dtype))
    if padded != pixels:
        specs += (("out", (1, 1, padded, channels_out), dtype),)
    return specs, (kind, tile_pixels, tile_channels)


def forward(x, weight, bias, out, stride, padding, dilation, relu, scratch, details):
    kind, tile_pixels, tile_channels = details
    batch, out_h, out_w, channels_out = out.shape
    kernel_h, kernel_w = weight.shape[:2]
    rows = scratch["rows"]
    _gather_rows(x, out_h, out_w, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1], kernel_h,
                 kernel_w, rows[0])
    if bias is None:
        bias = scratch["zero_bias"]
        bias[...] = 0.0
    padded_out = scratch.get("out")
    product = out.reshape(1, 1, -1, channels_out) if padded_out is None else padded_out
    slots = min(channels_out // tile_channels, SLOTS_PER_WORKER * WORKERS)
    run_slots(_strips_slot, slots, slots, rows, weight.reshape(1, 1, -1, channels_out), bias, product, int(relu),
              kind, tile_pixels, tile_channels, REDUCTION_BLOCK)
    if padded_out is not None:
        out.reshape(-1, channels_out)[...] = padded_out[0, 0, :batch * out_h * out_w]
    return out
