"""Winograd F(2x2, 3x3) forward and backward-input of 3x3 stride-1 convolutions on NHWC activations.

A tile is a 2x2 block of outputs; the 4x4 input patch under it gives them all as Y = A^T [U . V] A, with
V = B^T d B the patch transformed and U = G g G^T the 3x3 kernel transformed (. is the elementwise product at
the 16 positions). Summed over input channels, each position is one GEMM (tiles x C_in by C_in x C_out), and a
tile costs 16 multiplies per channel pair instead of 36. The weight gradient uses the same input transform:
dW = G^T [sum over tiles of (A dy A^T) . V] G, where dy is the tile's 2x2 output gradient.

Transformed arrays are (16, tiles, channels) with position 4 * row + column, so the GEMM of one position reads
rows of channels that are contiguous. The transforms' coefficients are 0, +-1 and +-1/2. The per-tile input and
output transforms are intrinsics on <16 x float> channel blocks (as plain loops over 1-D views the views cost more
than the arithmetic). The per-position GEMMs run on tiles.py's register tiles (as 1x1
convolutions of the transformed tiles), inside one parallel driver shared by the forward and the backward-input.
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ..._runtime import jit, run_jobs
from ..tiles import MAX_TILE_PIXELS, forward_tile, run_forward_tile
from ..workspace import slots_within, spec_bytes, specs_bytes
from ..._runtime.vector import INDEX, LANES, element_pointer, load_vector, store_vector, vector_type

TILE = 2      # outputs per tile side
PATCH = 4     # inputs per patch side: TILE + 3 - 1
POSITIONS = PATCH * PATCH


def tiles_along(size):
    """Tiles covering `size` outputs along one axis (the last one may hang over the edge)."""
    return (size + TILE - 1) // TILE


def _input_axis(builder, d0, d1, d2, d3):
    # B^T along one axis: B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    return builder.fsub(d0, d2), builder.fadd(d1, d2), builder.fsub(d2, d1), builder.fsub(d1, d3)


def _output_axis(builder, m0, m1, m2, m3):
    # A^T along one axis: A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]
    return builder.fadd(builder.fadd(m0, m1), m2), builder.fsub(builder.fsub(m1, m2), m3)


@intrinsic
def _input_tile(typingctx, source, source_offset, row_step, pixel_step, v, v_offset, position_step, channels):
    """v[v_offset + (4 * i + j) * position_step + c] = (B^T d B)[i, j, c] for the 4x4 patch d whose pixel (i, j)
    channel c is source[source_offset + i * row_step + j * pixel_step + c]; channels a multiple of 16."""
    index = types.intp
    signature = types.void(source, index, index, index, v, index, index, index)

    def codegen(context, builder, sig, args):
        source_value, source_offset, row_step, pixel_step, v_value, v_offset, position_step, channels = args
        source_pointer = element_pointer(context, builder, sig.args[0], source_value, source_offset)
        v_pointer = element_pointer(context, builder, sig.args[4], v_value, v_offset)
        blocks = builder.udiv(channels, ir.Constant(INDEX, LANES))
        with cgutils.for_range(builder, blocks) as block:
            c = builder.mul(block.index, ir.Constant(INDEX, LANES))
            d = [[load_vector(builder, builder.gep(source_pointer, [builder.add(builder.add(
                builder.mul(row_step, ir.Constant(INDEX, i)), builder.mul(pixel_step, ir.Constant(INDEX, j))), c)]))
                  for j in range(PATCH)] for i in range(PATCH)]
            columns = [_input_axis(builder, d[0][j], d[1][j], d[2][j], d[3][j]) for j in range(PATCH)]
            for i in range(PATCH):
                transformed = _input_axis(builder, *(columns[j][i] for j in range(PATCH)))
                for j in range(PATCH):
                    position = builder.mul(position_step, ir.Constant(INDEX, PATCH * i + j))
                    store_vector(builder, transformed[j], builder.gep(v_pointer, [builder.add(position, c)]))
        return context.get_dummy_value()

    return signature, codegen


@intrinsic
def _output_tile(typingctx, m, m_offset, position_step, bias, relu, out, out_offset, row_step, pixel_step,
                 rows_inside, columns_inside, channels):
    """out[out_offset + i * row_step + j * pixel_step + c] = (A^T m A)[i, j, c] + bias[c] for the i < rows_inside,
    j < columns_inside of a 2x2 tile, where m[m_offset + (4 * r + s) * position_step + c] holds the 4x4
    products; clamped at 0 (NaN kept) when relu is nonzero; channels a multiple of 16. Returns 1 when every
    stored sum was finite before the clamp, else 0: inf - inf inside the transforms can give NaN where the direct
    sum gives inf, and an output past an inf product is never finite, so the caller recomputes only such tiles."""
    index = types.intp
    signature = index(m, index, index, bias, index, out, index, index, index, index, index, index)

    def codegen(context, builder, sig, args):
        (m_value, m_offset, position_step, bias_value, relu, out_value, out_offset, row_step, pixel_step,
         rows_inside, columns_inside, channels) = args
        m_pointer = element_pointer(context, builder, sig.args[0], m_value, m_offset)
        bias_pointer = element_pointer(context, builder, sig.args[3], bias_value, ir.Constant(INDEX, 0))
        out_pointer = element_pointer(context, builder, sig.args[5], out_value, out_offset)
        clamp = builder.icmp_signed("!=", relu, ir.Constant(INDEX, 0))
        zero = ir.Constant(vector_type(), [0.0] * LANES)
        # sum of value * 0 over the stored values: 0 when all are finite, NaN otherwise (no fast-math flags here)
        residue = cgutils.alloca_once_value(builder, zero)
        blocks = builder.udiv(channels, ir.Constant(INDEX, LANES))
        with cgutils.for_range(builder, blocks) as block:
            c = builder.mul(block.index, ir.Constant(INDEX, LANES))
            m_block = [load_vector(builder, builder.gep(m_pointer, [builder.add(
                builder.mul(position_step, ir.Constant(INDEX, p)), c)])) for p in range(POSITIONS)]
            columns = [_output_axis(builder, *(m_block[PATCH * r + j] for r in range(PATCH))) for j in range(PATCH)]
            bias_vector = load_vector(builder, builder.gep(bias_pointer, [c]))
            for i in range(TILE):
                pixels = _output_axis(builder, *(columns[j][i] for j in range(PATCH)))
                for j in range(TILE):
                    total = builder.fadd(pixels[j], bias_vector)
                    # ordered `<` is false for NaN, so NaN passes through, as in PyTorch
                    clamped = builder.select(builder.fcmp_ordered("<", total, zero), zero, total)
                    value = builder.select(clamp, clamped, total)
                    inside = builder.and_(builder.icmp_signed("<", ir.Constant(INDEX, i), rows_inside),
                                          builder.icmp_signed("<", ir.Constant(INDEX, j), columns_inside))
                    with builder.if_then(inside):
                        builder.store(builder.fadd(builder.load(residue), builder.fmul(total, zero)), residue)
                        target = builder.add(builder.add(builder.mul(row_step, ir.Constant(INDEX, i)),
                                                         builder.mul(pixel_step, ir.Constant(INDEX, j))), c)
                        store_vector(builder, value, builder.gep(out_pointer, [target]))
        lanes_finite = builder.fcmp_ordered("==", builder.load(residue), zero)
        all_finite = builder.icmp_unsigned("==", builder.bitcast(lanes_finite, ir.IntType(LANES)),
                                           ir.Constant(ir.IntType(LANES), (1 << LANES) - 1))
        return builder.zext(all_finite, INDEX)

    return signature, codegen


@jit
def _fill_patch(x, n, top, left, patch):
    """patch (P, P, C) = the input pixels of image n from (top, left) on, zero outside the image."""
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    for i in range(patch.shape[0]):
        ih = top + i
        for j in range(patch.shape[1]):
            iw = left + j
            if 0 <= ih < height and 0 <= iw < width:
                for c in range(channels):
                    patch[i, j, c] = x[n, ih, iw, c]
            else:
                for c in range(channels):
                    patch[i, j, c] = 0.0


@jit
def transform_input_tiles(x, first_tile, tiles, tiles_w, tiles_per_image, pad_top, pad_left, patch, v):
    """v[:, t] = the transformed 4x4 input patch of the batch's tile first_tile + t, for t < tiles; the batch's
    tiles are numbered image by image, row-major over a grid tiles_w wide within one (a run may cross into the next
    image), and tile (th, tw)'s patch starts at input pixel (2 * th - pad_top, 2 * tw - pad_left), zero outside the
    image. v is (16, >= tiles, C) and patch a (4, 4, C) scratch for tiles at the image's edge; C a multiple of 16."""
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    row_step, position_step = width * channels, v.shape[1] * channels
    for t in range(tiles):
        n, tile = (first_tile + t) // tiles_per_image, (first_tile + t) % tiles_per_image
        top = (tile // tiles_w) * TILE - pad_top
        left = (tile % tiles_w) * TILE - pad_left
        v_offset = t * channels
        if top >= 0 and left >= 0 and top + PATCH <= height and left + PATCH <= width:
            _input_tile(x, ((n * height + top) * width + left) * channels, row_step, channels, v, v_offset,
                        position_step, channels)
        else:
            _fill_patch(x, n, top, left, patch)
            _input_tile(patch, 0, PATCH * channels, channels, v, v_offset, position_step, channels)


@jit
def transform_weight(weight, u):
    """u (16, C_in, C_out) = G g G^T of each (C_in, C_out) pair's 3x3 kernel g; weight is (3, 3, C_in, C_out).
    G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]."""
    # Flat (tap, pair) rows, one row of G g (3 values per pair) at a time, each written as 4 rows of u: LLVM
    # vectorises over the pairs. Not all 16 rows of u in one pass over the pairs: 16 store streams 16 KiB apart
    # alias in the 4 KiB store-to-load check. On the calling thread: split over threads it saved microseconds.
    pairs = weight.shape[2] * weight.shape[3]
    g = weight.reshape(9, pairs)
    t = u.reshape(POSITIONS, pairs)
    half = np.float32(0.5)
    for i in range(PATCH):
        for k in range(pairs):
            if i == 0:
                r0, r1, r2 = g[0, k], g[1, k], g[2, k]
            elif i == 1:
                r0, r1, r2 = (half * (g[0, k] + g[3, k] + g[6, k]), half * (g[1, k] + g[4, k] + g[7, k]),
                              half * (g[2, k] + g[5, k] + g[8, k]))
            elif i == 2:
                r0, r1, r2 = (half * (g[0, k] - g[3, k] + g[6, k]), half * (g[1, k] - g[4, k] + g[7, k]),
                              half * (g[2, k] - g[5, k] + g[8, k]))
            else:
                r0, r1, r2 = g[6, k], g[7, k], g[8, k]
            t[PATCH * i, k] = r0
            t[PATCH * i + 1, k] = half * (r0 + r1 + r2)
            t[PATCH * i + 2, k] = half * (r0 - r1 + r2)
            t[PATCH * i + 3, k] = r2


@jit
def _forward_jobs(first_job, last_job, worker, x, weight, u, bias, zero_bias, out, geometry, vs, ms, patches, rows):
    """Jobs first_job..last_job - 1 of _winograd_forward (run by _runtime.jobs.run_jobs): each a run of the batch's
    tiles, in worker's scratch."""
    pad_top, pad_left, relu, job_tiles = geometry
    batch, channels_in = x.shape[0], x.shape[3]
    out_h, out_w, channels_out = out.shape[1], out.shape[2], out.shape[3]
    v, m, patch, row = vs[worker], ms[worker], patches[worker], rows[worker]
    tiles_w = (out_w + TILE - 1) // TILE
    tiles = (out_h + TILE - 1) // TILE * tiles_w
    v_step, m_step, u_step = vs.shape[2] * channels_in, ms.shape[3] * channels_out, channels_in * channels_out
    # not literals: each literal argument would compile another run_forward_tile signature
    zero, one, three = np.int64(0), np.int64(1), np.int64(3)
    # the tile shapes _forward_rows_jobs picks: tiles of the GEMM rows (Winograd tiles) x output channels
    kind, tile_rows, tile_channels = forward_tile(channels_out)
    for job in range(first_job, last_job):
        start = job * job_tiles
        count = min(job_tiles, batch * tiles - start)
        transform_input_tiles(x, start, count, tiles_w, tiles, pad_top, pad_left, patch, v)
        # GEMM rows in whole register tiles: a last tile that is not whole overlaps its neighbour (it overwrites);
        # a job of fewer rows than one tile reads zero rows past them (v holds at least one tile)
        gemm_rows = max(count, tile_rows)
        for t in range(count, gemm_rows):
            for p in range(POSITIONS):
                for c in range(channels_in):
                    v[p, t, c] = 0.0
        for p in range(POSITIONS):
            for co_block in range(0, channels_out, tile_channels):
                co = min(co_block, channels_out - tile_channels)
                for t_block in range(0, gemm_rows, tile_rows):
                    t = min(t_block, gemm_rows - tile_rows)
                    run_forward_tile(kind, m, p * m_step + t * channels_out + co, channels_out, zero, zero, v,
                                             p * v_step + t * channels_in, channels_in, u, p * u_step + co,
                                             zero_bias, co, one, one, zero, zero, zero, channels_in, channels_out)
        for t in range(count):
            n, tile = (start + t) // tiles, (start + t) % tiles
            top, left = (tile // tiles_w) * TILE, (tile % tiles_w) * TILE
            finite = _output_tile(m, t * channels_out, m_step, bias, relu, out,
                                  ((n * out_h + top) * out_w + left) * channels_out, out_w * channels_out,
                                  channels_out, min(TILE, out_h - top), min(TILE, out_w - left), channels_out)
            if finite:
                continue
            # inf - inf inside the transforms may have made NaN where the direct sum gives inf: the tile's outputs
            # again as the direct path computes them, from its zero-padded input patch, each pixel by a register
            # tile whose pixels all read it (the copies land in row; one goes to out)
            _fill_patch(x, n, top - pad_top, left - pad_left, patch)
            for i in range(min(TILE, out_h - top)):
                for j in range(min(TILE, out_w - left)):
                    for co_block in range(0, channels_out, tile_channels):
                        co = min(co_block, channels_out - tile_channels)
                        run_forward_tile(kind, row, co, channels_out, zero, relu, patch,
                                                 (PATCH * i + j) * channels_in, zero, weight, co, bias, co, three,
                                                 three, PATCH * channels_in, channels_in, channels_in * channels_out,
                                                 channels_in, channels_out)
                    for c in range(channels_out):
                        out[n, top + i, left + j, c] = row[0, 0, 0, c]


def _winograd_forward(x, weight, u, bias, zero_bias, out, geometry, vs, ms, patches, rows):
    """out = the 3x3 stride-1 convolution of x (N, H, W, C_in) with weight (3, 3, C_in, C_out) + bias, clamped at
    0 when relu (NaN kept); u (4, 4, C_in, C_out) is weight transformed. geometry is (pad_top, pad_left, relu,
    job_tiles): the batch's tiles, image by image, are split into jobs of job_tiles consecutive tiles (the last one
    fewer), which may cross from one image into the next; a job transforms its input tiles
    into v (16, rows, C_in), multiplies them by u position by position into m (4, 4, rows, C_out) and
    transforms those back into out, all in its worker's scratch (vs, ms, patches (4, 4, C_in), rows
    (1, 1, 16, C_out)); weight is read only for tiles whose outputs come out non-finite, recomputed directly."""
    tiles = tiles_along(out.shape[1]) * tiles_along(out.shape[2])
    run_jobs(_forward_jobs, -(-x.shape[0] * tiles // geometry[3]), vs.shape[0], x, weight, u, bias, zero_bias, out,
             geometry, vs, ms, patches, rows)


# Bytes of transformed input and products (v and m) one job works on: they stay in L2 (2 MiB a core here) beside
# the transformed weight, while each position's GEMM rereads them.
JOB_BYTES = 512 << 10


def _unaliased(rows, channels, dtype):
    """Rows for a (16, rows, channels) transformed array whose 16 positions do not lie a multiple of 4 KiB apart:
    the transforms touch all 16 per tile, which would then share one L1 set and alias in the 4 KiB
    store-to-load check."""
    return rows + 1 if rows * channels * dtype.itemsize % 4096 == 0 else rows


def job_tiles(tiles, per_tile_bytes, channels_out):
    """Tiles per job of a pass whose images have `tiles` tiles, each taking per_tile_bytes of v and m: an image's
    tiles shared evenly among the fewest jobs within JOB_BYTES, rounded up to whole register tiles of GEMM rows.
    Jobs run over the batch's tiles image by image, crossing from one image into the next, so only the batch's
    last job has a partial register tile (AVX2's 6-row tiles over 16 tiles a job computed 18 rows)."""
    most = max(MAX_TILE_PIXELS, JOB_BYTES // per_tile_bytes)
    even = -(-tiles // -(-tiles // most))
    rows = forward_tile(channels_out)[1]
    return -(-even // rows) * rows


def plan(dtype, x_shape, channels_out, out_hw, budget, flipped):
    """(scratch specs, (job_tiles, slots)) of a Winograd pass whose forward convolution reads x_shape
    (N, H, W, C_in) and writes out_hw pixels of channels_out channels; flipped: the pass also needs the kernel
    flipped and transposed in the workspace (the backward-input)."""
    batch, channels_in = x_shape[0], x_shape[3]
    tiles = tiles_along(out_hw[0]) * tiles_along(out_hw[1])
    per_job = job_tiles(tiles, POSITIONS * (channels_in + channels_out) * dtype.itemsize, channels_out)
    specs = (("u", (PATCH, PATCH, channels_in, channels_out), dtype), ("zero_bias", (channels_out,), dtype))
    if flipped:
        specs += (("flipped", (3, 3, channels_in, channels_out), dtype),)
    per_slot = (("v", (POSITIONS, _unaliased(per_job, channels_in, dtype), channels_in)),
                ("m", (PATCH, PATCH, _unaliased(per_job, channels_out, dtype), channels_out)),
                ("patches", (PATCH, PATCH, channels_in)),
                ("rows", (1, 1, MAX_TILE_PIXELS, channels_out)))
    slots = slots_within(sum(spec_bytes(shape, dtype) for _, shape in per_slot), specs_bytes(specs),
                         -(-batch * tiles // per_job), budget)
    return specs + tuple((name, (slots, *shape), dtype) for name, shape in per_slot), (per_job, slots)


def fits(dtype, channels_in, channels_out, budget):
    """Whether a Winograd pass's transformed weight (and the flipped copy of a backward-input) leave most of the
    budget to the per-job scratch."""
    return spec_bytes((POSITIONS + 9, channels_in, channels_out), dtype) <= budget // 4


def forward(x, weight, bias, out, padding, relu, scratch, details):
    """The Winograd forward on contiguous float32 operands with a scratch carved from plan's specs (flipped
    False); bias may be None."""
    u, zero_bias = scratch["u"], scratch["zero_bias"]
    zero_bias[...] = 0.0
    transform_weight(weight, u.reshape(POSITIONS, *u.shape[2:]))
    _winograd_forward(x, weight, u, zero_bias if bias is None else bias, zero_bias, out,
                      (int(padding[0]), int(padding[1]), 1 if relu else 0, details[0]), scratch["v"], scratch["m"],
                      scratch["patches"], scratch["rows"])
    return out


def backward_input(grad_out, weight, out, padding, scratch, details):
    """The input gradient of a 3x3 stride-1 convolution as the Winograd forward of grad_out with the kernel
    flipped and its channel axes swapped, padded by 2 - padding (scratch from plan's specs, flipped True)."""
    u, zero_bias, flipped = scratch["u"], scratch["zero_bias"], scratch["flipped"]
    zero_bias[...] = 0.0
    flipped[...] = weight[::-1, ::-1].transpose(0, 1, 3, 2)
    transform_weight(flipped, u.reshape(POSITIONS, *u.shape[2:]))
    geometry = (2 - int(padding[0]), 2 - int(padding[1]), 0, details[0])
    _winograd_forward(grad_out, flipped, u, zero_bias, zero_bias, out, geometry, scratch["v"], scratch["m"],
                      scratch["patches"], scratch["rows"])
    return out
