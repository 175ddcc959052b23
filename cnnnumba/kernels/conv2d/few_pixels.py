"""The forward of a tiny output (a few pixels per image) over a batch of at most a few hundred output pixels (the
last stages of ResNet-18 at 64x64 input, any network's at batch 1): im2col into pixel-major rows, then the register
tiles of tiles.py over strips of output channels, a megabyte weight in a few shares of its rows, each share's
partial product summed after.

Such a layer is a product of a few rows with a weight of megabytes (ResNet-18's 512-channel 3x3: 9.4 MB for 4
output pixels at batch 1), so its time is mostly the weight's trip from memory. BLAS packs that weight before
multiplying; the tiles read it where it lies, each share's rows whole and in order, every strip of output channels
of a block of rows while that block is in cache. float32, groups 1, C_out a multiple of the tile channels
(tiles.product_tile).
"""
import numpy as np

from .._runtime import EXACT_FASTMATH, WORKERS, jit, run_shares, run_slots
from .tiles import RELU6_CODE, product_tile, run_product_tile

# A weight of at least SHARE_WEIGHT_BYTES, streamed from beyond L2, splits the reduction into REDUCTION_SHARES
# contiguous shares of its rows, each summed apart and the shares added in order after (a count that does not
# depend on the threads, so neither do the results): a share reads its weight rows whole and in order, where the
# threads splitting the strips of output channels each read a part of every row, which the prefetchers follow
# poorly (bench/README.md: 1.1-1.5x slower at batch 1). A smaller weight splits its strips only: the partial sums'
# extra pass cost more than they saved (MobileNetV2's 1x1 layers at 2x2 and 4x4).
REDUCTION_SHARES = 2
SHARE_WEIGHT_BYTES = 2 << 20
# Weight rows per block of a share: every pixel tile reuses a strip's block from cache. Products of at most
# FEW_ROWS pixel rows, where a block serves one or two tiles, take blocks of FEW_ROWS_REDUCTION_BLOCK: read strip by
# strip, a smaller block is streamed from memory sooner (1x2x2 512->512 with the weight out of cache, 128 / 64 rows:
# 0.64-0.73 / 0.44-0.53 ms on AVX-512, 0.68-0.80 / 0.45-0.49 on AVX2; from 49 rows a tie, at 196 64 rows 1.03x
# slower, bench/README.md).
REDUCTION_BLOCK = 128
FEW_ROWS = 8
FEW_ROWS_REDUCTION_BLOCK = 64


def reduction_block(pixels):
    """Weight rows per block of a product of `pixels` rows."""
    return FEW_ROWS_REDUCTION_BLOCK if pixels <= FEW_ROWS else REDUCTION_BLOCK


@jit
def _gather_columns(x, geometry, first, last, rows):
    """Columns [first, last) of the im2col rows into rows[:, 0:last - first]: column (kh * kW + kw) * C + c of row
    p = (n * H_out + oh) * W_out + ow is x[n, ih, iw, c] (0 outside the image); rows past the output's pixels are
    zero. geometry: (H_out, W_out, stride h, w, padding top, left, dilation h, w, kH, kW)."""
    out_h, out_w, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, kernel_h, kernel_w = geometry
    batch, height, width, channels = x.shape
    pixels = batch * out_h * out_w
    rows[pixels:] = 0.0
    for p in range(pixels):
        n = p // (out_h * out_w)
        oh = p // out_w % out_h
        ow = p % out_w
        row = rows[p]
        column = first
        while column < last:
            tap, channel = column // channels, column % channels
            count = min(channels - channel, last - column)
            ih = oh * stride_h - pad_top + tap // kernel_w * dilation_h
            iw = ow * stride_w - pad_left + tap % kernel_w * dilation_w
            start = column - first
            if 0 <= ih < height and 0 <= iw < width:
                for c in range(count):
                    row[start + c] = x[n, ih, iw, channel + c]
            else:
                for c in range(count):
                    row[start + c] = 0.0
            column += count


@jit
def _share_slot(slot, groups, x, geometry, gather, rows, weight, bias, out, relu, kind, tile_pixels, tile_channels,
                reduction_block):
    """out[share] (P, C_out) = the im2col rows (P, K) @ weight (1, 1, K, C_out) over the share's weight rows + bias,
    clamped as the tiles store when relu is nonzero, for the group of output-channel strips this slot takes (slot =
    share * groups + group; out's leading axis counts the shares); P a multiple of tile_pixels. rows[share] holds
    the share's columns of the im2col rows, gathered here first when `gather` is nonzero (so on the thread that reads
    them). Each block of weight rows takes the group's strips in turn; later blocks add to the sums."""
    pixels, width = rows.shape[1], rows.shape[2]
    channels_out = weight.shape[3]
    reduction = weight.shape[2]
    shares = out.shape[0]
    share, group = slot // groups, slot % groups
    strips = channels_out // tile_channels
    first_strip, last_strip = group * strips // groups, (group + 1) * strips // groups
    first_row, last_row = share * reduction // shares, (share + 1) * reduction // shares
    columns = rows[share]
    if gather != 0:
        _gather_columns(x, geometry, first_row, last_row, columns)
    for r in range(first_row, last_row, reduction_block):
        block = min(reduction_block, last_row - r)
        final = relu if r + block >= last_row else 0
        for strip in range(first_strip, last_strip):
            co = strip * tile_channels
            for p in range(0, pixels, tile_pixels):
                run_product_tile(kind, out[share], p * channels_out + co, channels_out, r - first_row, final, columns,
                                 p * width + r - first_row, width, weight, r * channels_out + co, bias, co, 1, 1,
                                 width, width, reduction * channels_out, block, channels_out)


