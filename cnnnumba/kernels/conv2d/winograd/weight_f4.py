"""Winograd F(4x4, 3x3) weight gradient of 3x3 stride-1 convolutions: dW = G^T [sum over tiles of
(A dy A^T) . (B^T d B)] G, with the matrices and input transform of f4.py and dy each tile's 4x4
output gradient.

The scheme of weight_f2.py (weight.py plans both; see weight_f2's module docstring for the
chunks, jobs and partials) with 36 positions per tile of 16 outputs: 2.25 products per output pixel and channel
pair where F(2x2) takes 4 and the direct gradient 9.
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ..._runtime import jit, run_jobs
from ..._runtime.vector import INDEX, LANES, element_pointer, masked_load, splat, store_vector, vector_fma
from ..tiles import run_weight_tiles
from .f4 import KERNEL_MATRIX, OUTPUT_MATRIX, PATCH, POSITIONS, TILE, apply_axis, transform_input_tiles

# A along one axis (4 values to 6): the transpose of A^T
GRAD_MATRIX = tuple(tuple(OUTPUT_MATRIX[i][j] for i in range(TILE)) for j in range(PATCH))


@intrinsic
def _grad_tile(typingctx, source, source_offset, row_step, rows_inside, columns_inside, z, z_offset, position_step,
               channels):
    """z[z_offset + (6 * i + j) * position_step + c] = (A dy A^T)[i, j, c] for the 4x4 gradient dy whose pixel
    (i, j) channel c is source[source_offset + i * row_step + j * channels + c] where i < rows_inside and
    j < columns_inside, and 0 elsewhere (past the output's edge: nothing is read there); channels a multiple of
    16."""
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
                        mask_type) for j in range(TILE)] for i in range(TILE)]
        blocks = builder.udiv(channels, ir.Constant(INDEX, LANES))
        with cgutils.for_range(builder, blocks) as block:
            c = builder.mul(block.index, ir.Constant(INDEX, LANES))
            dy = [[masked_load(builder, builder.gep(source_pointer, [builder.add(builder.add(
                builder.mul(row_step, ir.Constant(INDEX, i)), builder.mul(channels, ir.Constant(INDEX, j))), c)]),
                masks[i][j]) for j in range(TILE)] for i in range(TILE)]
            columns = [apply_axis(builder, fma, GRAD_MATRIX, [dy[i][j] for i in range(TILE)]) for j in range(TILE)]
            for i in range(PATCH):
                transformed = apply_axis(builder, fma, GRAD_MATRIX, [columns[j][i] for j in range(TILE)])
                for j in range(PATCH):
                    position = builder.mul(position_step, ir.Constant(INDEX, PATCH * i + j))
                    store_vector(builder, transformed[j], builder.gep(z_pointer, [builder.add(position, c)]))
        return context.get_dummy_value()

    return signature, codegen


@jit
def transform_grad_tiles(grad_out, first_tile, tiles, tiles_w, tiles_per_image, z, position_step):
    """z[p * position_step + t * C_out + c] = (A dy A^T)[p, c] for the 4x4 output gradient dy of the
    batch's tile first_tile + t (t < tiles; numbered image by image, row-major over a grid tiles_w wide within one),
    zero past grad_out's edge. C_out a multiple of 16."""
    out_h, out_w, channels = grad_out.shape[1], grad_out.shape[2], grad_out.shape[3]
    for t in range(tiles):
        n, tile = (first_tile + t) // tiles_per_image, (first_tile + t) % tiles_per_image
        top, left = (tile // tiles_w) * TILE, (tile % tiles_w) * TILE
        _grad_tile(grad_out, ((n * out_h + top) * out_w + left) * channels, out_w * channels,
                   min(TILE, out_h - top), min(TILE, out_w - left), z, t * channels, position_step,
                   channels)


@jit
def inverse_transform_weight_grad(summed, out):
    """out (3, 3, C_in, C_out) = G^T s G for each (C_in, C_out) pair, s the 6x6 products summed over tiles, held in
    summed (6, 6, C_in, C_out); formed in float64 and rounded once. One pair at a time: this runs once per pass, on
    layers of at most 32 x 32 channels (select.WINOGRAD_F4_MAX_REDUCTION), where it costs microseconds."""
    pairs = out.shape[2] * out.shape[3]
    s = summed.reshape(POSITIONS, pairs)
    o = out.reshape(9, pairs)
    kernel = KERNEL_MATRIX
    for k in range(pairs):
        for a in range(3):
            # row a of G^T s: r_j = sum over i of G[i, a] s[i, j]
            r0, r1, r2, r3, r4, r5 = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
            for i in range(PATCH):
                coefficient, row = kernel[i, a], PATCH * i
                r0 += coefficient * s[row, k]
                r1 += coefficient * s[row + 1, k]
                r2 += coefficient * s[row + 2, k]
                r3 += coefficient * s[row + 3, k]
                r4 += coefficient * s[row + 4, k]
                r5 += coefficient * s[row + 5, k]
            for b in range(3):
                o[3 * a + b, k] = (r0 * kernel[0, b] + r1 * kernel[1, b] + r2 * kernel[2, b] + r3 * kernel[3, b]
                                   + r4 * kernel[4, b] + r5 * kernel[5, b])


@jit
def _weight_chunks(first_chunk, last_chunk, worker, x, grad_out, partials, vs, zs, geometry):
    """Chunks first_chunk..last_chunk - 1 of _weight_gradient (run by _runtime.jobs.run_jobs), in worker's
    scratch."""
    pad_top, pad_left, tiles_w, tiles_per_image = geometry[0], geometry[1], geometry[2], geometry[3]
    batch, channels_in, channels_out = x.shape[0], x.shape[3], grad_out.shape[3]
    chunks, capacity = partials.shape[0], vs.shape[2]
    job_tiles = capacity - 1
    v_slot, z = vs[worker], zs[worker]
    v_position_step, z_position_step = capacity * channels_in, capacity * channels_out
    partial_size = POSITIONS * channels_in * channels_out
    total = batch * tiles_per_image
    zero, one = np.int64(0), np.int64(1)  # not literals: those would compile another run_weight_tiles signature
    for chunk in range(first_chunk, last_chunk):
        partials[chunk] = 0.0
        start, last = chunk * total // chunks, (chunk + 1) * total // chunks
        while start < last:
            count = min(last - start, job_tiles)
            transform_input_tiles(x, start, count, tiles_w, tiles_per_image, pad_top, pad_left, v_slot, TILE)
            transform_grad_tiles(grad_out, start, count, tiles_w, tiles_per_image, z, z_position_step)
            for p in range(POSITIONS):
                run_weight_tiles(partials, chunk * partial_size + p * channels_in * channels_out, v_slot,
                                 p * v_position_step, channels_in, zero, z, p * z_position_step, zero, one, count,
                                 channels_in, channels_out)
            start += count


def weight_gradient(x, grad_out, partials, vs, zs, geometry):
    """partials[chunk] (6, 6, C_in, C_out) = the chunk's tiles' products V[p]^T Z[p], each chunk's tiles in order.
    vs (slots, 36, tiles per job + 1, C_in) and zs (slots, 36 * (tiles per job + 1) * C_out) are the slots'
    scratch; geometry starts (pad_top, pad_left, tiles_w, tiles per image)."""
    run_jobs(_weight_chunks, partials.shape[0], vs.shape[0], x, grad_out, partials, vs, zs, geometry)
