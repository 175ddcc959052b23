"""Direct stride-1 convolution for few-channel layers (such as LeNet-5's 1→6 and 6→16), vectorised over pixels.

The register-tiled kernels (direct.py) vectorise over output channels and need 16 or more of them; with 6
channels nothing vectorises that way, and im2col + GEMM spends its time building columns for tiny, skinny
products. Here each job (a band of output rows of one image) first copies the input rows its windows read
into a zero-padded, channel-planar frame `frame[c, r, j]` of width Wp = W_out + dilation·(kW - 1). With stride
1, output pixel (r, ow) and tap (kh, kw) read frame element (r + kh·dh)·Wp + ow + kw·dw, so every tap is one
contiguous run over the flattened band: `acc[co, p] += frame_flat[c, p + offset] * w` for p over rows·Wp
positions (the Wp - W_out positions past each row's end are computed and dropped). Those long unit-stride loops
are what LLVM vectorises; the accumulators of all C_out channels of a band stay in L1.

float32 layers whose kernel rows read contiguous NHWC runs (width dilation 1, no negative padding; the selector's
Variant.SMALL_ROWS) have kernels that index the NHWC data directly instead (small_rows.py): the input gradient as a scatter of per-pixel GEMM rows
into padded frames, and, from CHANNEL_TILE_MIN output channels, the forward and weight gradient vectorised over
output channels. Neither computes the positions past a row's end that the planar frames carry.

Layouts and conventions are those of the package: NHWC activations, (kH, kW, C_in, C_out) weights, (top, left)
padding (bottom/right implied by the output size), `out` written whole and returned. The caller (__init__.py)
validates shapes; any padding works (negative padding too: the frame then starts inside the input), any
dilation, float32 and float64. All scratch (the transposed weight, the weight-gradient partials, each job's
frame and accumulators) comes from one workspace in the workspace.py convention: `*_plan` give the specs
from the shapes and the budget, per-job scratch exists once per slot (a thread's scratch set: the threads claim
ranges of jobs, each running them in its own slot), and the number of partial weight gradients depends on the
shape and budget only, summed in a fixed order, so results are bit-identical whatever the thread count.
"""
import numpy as np

from .._runtime.vector import LANES
from .small_bands import (_backward_weight, _backward_weight_tiled, _forward_bands, _forward_bands_tiled,
                          weight_frame_rows)
from .small_rows import SCATTER_IMAGES, _backward_input_scatter, _backward_weight_channels, _forward_channels
from .pixel_tiles import PIXEL_TILE_PIXELS
from .workspace import slots_within, spec_bytes, specs_bytes, sum_partials

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
# Scratch plans (the workspace.py convention): specs from the shapes and the budget alone.
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