@jit(fastmath=EXACT_FASTMATH)
def _finish_share(slot, slots, partials, bias, normalize, normalized, lower, upper, out):
    """Output pixels [share of this slot) of out (P, C_out) = the partials summed in share order + bias, then
    (normalized nonzero) (value - normalize[0]) * normalize[1] + normalize[2] as norm.normalize_act_forward
    computes it, then clamped to [lower, upper] (NaN kept)."""
    pixels = out.shape[0]
    for p in range(slot * pixels // slots, (slot + 1) * pixels // slots):
        row = out[p]
        for c in range(row.shape[0]):
            total = partials[0, p, c]
            for share in range(1, partials.shape[0]):
                total += partials[share, p, c]
            total += bias[c]
            if normalized != 0:
                total = (total - normalize[0, c]) * normalize[1, c] + normalize[2, c]
            if total <= lower:
                total = lower
            elif total >= upper:
                total = upper
            row[c] = total


def reduction_shares(dtype, weight_shape):
    """How many shares of its rows the reduction runs in (SHARE_WEIGHT_BYTES)."""
    reduction = weight_shape[0] * weight_shape[1] * weight_shape[2]
    weight_bytes = reduction * weight_shape[3] * np.dtype(dtype).itemsize
    return min(REDUCTION_SHARES, reduction) if weight_bytes >= SHARE_WEIGHT_BYTES else 1


def normalizes(scratch):
    """Whether forward, with scratch carved from plan's specs, sums shares (and so applies a batch norm's
    coefficients as it sums them)."""
    sums = scratch.get("sums")
    return sums is not None and sums.shape[0] > 1


def plan(dtype, weight_shape, out_shape):
    """(specs, (kind, tile pixels, tile channels)): each share's columns of the pixel-major im2col rows, padded to
    whole tiles, a zero bias (for a layer without one, or for the tiles of shares summed after), and the shares'
    partial products, or with one share an output of whole tiles' rows where the pixels do not fill the last tile."""
    kernel_h, kernel_w, channels_in, channels_out = weight_shape
    pixels = out_shape[0] * out_shape[1] * out_shape[2]
    kind, tile_pixels, tile_channels = product_tile(pixels, channels_out)
    padded = -(-pixels // tile_pixels) * tile_pixels
    shares = reduction_shares(dtype, weight_shape)
    reduction = kernel_h * kernel_w * channels_in
    specs = (("rows", (shares, padded, -(-reduction // shares)), dtype), ("zero_bias", (channels_out,), dtype))
    if shares > 1 or padded != pixels:
        specs += (("sums", (shares, padded, channels_out), dtype),)
    return specs, (kind, tile_pixels, tile_channels)


# Output elements per share of the finishing sum (smaller shares cost more to hand out than they save).
FINISH_SHARE_ELEMENTS = 16384


def forward(x, weight, bias, out, stride, padding, dilation, relu, scratch, details, normalize=None):
    """relu: 0, 1 (ReLU) or RELU6_CODE. normalize: None, or (coefficients, lower, upper) for a forward that sums
    shares (normalizes): the batch norm and the clamp it applies as it sums them (relu then 0)."""
    kind, tile_pixels, tile_channels = details
    batch, out_h, out_w, channels_out = out.shape
    kernel_h, kernel_w = weight.shape[:2]
    geometry = (out_h, out_w, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1], kernel_h,
                kernel_w)
    rows, zero_bias = scratch["rows"], scratch["zero_bias"]
    zero_bias[...] = 0.0
    if bias is None:
        bias = zero_bias
    flat = out.reshape(-1, channels_out)
    padded_sums = scratch.get("sums")
    sums = padded_sums if padded_sums is not None else flat.reshape(1, -1, channels_out)
    shares = sums.shape[0]
    weight = weight.reshape(1, 1, -1, channels_out)
    # the strips split further only where there are more threads than shares (no sum crosses a strip); a share
    # that one slot runs whole gathers its own rows
    groups = max(1, min(channels_out // tile_channels, WORKERS // shares))
    gather_in_slots = shares > 1 and groups == 1
    if not gather_in_slots:
        reduction = weight.shape[2]
        for share in range(shares):
            _gather_columns(x, geometry, share * reduction // shares, (share + 1) * reduction // shares, rows[share])
    if shares == 1:
        if normalize is not None:
            raise ValueError("few_pixels.forward: normalize needs a forward that sums shares (normalizes)")
        run_slots(_share_slot, groups, groups, x, geometry, 0, rows, weight, bias, sums, int(relu), kind,
                  tile_pixels, tile_channels, reduction_block(flat.shape[0]))
        if padded_sums is not None:
            flat[...] = padded_sums[0, :flat.shape[0]]
        return out
    run_slots(_share_slot, shares * groups, groups, x, geometry, int(gather_in_slots), rows, weight, zero_bias, sums,
              0, kind, tile_pixels, tile_channels, reduction_block(flat.shape[0]))
    if normalize is None:
        inf = out.dtype.type(np.inf)
        lower, upper = (out.dtype.type(0.0) if relu else -inf), (out.dtype.type(6.0) if relu == RELU6_CODE else inf)
        coefficients = zero_bias.reshape(1, -1)  # not read
    else:
        coefficients, lower, upper = normalize
    run_shares(_finish_share, flat.size // FINISH_SHARE_ELEMENTS, sums, bias, coefficients, int(normalize is not None),
               lower, upper, flat)
    return out
