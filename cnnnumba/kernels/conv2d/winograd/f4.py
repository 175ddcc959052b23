"""Winograd F(4x4, 3x3) and F(4x2, 3x3) forward and backward-input of 3x3 stride-1 convolutions on NHWC
activations.

The same scheme as f2.py's F(2x2, 3x3) with a 4x4 block of outputs per tile: the 6x6 input patch
under it gives them as Y = A^T [U . V] A, V = B^T d B, U = G g G^T, with the interpolation points 0, 1, -1, 1/2,
-2 (Lavin & Gray 2015 use 0, +-1, +-2; see INPUT_MATRIX). A tile costs 36 multiplies per channel pair for 16
outputs (2.25 per output, F(2x2): 4) and stores 36 transformed values per channel for 16 outputs (F(2x2): 16 for
4), so both the per-position GEMMs and the traffic through the v/m scratch shrink; that pays most where the GEMMs
reduce over few channels (16, 32), where F(2x2)'s transforms cost as much as its products. Its float32 rounding
is larger (coefficients up to 8 in A^T), and grows with the reduction: see select.WINOGRAD_F4_MAX_REDUCTION.
F(4x2) takes F(4,3) down the columns and f2.py's F(2,3) along the rows: a 6x4 patch gives a tile of 4 rows by 2
columns, 3 multiplies per output, with about half F(4x4)'s rounding (one axis of large coefficients, not two):
for the 64- and 128-channel reductions that F(4x4) is too coarse for (select.WINOGRAD_F4X2_MAX_REDUCTION).

Transformed arrays are (positions, tiles, channels) with position (patch columns) * row + column. The input
transform reads an edge tile's patch (up to half of the tiles at 32x32 outputs, 3/4 at 16x16) in place, each pixel
outside the image from a constant of zeros, instead of copying it into a zero-padded patch first. Tiles whose
outputs come out non-finite are recomputed directly, as in f2.py.
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ..._runtime import jit, run_jobs
from ..._runtime.vector import (INDEX, LANES, element_pointer, load_vector, masked_store, splat, store_vector, vector_fma,
                      vector_type)
from ..tiles import MAX_TILE_PIXELS, forward_tile, run_forward_tile
from ..workspace import slots_within, spec_bytes, specs_bytes
from . import f2
from .f2 import _fill_patch, _unaliased

TILE = 4      # outputs per tile side (an F(4x2) tile's rows)
PATCH = 6     # inputs per patch side: TILE + 3 - 1
POSITIONS = PATCH * PATCH
NARROW_TILE = 2  # an F(4x2) tile's columns


def tiles_along(size, tile=TILE):
    """Tiles of `tile` outputs covering `size` outputs along one axis (the last one may hang over the edge)."""
    return (size + tile - 1) // tile


def positions(columns):
    """Transformed values per channel of a tile of TILE rows and `columns` columns (TILE or NARROW_TILE)."""
    return PATCH * (columns + 2)


# The interpolation points 0, 1, -1, 1/2, -2 (and infinity): against float64 on standard-normal data, F(4x4)'s
# largest error was 3x smaller with them than with the usual 0, +-1, +-2 (Barabasz et al. 2020, "Error analysis
# and improving the accuracy of Winograd convolution"), at a few more operations per transform.
# B^T (input, 6 -> 6), A^T (output, 6 -> 4) and G (kernel, 3 -> 6), each applied along both axes.
INPUT_MATRIX = ((1.0, -1.5, -2.0, 1.5, 1.0, 0.0),
                (0.0, -1.0, 0.5, 2.5, 1.0, 0.0),
                (0.0, 1.0, -2.5, 0.5, 1.0, 0.0),
                (0.0, -2.0, -1.0, 2.0, 1.0, 0.0),
                (0.0, 0.5, -1.0, -0.5, 1.0, 0.0),
                (0.0, 1.0, -1.5, -2.0, 1.5, 1.0))
OUTPUT_MATRIX = ((1.0, 1.0, 1.0, 1.0, 1.0, 0.0),
                 (0.0, 1.0, -1.0, 0.5, -2.0, 0.0),
                 (0.0, 1.0, 1.0, 0.25, 4.0, 0.0),
                 (0.0, 1.0, -1.0, 0.125, -8.0, 1.0))
KERNEL_MATRIX = np.array(((1.0, 0.0, 0.0),
                          (1 / 3, 1 / 3, 1 / 3),
                          (-1 / 3, 1 / 3, -1 / 3),
                          (-16 / 15, -8 / 15, -4 / 15),
                          (1 / 15, -2 / 15, 4 / 15),
                          (0.0, 0.0, 1.0)))
# F(2,3) along an F(4x2) tile's rows: f2.py's B^T, A^T and G
NARROW_INPUT_MATRIX = ((1.0, 0.0, -1.0, 0.0), (0.0, 1.0, 1.0, 0.0), (0.0, -1.0, 1.0, 0.0), (0.0, 1.0, 0.0, -1.0))
NARROW_OUTPUT_MATRIX = ((1.0, 1.0, 1.0, 0.0), (0.0, 1.0, -1.0, -1.0))
NARROW_KERNEL_MATRIX = np.array(((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0)))


def _constant(value):
    return ir.Constant(vector_type(), [float(value)] * LANES)


def combine(builder, fma, row, values):
    """sum of row[j] * values[j] over the nonzero coefficients: the +-1 terms added first, the others by FMAs."""
    terms = [(c, v) for c, v in zip(row, values) if c != 0]
    total = None
    for c, v in sorted(terms, key=lambda term: abs(term[0]) != 1):
        if abs(c) == 1:
            if total is None:
                total = v if c > 0 else builder.fneg(v)
            else:
                total = builder.fadd(total, v) if c > 0 else builder.fsub(total, v)
        else:
            total = builder.fmul(_constant(c), v) if total is None else builder.call(fma, [_constant(c), v, total])
    return total


def apply_axis(builder, fma, matrix, values):
    """matrix @ values along one axis (values: vectors)."""
    return [combine(builder, fma, row, values) for row in matrix]


def _zero_vector(module):
    """A module-wide constant of 16 zero floats, for the pixels an edge patch reads outside the image."""
    name = "cnnnumba_winograd4_zeros"
    if name not in module.globals:
        cgutils.global_constant(module, name, ir.Constant(ir.ArrayType(ir.FloatType(), LANES), [0.0] * LANES))
    return module.globals[name]


def _between(builder, low, value, high):
    constant = ir.Constant(INDEX, value)
    return builder.and_(builder.icmp_signed("<=", low, constant), builder.icmp_signed("<", constant, high))


def _make_input_tile(columns):
    """The input transform of a tile of TILE rows and `columns` columns (TILE or NARROW_TILE): an intrinsic."""
    patch_columns = columns + 2
    column_matrix = INPUT_MATRIX if columns == TILE else NARROW_INPUT_MATRIX

    @intrinsic
    def input_tile(typingctx, source, source_offset, row_step, pixel_step, first_row, last_row, first_column,
                   last_column, v, v_offset, position_step, channels):
        """v[v_offset + (P * i + j) * position_step + c] = (B^T d B)[i, j, c] for the 6 x P patch d (P =
        columns + 2) whose pixel (i, j) channel c is source[source_offset + i * row_step + j * pixel_step + c]
        where first_row <= i < last_row and first_column <= j < last_column, and 0 elsewhere (nothing is read
        there: source_offset may lie before the array); channels a multiple of 16."""
        index = types.intp
        signature = types.void(source, index, index, index, index, index, index, index, v, index, index, index)

        def codegen(context, builder, sig, args):
            (source_value, source_offset, row_step, pixel_step, first_row, last_row, first_column, last_column,
             v_value, v_offset, position_step, channels) = args
            fma = vector_fma(builder)
            source_pointer = element_pointer(context, builder, sig.args[0], source_value, source_offset)
            v_pointer = element_pointer(context, builder, sig.args[8], v_value, v_offset)
            whole = builder.and_(
                builder.and_(builder.icmp_signed("==", first_row, ir.Constant(INDEX, 0)),
                             builder.icmp_signed("==", last_row, ir.Constant(INDEX, PATCH))),
                builder.and_(builder.icmp_signed("==", first_column, ir.Constant(INDEX, 0)),
                             builder.icmp_signed("==", last_column, ir.Constant(INDEX, patch_columns))))
            blocks = builder.udiv(channels, ir.Constant(INDEX, LANES))

            def transform(pointer_of):
                with cgutils.for_range(builder, blocks) as block:
                    c = builder.mul(block.index, ir.Constant(INDEX, LANES))
                    d = [[load_vector(builder, pointer_of(i, j, builder.gep(source_pointer, [builder.add(builder.add(
                        builder.mul(row_step, ir.Constant(INDEX, i)), builder.mul(pixel_step, ir.Constant(INDEX, j))),
                        c)]))) for j in range(patch_columns)] for i in range(PATCH)]
                    down = [apply_axis(builder, fma, INPUT_MATRIX, [d[i][j] for i in range(PATCH)])
                            for j in range(patch_columns)]
                    for i in range(PATCH):
                        transformed = apply_axis(builder, fma, column_matrix,
                                                 [down[j][i] for j in range(patch_columns)])
                        for j in range(patch_columns):
                            position = builder.mul(position_step, ir.Constant(INDEX, patch_columns * i + j))
                            store_vector(builder, transformed[j], builder.gep(v_pointer, [builder.add(position, c)]))

            # interior patches (most of them) read the image; an edge patch's pixels outside it read 16 zeros
            # instead (a pointer select per pixel: as 16-lane masks they cost more than the transform)
            with builder.if_else(whole, likely=True) as (interior, edge):
                with interior:
                    transform(lambda i, j, pointer: pointer)
                with edge:
                    zeros = builder.bitcast(_zero_vector(builder.module), source_pointer.type)
                    inside = [[builder.and_(_between(builder, first_row, i, last_row),
                                            _between(builder, first_column, j, last_column))
                               for j in range(patch_columns)] for i in range(PATCH)]
                    transform(lambda i, j, pointer: builder.select(inside[i][j], pointer, zeros))
            return context.get_dummy_value()

        return signature, codegen

    return input_tile


def _make_output_tile(columns):
    """The output transform of a tile of TILE rows and `columns` columns (TILE or NARROW_TILE): an intrinsic."""
    patch_columns = columns + 2
    column_matrix = OUTPUT_MATRIX if columns == TILE else NARROW_OUTPUT_MATRIX

    @intrinsic
    def output_tile(typingctx, m, m_offset, position_step, bias, relu, out, out_offset, row_step, pixel_step,
                    rows_inside, columns_inside, channels):
        """out[out_offset + i * row_step + j * pixel_step + c] = (A^T m A)[i, j, c] + bias[c] for the
        i < rows_inside, j < columns_inside of a 4 x `columns` tile, where m[m_offset + (P * r + s) * position_step
        + c] holds the 6 x P products (P = columns + 2); clamped at 0 (NaN kept) when relu is nonzero; channels a
        multiple of 16. Returns 1 when every stored sum was finite before the clamp, else 0 (the caller recomputes
        such tiles directly; see f2._output_tile)."""
        index = types.intp
        signature = index(m, index, index, bias, index, out, index, index, index, index, index, index)

        def codegen(context, builder, sig, args):
            (m_value, m_offset, position_step, bias_value, relu, out_value, out_offset, row_step, pixel_step,
             rows_inside, columns_inside, channels) = args
            fma = vector_fma(builder)
            m_pointer = element_pointer(context, builder, sig.args[0], m_value, m_offset)
            bias_pointer = element_pointer(context, builder, sig.args[3], bias_value, ir.Constant(INDEX, 0))
            out_pointer = element_pointer(context, builder, sig.args[5], out_value, out_offset)
            clamp = builder.icmp_signed("!=", relu, ir.Constant(INDEX, 0))
            zero = _constant(0)
            whole = builder.and_(builder.icmp_signed(">=", rows_inside, ir.Constant(INDEX, TILE)),
                                 builder.icmp_signed(">=", columns_inside, ir.Constant(INDEX, columns)))
            # the sum of the stored values: finite when all are (or, rarely, when finite ones overflow: that tile
            # is then recomputed directly for nothing), inf or NaN when any is
            residue = cgutils.alloca_once_value(builder, zero)
            blocks = builder.udiv(channels, ir.Constant(INDEX, LANES))

            def store_tile(masks):
                with cgutils.for_range(builder, blocks) as block:
                    c = builder.mul(block.index, ir.Constant(INDEX, LANES))
                    m_block = [load_vector(builder, builder.gep(m_pointer, [builder.add(
                        builder.mul(position_step, ir.Constant(INDEX, p)), c)])) for p in range(PATCH * patch_columns)]
                    down = [apply_axis(builder, fma, OUTPUT_MATRIX, [m_block[patch_columns * r + j]
                                                                     for r in range(PATCH)])
                            for j in range(patch_columns)]
                    bias_vector = load_vector(builder, builder.gep(bias_pointer, [c]))
                    residue_value = builder.load(residue)
                    for i in range(TILE):
                        pixels = apply_axis(builder, fma, column_matrix, [down[j][i] for j in range(patch_columns)])
                        for j in range(columns):
                            total = builder.fadd(pixels[j], bias_vector)
                            # ordered `<` is false for NaN, so NaN passes through, as in PyTorch
                            clamped = builder.select(builder.fcmp_ordered("<", total, zero), zero, total)
                            value = builder.select(clamp, clamped, total)
                            offset = builder.add(builder.mul(row_step, ir.Constant(INDEX, i)),
                                                 builder.mul(pixel_step, ir.Constant(INDEX, j)))
                            target = builder.gep(out_pointer, [builder.add(offset, c)])
                            if masks is None:
                                residue_value = builder.fadd(residue_value, total)
                                store_vector(builder, value, target)
                            else:
                                residue_value = builder.fadd(residue_value,
                                                             builder.select(masks[i][j], total, zero))
                                masked_store(builder, value, target, masks[i][j])
                    builder.store(residue_value, residue)

            with builder.if_else(whole, likely=True) as (interior, edge):
                with interior:
                    store_tile(None)
                with edge:
                    mask_type = ir.VectorType(ir.IntType(1), LANES)
                    store_tile([[splat(builder, builder.and_(
                        builder.icmp_signed("<", ir.Constant(INDEX, i), rows_inside),
                        builder.icmp_signed("<", ir.Constant(INDEX, j), columns_inside)), mask_type)
                        for j in range(columns)] for i in range(TILE)])
            lanes_finite = builder.fcmp_ordered("==", builder.fmul(builder.load(residue), zero), zero)
            all_finite = builder.icmp_unsigned("==", builder.bitcast(lanes_finite, ir.IntType(LANES)),
                                               ir.Constant(ir.IntType(LANES), (1 << LANES) - 1))
            return builder.zext(all_finite, INDEX)

        return signature, codegen

    return output_tile


_input_tile, _narrow_input_tile = _make_input_tile(TILE), _make_input_tile(NARROW_TILE)
_output_tile, _narrow_output_tile = _make_output_tile(TILE), _make_output_tile(NARROW_TILE)


@jit
def transform_input_tiles(x, first_tile, tiles, tiles_w, tiles_per_image, pad_top, pad_left, v, columns):
    """v[:, t] = the transformed 6 x (columns + 2) input patch of the batch's tile first_tile + t, for t < tiles,
    numbered as in f2.transform_input_tiles; tile (th, tw)'s patch starts at input pixel (4 * th - pad_top,
    columns * tw - pad_left), zero outside the image. v is (positions(columns), >= tiles, C), C a multiple of 16;
    columns TILE or NARROW_TILE."""
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    row_step, position_step = width * channels, v.shape[1] * channels
    patch_columns = columns + 2
    for t in range(tiles):
        n, tile = (first_tile + t) // tiles_per_image, (first_tile + t) % tiles_per_image
        top = (tile // tiles_w) * TILE - pad_top
        left = (tile % tiles_w) * columns - pad_left
        offset = ((n * height + top) * width + left) * channels
        first_row, last_row = max(0, -top), min(PATCH, height - top)
        first_column, last_column = max(0, -left), min(patch_columns, width - left)
        if columns == TILE:
            _input_tile(x, offset, row_step, channels, first_row, last_row, first_column, last_column, v,
                        t * channels, position_step, channels)
        else:
            _narrow_input_tile(x, offset, row_step, channels, first_row, last_row, first_column, last_column, v,
                               t * channels, position_step, channels)


# G of both axes in float32, for transform_weight
_KERNEL_MATRIX32, _NARROW_KERNEL_MATRIX32 = KERNEL_MATRIX.astype(np.float32), NARROW_KERNEL_MATRIX.astype(np.float32)


@jit
def transform_weight(weight, u):
    """u (positions, C_in, C_out) = G g G^T of each (C_in, C_out) pair's 3x3 kernel g, weight (3, 3, C_in, C_out);
    36 positions for F(4x4), 24 for F(4x2) (G along its rows: f2.py's)."""
    # One position at a time, an inner loop over the pairs alone, which LLVM vectorises: on the calling thread,
    # before the parallel products. Formed in float64 with the positions inside that loop it took 0.27 ms for
    # 64 x 128 pairs (F(4x2), AVX2) and cost F(4x2) a third of its gain; the float32 U changed the error of either
    # variant by less than the spread between seeds (bench/README.md).
    pairs = weight.shape[2] * weight.shape[3]
    g = weight.reshape(9, pairs)
    t = u.reshape(u.shape[0], pairs)
    patch_columns = u.shape[0] // PATCH
    across = _KERNEL_MATRIX32 if patch_columns == PATCH else _NARROW_KERNEL_MATRIX32
    for i in range(PATCH):
        a0, a1, a2 = _KERNEL_MATRIX32[i, 0], _KERNEL_MATRIX32[i, 1], _KERNEL_MATRIX32[i, 2]
        first = patch_columns * i
        for k in range(pairs):
            r0 = a0 * g[0, k] + a1 * g[3, k] + a2 * g[6, k]
            r1 = a0 * g[1, k] + a1 * g[4, k] + a2 * g[7, k]
            r2 = a0 * g[2, k] + a1 * g[5, k] + a2 * g[8, k]
            for j in range(4):
                t[first + j, k] = across[j, 0] * r0 + across[j, 1] * r1 + across[j, 2] * r2
            if patch_columns == PATCH:
                for j in range(4, PATCH):
                    t[first + j, k] = across[j, 0] * r0 + across[j, 1] * r1 + across[j, 2] * r2


@jit
def _forward_jobs(first_job, last_job, worker, x, weight, u, bias, zero_bias, out, geometry, vs, ms, patches, rows):
    """Jobs first_job..last_job - 1 of _winograd_forward (run by _runtime.jobs.run_jobs): each a run of the batch's
    tiles, in worker's scratch."""
    pad_top, pad_left, relu, job_tiles, columns = geometry
    batch, channels_in = x.shape[0], x.shape[3]
    out_h, out_w, channels_out = out.shape[1], out.shape[2], out.shape[3]
    v, m, patch, row = vs[worker], ms[worker], patches[worker], rows[worker]
    patch_columns = columns + 2
    # the GEMMs' m and u as 6 x P positions (the tiles address them by flat offsets): the operand types of the
    # direct path's and F(2x2)'s forward tiles, so run_forward_tile compiles no signature for this path alone
    m_tiles = m.reshape(PATCH, patch_columns, m.shape[1], m.shape[2])
    u_tiles = u.reshape(PATCH, patch_columns, u.shape[1], u.shape[2])
    tiles_w = (out_w + columns - 1) // columns
    tiles = (out_h + TILE - 1) // TILE * tiles_w
    v_step, m_step, u_step = vs.shape[2] * channels_in, ms.shape[2] * channels_out, channels_in * channels_out
    # not literals: each literal argument would compile another run_forward_tile signature
    zero, one, three = np.int64(0), np.int64(1), np.int64(3)
    kind, tile_rows, tile_channels = forward_tile(channels_out)
    for job in range(first_job, last_job):
        start = job * job_tiles
        count = min(job_tiles, batch * tiles - start)
        transform_input_tiles(x, start, count, tiles_w, tiles, pad_top, pad_left, v, columns)
        # GEMM rows in whole register tiles: a last tile that is not whole overlaps its neighbour (it overwrites);
        # a job of fewer rows than one tile reads zero rows past them (v holds at least one tile)
        gemm_rows = max(count, tile_rows)
        for t in range(count, gemm_rows):
            for p in range(v.shape[0]):
                for c in range(channels_in):
                    v[p, t, c] = 0.0
        for p in range(v.shape[0]):
            for co_block in range(0, channels_out, tile_channels):
                co = min(co_block, channels_out - tile_channels)
                for t_block in range(0, gemm_rows, tile_rows):
                    t = min(t_block, gemm_rows - tile_rows)
                    run_forward_tile(kind, m_tiles, p * m_step + t * channels_out + co, channels_out, zero,
                                             zero, v, p * v_step + t * channels_in, channels_in, u_tiles,
                                             p * u_step + co, zero_bias, co, one, one, zero, zero, zero, channels_in,
                                             channels_out)
        for t in range(count):
            n, tile = (start + t) // tiles, (start + t) % tiles
            top, left = (tile // tiles_w) * TILE, (tile % tiles_w) * columns
            offset, row_step = ((n * out_h + top) * out_w + left) * channels_out, out_w * channels_out
            rows_inside, columns_inside = min(TILE, out_h - top), min(columns, out_w - left)
            if columns == TILE:
                finite = _output_tile(m, t * channels_out, m_step, bias, relu, out, offset, row_step, channels_out,
                                      rows_inside, columns_inside, channels_out)
            else:
                finite = _narrow_output_tile(m, t * channels_out, m_step, bias, relu, out, offset, row_step,
                                             channels_out, rows_inside, columns_inside, channels_out)
            if finite:
                continue
            # the tile's outputs again as the direct path computes them, from its zero-padded input patch (6 x 6,
            # of which an F(4x2) tile reads 6 x 4; see f2._forward_jobs)
            _fill_patch(x, n, top - pad_top, left - pad_left, patch)
            for i in range(rows_inside):
                for j in range(columns_inside):
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
    0 when relu (NaN kept); u (positions, C_in, C_out) is weight transformed. geometry is (pad_top, pad_left, relu,
    job_tiles, columns): the batch's tiles of 4 rows by `columns` columns, image by image, are split into jobs of
    job_tiles consecutive tiles (the last one fewer), which may cross from one image into the next; a job
    transforms its input tiles into v (positions, rows, C_in), multiplies them by u position by position into m
    (positions, rows, C_out) and transforms those back into out, all in its worker's scratch (vs, ms, patches
    (6, 6, C_in), rows (1, 1, 16, C_out)). ms may be vs itself when each position's products are one register
    tile (see plan)."""
    columns = geometry[4]
    tiles = tiles_along(out.shape[1]) * tiles_along(out.shape[2], columns)
    run_jobs(_forward_jobs, -(-x.shape[0] * tiles // geometry[3]), vs.shape[0], x, weight, u, bias, zero_bias, out,
             geometry, vs, ms, patches, rows)


def in_place(channels_in, channels_out):
    """Whether a pass's products overwrite its transformed input (m is v): when each position's GEMM is one
    register tile of the job's rows and all its channels, which reads all of v[p] before it stores m[p], and those
    are 16 or 32 channels (AVX-512's 64-channel tiles hold 4 rows: in jobs of 4 tiles F(4x2)'s 64-channel forwards
    ran 4-15% slower than in jobs as f2.job_tiles makes them)."""
    return channels_in == channels_out == forward_tile(channels_out)[2] <= 32


def plan(dtype, x_shape, channels_out, out_hw, budget, flipped, columns=TILE):
    """(scratch specs, (job_tiles, slots, columns)) of an F(4x4) pass (F(4x2) with columns NARROW_TILE) whose
    forward convolution reads x_shape (N, H, W, C_in) and writes out_hw pixels of channels_out channels; flipped:
    the pass also needs the kernel flipped and transposed in the workspace (the backward-input). In place (16 or
    32 channels in and out), a job is one register tile of rows (16 or 8 tiles on AVX-512): its v, 36 KiB (F(4x2):
    24), stays in L1 from the input transform through the GEMMs (which overwrite it) to the output transform;
    otherwise jobs as f2.job_tiles makes them, their v and m within f2.JOB_BYTES (L2)."""
    batch, channels_in = x_shape[0], x_shape[3]
    tiles = tiles_along(out_hw[0]) * tiles_along(out_hw[1], columns)
    count = positions(columns)
    shared = in_place(channels_in, channels_out)
    if shared:
        per_job = forward_tile(channels_out)[1]
    else:
        per_job = f2.job_tiles(tiles, count * (channels_in + channels_out) * dtype.itemsize, channels_out)
    specs = (("u", (count, channels_in, channels_out), dtype), ("zero_bias", (channels_out,), dtype))
    if flipped:
        specs += (("flipped", (3, 3, channels_in, channels_out), dtype),)
    per_slot = (("v", (count, _unaliased(per_job, channels_in, dtype), channels_in)),)
    if not shared:
        per_slot += (("m", (count, _unaliased(per_job, channels_out, dtype), channels_out)),)
    per_slot += (("patches", (PATCH, PATCH, channels_in)), ("rows", (1, 1, MAX_TILE_PIXELS, channels_out)))
    slots = slots_within(sum(spec_bytes(shape, dtype) for _, shape in per_slot), specs_bytes(specs),
                         -(-batch * tiles // per_job), budget)
    return specs + tuple((name, (slots, *shape), dtype) for name, shape in per_slot), (per_job, slots, columns)


def fits(dtype, channels_in, channels_out, budget, columns=TILE):
    """Whether an F(4x4) pass's (F(4x2)'s with columns NARROW_TILE) transformed weight, and the flipped copy of a
    backward-input, leave most of the budget to the per-job scratch."""
    return spec_bytes((positions(columns) + 9, channels_in, channels_out), dtype) <= budget // 4


def forward(x, weight, bias, out, padding, relu, scratch, details):
    """The F(4x4) or F(4x2) forward (plan's details say which) on contiguous float32 operands with a scratch carved
    from plan's specs (flipped False); bias may be None."""
    u, zero_bias = scratch["u"], scratch["zero_bias"]
    zero_bias[...] = 0.0
    transform_weight(weight, u)
    _winograd_forward(x, weight, u, zero_bias if bias is None else bias, zero_bias, out,
                      (int(padding[0]), int(padding[1]), 1 if relu else 0, details[0], details[2]), scratch["v"],
                      scratch.get("m", scratch["v"]), scratch["patches"], scratch["rows"])
    return out


def backward_input(grad_out, weight, out, padding, scratch, details):
    """The input gradient of a 3x3 stride-1 convolution as the F(4x4) or F(4x2) forward of grad_out with the kernel
    flipped and its channel axes swapped, padded by 2 - padding (scratch from plan's specs, flipped True)."""
    u, zero_bias, flipped = scratch["u"], scratch["zero_bias"], scratch["flipped"]
    zero_bias[...] = 0.0
    flipped[...] = weight[::-1, ::-1].transpose(0, 1, 3, 2)
    transform_weight(flipped, u)
    geometry = (2 - int(padding[0]), 2 - int(padding[1]), 0, details[0], details[2])
    _winograd_forward(grad_out, flipped, u, zero_bias, zero_bias, out, geometry, scratch["v"],
                      scratch.get("m", scratch["v"]), scratch["patches"], scratch["rows"])
    return out
