"""Winograd F(4x4, 3x3) and F(4x2, 3x3) weight gradients of 3x3 stride-1 convolutions: dW = G^T [sum over tiles of
(A dy A'^T) . (B^T d B')] G', with the matrices and input transform of f4.py (primed: F(2,3)'s along an F(4x2)
tile's rows) and dy each tile's 4x4 (or 4x2) output gradient.

The scheme of weight_f2.py (weight.py plans all three; see weight_f2's module docstring for the
chunks, jobs and partials) with 36 positions per tile of 16 outputs: 2.25 products per output pixel and channel
pair where F(2x2) takes 4 and the direct gradient 9; F(4x2) 24 positions per 8 outputs, 3 products.
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ..._runtime import jit, run_jobs
from ..._runtime.vector import INDEX, LANES, element_pointer, masked_load, splat, store_vector, vector_fma
from ..tiles import run_weight_tiles
from .f4 import (KERNEL_MATRIX, NARROW_KERNEL_MATRIX, NARROW_OUTPUT_MATRIX, NARROW_TILE, OUTPUT_MATRIX, PATCH, TILE,
                 apply_axis, transform_input_tiles)

# A along one axis (4 values to 6): the transpose of A^T; along an F(4x2) tile's rows F(2,3)'s (2 values to 4)
GRAD_MATRIX = tuple(tuple(OUTPUT_MATRIX[i][j] for i in range(TILE)) for j in range(PATCH))
NARROW_GRAD_MATRIX = tuple(tuple(NARROW_OUTPUT_MATRIX[i][j] for i in range(NARROW_TILE))
                           for j in range(NARROW_TILE + 2))


def _make_grad_tile(columns):
    """The gradient transform of a tile of TILE rows and `columns` columns (TILE or NARROW_TILE): an intrinsic."""
    patch_columns = columns + 2
    across = GRAD_MATRIX if columns == TILE else NARROW_GRAD_MATRIX

    @intrinsic
    def grad_tile(typingctx, source, source_offset, row_step, rows_inside, columns_inside, z, z_offset,
                  position_step, channels):
        """z[z_offset + (P * i + j) * position_step + c] = (A dy A'^T)[i, j, c] for the 4 x `columns` gradient dy
        (P = columns + 2) whose pixel (i, j) channel c is source[source_offset + i * row_step + j * channels + c]
        where i < rows_inside and j < columns_inside, and 0 elsewhere (past the output's edge: nothing is read
        there); channels a multiple of 16."""
        index = types.intp
        signature = types.void(source, index, index, index, index, z, index, index, index)

        def codegen(context, builder, sig, args):
            (source_value, source_offset, row_step, rows_inside, columns_inside, z_value, z_offset, position_step,
             channels) = args
            fma = vector_fma(builder)
            source_pointer = element_pointer(context, builder, sig.args[0], source_value, source_offset)
            z_pointer = element_pointer(context, builder, sig.args[5], z_value, z_offset)
            mask_type = ir.VectorType(ir.IntType(1), LANES)
            masks = [[splat(builder, builder.and_(builder.icmp_signed("<", ir.Constant(INDEX, i), rows_inside),
                                                  builder.icmp_signed("<", ir.Constant(INDEX, j), columns_inside)),
                            mask_type) for j in range(columns)] for i in range(TILE)]
            blocks = builder.udiv(channels, ir.Constant(INDEX, LANES))
            with cgutils.for_range(builder, blocks) as block:
                c = builder.mul(block.index, ir.Constant(INDEX, LANES))
                dy = [[masked_load(builder, builder.gep(source_pointer, [builder.add(builder.add(
                    builder.mul(row_step, ir.Constant(INDEX, i)), builder.mul(channels, ir.Constant(INDEX, j))), c)]),
                    masks[i][j]) for j in range(columns)] for i in range(TILE)]
                down = [apply_axis(builder, fma, GRAD_MATRIX, [dy[i][j] for i in range(TILE)]) for j in range(columns)]
                for i in range(PATCH):
                    transformed = apply_axis(builder, fma, across, [down[j][i] for j in range(columns)])
                    for j in range(patch_columns):
                        position = builder.mul(position_step, ir.Constant(INDEX, patch_columns * i + j))
                        store_vector(builder, transformed[j], builder.gep(z_pointer, [builder.add(position, c)]))
            return context.get_dummy_value()

        return signature, codegen

    return grad_tile


_grad_tile, _narrow_grad_tile = _make_grad_tile(TILE), _make_grad_tile(NARROW_TILE)


@jit
def transform_grad_tiles(grad_out, first_tile, tiles, tiles_w, tiles_per_image, z, position_step, columns):
    """z[p * position_step + t * C_out + c] = (A dy A'^T)[p, c] for the 4 x `columns` output gradient dy of the
    batch's tile first_tile + t (t < tiles; numbered image by image, row-major over a grid tiles_w wide within one),
    zero past grad_out's edge. C_out a multiple of 16; columns TILE or NARROW_TILE."""
    out_h, out_w, channels = grad_out.shape[1], grad_out.shape[2], grad_out.shape[3]
    for t in range(tiles):
        n, tile = (first_tile + t) // tiles_per_image, (first_tile + t) % tiles_per_image
        top, left = (tile // tiles_w) * TILE, (tile % tiles_w) * columns
        offset = ((n * out_h + top) * out_w + left) * channels
        if columns == TILE:
            _grad_tile(grad_out, offset, out_w * channels, min(TILE, out_h - top), min(TILE, out_w - left), z,
                       t * channels, position_step, channels)
        else:
            _narrow_grad_tile(grad_out, offset, out_w * channels, min(TILE, out_h - top),
                              min(NARROW_TILE, out_w - left), z, t * channels, position_step, channels)


# Pairs a finishing job sums and inverse-transforms at a time: their 6 x P sums (float32) and 6 x 3 float64 rows,
# 36 KiB each at 6 x 6, stay in L2 from one pass to the next.
FINISH_BLOCK_PAIRS = 256


@jit
def _inverse_axis(r0, r1, r2, r3, r4, r5, matrix, t0, t1, t2):
    """t_b[k] = sum over j of matrix[j, b] * r_j[k] (b < 3), in float64, over the rows' pairs: LLVM vectorises
    the loop (the rows are distinct views). A 4 x 3 matrix reads r0..r3 only."""
    taps = matrix.shape[0]
    a0, a1, a2, a3 = matrix[0, 0], matrix[1, 0], matrix[2, 0], matrix[3, 0]
    b0, b1, b2, b3 = matrix[0, 1], matrix[1, 1], matrix[2, 1], matrix[3, 1]
    c0, c1, c2, c3 = matrix[0, 2], matrix[1, 2], matrix[2, 2], matrix[3, 2]
    if taps == PATCH:
        a4, a5, b4, b5, c4, c5 = matrix[4, 0], matrix[5, 0], matrix[4, 1], matrix[5, 1], matrix[4, 2], matrix[5, 2]
        for k in range(t0.shape[0]):
            v0, v1, v2 = np.float64(r0[k]), np.float64(r1[k]), np.float64(r2[k])
            v3, v4, v5 = np.float64(r3[k]), np.float64(r4[k]), np.float64(r5[k])
            t0[k] = a0 * v0 + a1 * v1 + a2 * v2 + a3 * v3 + a4 * v4 + a5 * v5
            t1[k] = b0 * v0 + b1 * v1 + b2 * v2 + b3 * v3 + b4 * v4 + b5 * v5
            t2[k] = c0 * v0 + c1 * v1 + c2 * v2 + c3 * v3 + c4 * v4 + c5 * v5
    else:
        for k in range(t0.shape[0]):
            v0, v1, v2, v3 = np.float64(r0[k]), np.float64(r1[k]), np.float64(r2[k]), np.float64(r3[k])
            t0[k] = a0 * v0 + a1 * v1 + a2 * v2 + a3 * v3
            t1[k] = b0 * v0 + b1 * v1 + b2 * v2 + b3 * v3
            t2[k] = c0 * v0 + c1 * v1 + c2 * v2 + c3 * v3


@jit
def _finish_jobs(first_job, last_job, worker, partials, out, sums, rows):
    """Jobs first_job..last_job - 1 of finish (run by _runtime.jobs.run_jobs): each a block of
    FINISH_BLOCK_PAIRS pairs, in worker's scratch."""
    chunks, patch_columns = partials.shape[0], partials.shape[2]
    positions, pairs = PATCH * patch_columns, out.shape[2] * out.shape[3]
    flat = partials.reshape(chunks, positions, pairs)
    o = out.reshape(9, pairs)
    s, r = sums[worker], rows[worker]
    across = KERNEL_MATRIX if patch_columns == PATCH else NARROW_KERNEL_MATRIX
    for job in range(first_job, last_job):
        first = job * FINISH_BLOCK_PAIRS
        last = min(first + FINISH_BLOCK_PAIRS, pairs)
        count = last - first
        # the chunks' partials summed in chunk order, as workspace.sum_partials sums them
        for p in range(positions):
            total, source = s[p, :count], flat[0, p, first:last]
            for k in range(count):
                total[k] = source[k]
            for chunk in range(1, chunks):
                source = flat[chunk, p, first:last]
                for k in range(count):
                    total[k] += source[k]
        for i in range(PATCH):
            f = patch_columns * i
            end = f + patch_columns - 1  # F(4x2)'s 4 taps: r4 and r5 are not read
            _inverse_axis(s[f, :count], s[f + 1, :count], s[f + 2, :count], s[f + 3, :count],
                          s[min(f + 4, end), :count], s[end, :count], across, r[i, 0, :count], r[i, 1, :count],
                          r[i, 2, :count])
        for b in range(3):
            _inverse_axis(r[0, b, :count], r[1, b, :count], r[2, b, :count], r[3, b, :count], r[4, b, :count],
                          r[5, b, :count], KERNEL_MATRIX, o[b, first:last], o[3 + b, first:last],
                          o[6 + b, first:last])


def finish(partials, out, sums, rows):
    """out (3, 3, C_in, C_out) = G^T s G' for each (C_in, C_out) pair, s the chunks' partials (chunks, 6, P, C_in,
    C_out) summed in chunk order (P 6 for F(4x4), 4 for F(4x2), whose G' is F(2,3)'s): in blocks of pairs over the
    threads, the transform formed in float64 and rounded once. sums (slots, 6 P, FINISH_BLOCK_PAIRS), of the
    partials' dtype, and rows (slots, 6, 3, FINISH_BLOCK_PAIRS), float64, are the slots' scratch. One pair at a
    time on the calling thread, as before, took 0.58 ms for 64 x 128 pairs (F(4x4), AVX2)."""
    pairs = out.shape[2] * out.shape[3]
    run_jobs(_finish_jobs, -(-pairs // FINISH_BLOCK_PAIRS), sums.shape[0], partials, out, sums, rows)


@jit
def _weight_chunks(first_chunk, last_chunk, worker, x, grad_out, partials, vs, zs, geometry):
    """Chunks first_chunk..last_chunk - 1 of _weight_gradient (run by _runtime.jobs.run_jobs), in worker's
    scratch."""
    pad_top, pad_left, tiles_w, tiles_per_image, columns = geometry[0], geometry[1], geometry[2], geometry[3], \
        geometry[5]
    batch, channels_in, channels_out = x.shape[0], x.shape[3], grad_out.shape[3]
    chunks, positions, capacity = partials.shape[0], vs.shape[1], vs.shape[2]
    job_tiles = capacity - 1
    v_slot, z = vs[worker], zs[worker]
    v_position_step, z_position_step = capacity * channels_in, capacity * channels_out
    partial_size = positions * channels_in * channels_out
    total = batch * tiles_per_image
    zero, one = np.int64(0), np.int64(1)  # not literals: those would compile another run_weight_tiles signature
    for chunk in range(first_chunk, last_chunk):
        partials[chunk] = 0.0
        start, last = chunk * total // chunks, (chunk + 1) * total // chunks
        while start < last:
            count = min(last - start, job_tiles)
            transform_input_tiles(x, start, count, tiles_w, tiles_per_image, pad_top, pad_left, v_slot, columns)
            transform_grad_tiles(grad_out, start, count, tiles_w, tiles_per_image, z, z_position_step, columns)
            for p in range(positions):
                run_weight_tiles(partials, chunk * partial_size + p * channels_in * channels_out, v_slot,
                                 p * v_position_step, channels_in, zero, z, p * z_position_step, zero, one, count,
                                 channels_in, channels_out)
            start += count


def weight_gradient(x, grad_out, partials, vs, zs, geometry):
    """partials[chunk] (6, P, C_in, C_out) = the chunk's tiles' products V[p]^T Z[p], each chunk's tiles in order.
    vs (slots, 6 P, tiles per job + 1, C_in) and zs (slots, 6 P * (tiles per job + 1) * C_out) are the slots'
    scratch; geometry is (pad_top, pad_left, tiles_w, tiles per image, TILE, columns), P = columns + 2."""
    run_jobs(_weight_chunks, partials.shape[0], vs.shape[0], x, grad_out, partials, vs, zs, geometry)