def forward_rows_plan(dtype, x_shape, weight_shape, out_shape, padding, dilation, budget):
    """(scratch specs, geometry) of the forward vectorised over output channels (_forward_channels): the kernel rows
    ("weight_rows") and per slot the frames of SCATTER_IMAGES images; geometry (padding, dilation_h, kW * C_in)."""
    dtype = np.dtype(dtype)
    batch, out_h, out_w, channels_out = out_shape
    kernel_h, kernel_w, channels_in, _ = weight_shape
    lanes = kernel_w * channels_in
    specs = (("zero_bias", (channels_out,), dtype),
             ("weight_rows", (kernel_h, lanes, -(-channels_out // LANES) * LANES), dtype))
    frames = SCATTER_IMAGES * (out_h + dilation[0] * (kernel_h - 1)) * (out_w + kernel_w - 1) * channels_in
    slots = slots_within(spec_bytes((frames,), dtype), specs_bytes(specs), -(-batch // SCATTER_IMAGES), budget)
    specs += (("frames", (slots, frames), dtype),)
    return specs, (padding[0], padding[1], dilation[0], lanes)


def forward_bands_plan(dtype, x_shape, weight_shape, out_shape, padding, dilation, budget, copy_weight=False):
    """(scratch specs, geometry) of the band forward; weight_shape is (kH, kW, C_in, C_out). The float32 kernel
    reads the weight as (C_in, kH, kW, C_out) from the workspace ("weight"), the float64 one in place unless
    copy_weight (the caller then fills "weight" in (kH, kW, C_in, C_out)); geometry (padding, dilation, band
    rows)."""
    dtype = np.dtype(dtype)
    batch, out_h, out_w, channels_out = out_shape
    kernel_h, kernel_w, channels_in, _ = weight_shape
    frame_w = out_w + dilation[1] * (kernel_w - 1)
    rows = band_rows(batch, out_h, (channels_in + channels_out) * frame_w * dtype.itemsize)
    frame = channels_in * (rows + dilation[0] * (kernel_h - 1)) * frame_w + PIXEL_TILE_PIXELS
    acc = channels_out * max((rows - 1) * frame_w + out_w, PIXEL_TILE_PIXELS)
    specs = (("zero_bias", (channels_out,), dtype),)
    if dtype == np.float32:
        specs += (("weight", (channels_in, kernel_h, kernel_w, channels_out), dtype),)
    elif copy_weight:
        specs += (("weight", tuple(weight_shape), dtype),)
    slots = slots_within(spec_bytes((frame,), dtype) + spec_bytes((acc,), dtype), specs_bytes(specs),
                         batch * -(-out_h // rows), budget)
    specs += (("frames", (slots, frame), dtype), ("accs", (slots, acc), dtype))
    return specs, (padding[0], padding[1], dilation[0], dilation[1], rows)


def backward_input_rows_plan(dtype, x_shape, weight_shape, out_shape, padding, dilation, budget):
    """(scratch specs, geometry) of the input gradient as a scatter (_backward_input_scatter): the kernel rows as
    "weight_rows", per slot the frames of SCATTER_IMAGES images; out_shape is grad_out's."""
    kernel_h, kernel_w, channels_in, channels_out = weight_shape
    batch, out_h, out_w, _ = out_shape
    lanes = kernel_w * channels_in
    row_vectors = -(-lanes // LANES)
    image = (out_h + dilation[0] * (kernel_h - 1)) * (out_w + kernel_w - 1) * channels_in
    specs = (("weight_rows", (channels_out, kernel_h, row_vectors * LANES), np.dtype(dtype)),)
    frames = SCATTER_IMAGES * image
    slots = slots_within(spec_bytes((frames,), dtype), specs_bytes(specs), -(-batch // SCATTER_IMAGES), budget)
    specs += (("frames", (slots, frames), np.dtype(dtype)),)
    return specs, (padding[0], padding[1], dilation[0], row_vectors, lanes)


def backward_input_bands_plan(dtype, x_shape, weight_shape, out_shape, padding, dilation, budget):
    """forward_bands_plan's for a forward of grad_out (out_shape) into x_shape with the kernel flipped, its channel
    axes swapped, padded by the dilated extent minus the forward padding."""
    kernel_h, kernel_w, channels_in, channels_out = weight_shape
    pad = (dilation[0] * (kernel_h - 1) - padding[0], dilation[1] * (kernel_w - 1) - padding[1])
    return forward_bands_plan(dtype, out_shape, (kernel_h, kernel_w, channels_out, channels_in), x_shape, pad,
                              dilation, budget, copy_weight=True)


def backward_weight_rows_plan(dtype, x_shape, weight_shape, out_shape, padding, dilation, budget):
    """(scratch specs, geometry) of the weight gradient vectorised over output channels (_backward_weight_channels):
    per-chunk partials in the (kH, kW * C_in, 16-padded C_out) layout, their sum ("total"), one input frame per
    slot; geometry (padding, dilation_h, kW * C_in)."""
    dtype = np.dtype(dtype)
    batch, out_h, out_w, _ = out_shape
    kernel_h, kernel_w, channels_in, channels_out = weight_shape
    lanes = kernel_w * channels_in
    total = (kernel_h, lanes, -(-channels_out // LANES) * LANES)
    chunks = weight_chunks(batch, CHUNK_POSITIONS, spec_bytes(total, dtype), budget)
    specs = (("partials", (chunks, *total), dtype), ("total", total, dtype))
    frame = (out_h + dilation[0] * (kernel_h - 1)) * (out_w + kernel_w - 1) * channels_in
    slots = slots_within(spec_bytes((frame,), dtype), specs_bytes(specs), chunks, budget)
    specs += (("frames", (slots, frame), dtype),)
    return specs, (padding[0], padding[1], dilation[0], lanes)


def backward_weight_bands_plan(dtype, x_shape, weight_shape, out_shape, padding, dilation, budget):
    """(scratch specs, geometry) of the band weight gradient: the partials (none when one chunk: it is the output),
    then per slot the frames and grad_out planes of one block of images; geometry (padding, dilation, images per
    block)."""
    dtype = np.dtype(dtype)
    batch, out_h, out_w, _ = out_shape
    kernel_h, kernel_w, channels_in, channels_out = weight_shape
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
# Entry points, called by the package's dispatch with the scratch carved from the plan's specs.
# ---------------------------------------------------------------------------------------------------------

def forward_rows(x, weight, bias, out, relu, scratch, geometry):
    kernel_h, kernel_w, channels_in, channels_out = weight.shape
    rows = scratch["weight_rows"]
    rows[...] = 0.0
    rows[:, :, :channels_out] = weight.reshape(kernel_h, kernel_w * channels_in, channels_out)
    if bias is None:
        bias = scratch["zero_bias"]
        bias[...] = 0.0
    _forward_channels(x, rows, bias, out, scratch["frames"], geometry, relu)
    return out


def _forward_bands_of(x, weight, bias, out, relu, scratch, geometry):
    """The band forward on contiguous operands; weight is scratch["weight"] already filled for float32."""
    if bias is None:
        bias = scratch["zero_bias"]
        bias[...] = 0.0
    if out.dtype == np.float32:
        _forward_bands_tiled(x, weight, bias, out, scratch["frames"], scratch["accs"], geometry, relu)
    else:
        _forward_bands(x, weight, bias, out, scratch["frames"], scratch["accs"], geometry, relu)
    return out


def forward_bands(x, weight, bias, out, relu, scratch, geometry):
    """out (N, H_out, W_out, C_out) = conv(x, weight) + bias with stride 1, groups 1, on contiguous operands;
    clamped at 0 when relu (NaN kept), as the accumulators are stored."""
    if out.dtype == np.float32:
        weight_t = scratch["weight"]
        weight_t[...] = weight.transpose(2, 0, 1, 3)
        weight = weight_t
    return _forward_bands_of(x, weight, bias, out, relu, scratch, geometry)


def backward_input_rows(grad_out, weight, out, scratch, geometry):
    kernel_h, kernel_w, channels_in, channels_out = weight.shape
    rows = scratch["weight_rows"]
    rows[...] = 0.0
    rows[:, :, :kernel_w * channels_in] = weight.transpose(3, 0, 1, 2).reshape(channels_out, kernel_h, -1)
    _backward_input_scatter(grad_out, rows, out, scratch["frames"], geometry)
    return out


def backward_input_bands(grad_out, weight, out, scratch, geometry):
    """out (N, H, W, C_in) = the input gradient: a band forward of grad_out with the kernel flipped and its
    channel axes swapped, padded by the dilated extent minus the forward padding (negative where the forward
    padding exceeds it: the frame then starts inside grad_out)."""
    flipped = scratch["weight"]
    # (C_out, kH, kW, C_in) for the float32 kernel, (kH, kW, C_out, C_in) for the other
    flipped[...] = weight[::-1, ::-1].transpose((3, 0, 1, 2) if out.dtype == np.float32 else (0, 1, 3, 2))
    return _forward_bands_of(grad_out, flipped, None, out, False, scratch, geometry)


def backward_weight_rows(x, grad_out, out, scratch, geometry):
    total = scratch["total"]
    _backward_weight_channels(x, grad_out, scratch["partials"], scratch["frames"], geometry)
    sum_partials(scratch["partials"], total)
    out.reshape(total.shape[0], total.shape[1], -1)[...] = total[:, :, :out.shape[3]]
    return out


def backward_weight_bands(x, grad_out, out, scratch, geometry):
    """out (kH, kW, C_in, C_out) = the weight gradient, summed over the batch in chunks."""
    partials = scratch["partials"] if "partials" in scratch else out.reshape((1, *out.shape))
    kernel = _backward_weight_tiled if out.dtype == np.float32 else _backward_weight
    kernel(x, grad_out, partials, scratch["frames"], scratch["grads"], geometry)
    if partials.shape[0] > 1:
        sum_partials(partials, out)
    return out
