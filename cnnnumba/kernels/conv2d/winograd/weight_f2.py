"""Winograd F(2x2, 3x3) weight gradient of 3x3 stride-1 convolutions: dW = G^T [sum over tiles of
(A dy A^T) . (B^T d B)] G, with the input transform of f2.py and dy each tile's 2x2 output gradient.

Per position p of the 4x4 transformed tile the sum is a product of V[p] (tiles x C_in) and Z[p] (tiles x C_out)
reduced over tiles: 16 multiplies per tile and channel pair where the direct gradient takes 36 (0.44x). Those
products run on tiles.py's weight-gradient tiles (a tile's "pixels" are Winograd tiles here).
The tiles of the batch, flattened (image, tile row, tile column), are split into chunks that depend on the shape
only; each chunk sums its tiles' products into its own float32 partial U' (4, 4, C_in, C_out) in tile order, a job
of at most JOB_TILES tiles at a time (its V and Z stay in L2), and the partials are summed in chunk order, then
inverse-transformed: the result is bit-identical for any thread count.
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ..._runtime import jit, run_jobs
from ..._runtime.vector import INDEX, LANES, element_pointer, load_vector, store_vector, vector_type
from ..tiles import run_weight_tiles
from .f2 import PATCH, POSITIONS, TILE, transform_input_tiles

# Tiles per job: V (16, JOB_TILES, C_in) and Z (16, JOB_TILES, C_out) together 2 MiB at 256 channels each.
# Their positions lie one tile more than JOB_TILES apart: a transform stores 16 vectors, one per position, and
# at a distance that is a multiple of 4 KiB those 16 stores would fall in one L1 set.
JOB_TILES = 64
# Tiles per partial, at least: zeroing and summing a partial costs about what 1/500 of its tiles' products do.
TILES_PER_CHUNK = 512
MAX_CHUNKS = 16


def _grad_axis(builder, a, b):
    # A along one axis (2 values to 4): A = [[1, 0], [1, 1], [1, -1], [0, -1]]
    return a, builder.fadd(a, b), builder.fsub(a, b), builder.fneg(b)


@intrinsic
def _grad_tile(typingctx, source, source_offset, row_step, rows_inside, columns_inside, z, z_offset, position_step,
               channels):
    """z[z_offset + (4 * i + j) * position_step + c] = (A dy A^T)[i, j, c] for the 2x2 gradient dy whose pixel
    (i, j) channel c is source[source_offset + i * row_step + j * channels + c] where i < rows_inside and
    j < columns_inside, and 0 elsewhere (past the output's edge); channels a multiple of 16."""
    index = types.intp
    signature = types.void(source, index, index, index, index, z, index, index, index)

    def codegen(context, builder, sig, args):
        (source_value, source_offset, row_step, rows_inside, columns_inside, z_value, z_offset, position_step,
         channels) = args
        source_pointer = element_pointer(context, builder, sig.args[0], source_value, source_offset)
        z_pointer = element_pointer(context, builder, sig.args[5], z_value, z_offset)
        zero = ir.Constant(vector_type(), [0.0] * LANES)
        slots = [[cgutils.alloca_once(builder, vector_type()) for _ in range(TILE)] for _ in range(TILE)]
        blocks = builder.udiv(channels, ir.Constant(INDEX, LANES))
        with cgutils.for_range(builder, blocks) as block:
            c = builder.mul(block.index, ir.Constant(INDEX, LANES))
            dy = []
            for i in range(TILE):
                row = []
                for j in range(TILE):
                    builder.store(zero, slots[i][j])
                    inside = builder.and_(builder.icmp_signed("<", ir.Constant(INDEX, i), rows_inside),
                                          builder.icmp_signed("<", ir.Constant(INDEX, j), columns_inside))
                    with builder.if_then(inside):
                        offset = builder.add(builder.add(builder.mul(row_step, ir.Constant(INDEX, i)),
                                                         builder.mul(channels, ir.Constant(INDEX, j))), c)
                        builder.store(load_vector(builder, builder.gep(source_pointer, [offset])), slots[i][j])
                    row.append(builder.load(slots[i][j]))
                dy.append(row)
            columns = [_grad_axis(builder, dy[0][j], dy[1][j]) for j in range(TILE)]
            for i in range(PATCH):
                transformed = _grad_axis(builder, columns[0][i], columns[1][i])
                for j in range(PATCH):
                    position = builder.mul(position_step, ir.Constant(INDEX, PATCH * i + j))
                    store_vector(builder, transformed[j], builder.gep(z_pointer, [builder.add(position, c)]))
        return context.get_dummy_value()

    return signature, codegen


@jit
def transform_grad_tiles(grad_out, first_tile, tiles, tiles_w, tiles_per_image, z, position_step):
    """z[p * position_step + t * C_out + c] = (A dy A^T)[p, c] for the 2x2 output gradient dy of the
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
def _inverse_axis(s0, s1, s2, s3):
    # G^T along one axis (4 values to 3)
    half = np.float32(0.5)
    return s0 + half * (s1 + s2), half * (s1 - s2), half * (s1 + s2) + s3


@jit
def inverse_transform_weight_grad(summed, out):
    """out (3, 3, C_in, C_out) = G^T s G for each (C_in, C_out) pair, s the 4x4 products summed over tiles, held
    in summed (4, 4, C_in, C_out), which is overwritten.
    G^T = [[1, 1/2, 1/2, 0], [0, 1/2, -1/2, 0], [0, 1/2, 1/2, 1]].
    In two passes over flat rows of pairs, each reading 4 rows and writing 3 (G^T along the columns in place, then
    along the rows into out): LLVM vectorises those; one pass reading 16 rows and writing 9 it left scalar
    (too many possibly overlapping rows). On the calling thread: split over threads it ran slower."""
    pairs = out.shape[2] * out.shape[3]
    s = summed.reshape(POSITIONS, pairs)
    o = out.reshape(9, pairs)
    for j in range(PATCH):
        s0, s1, s2, s3 = s[j], s[PATCH + j], s[2 * PATCH + j], s[3 * PATCH + j]
        for k in range(pairs):
            s0[k], s1[k], s2[k] = _inverse_axis(s0[k], s1[k], s2[k], s3[k])
    for i in range(3):
        s0, s1, s2, s3 = s[PATCH * i], s[PATCH * i + 1], s[PATCH * i + 2], s[PATCH * i + 3]
        o0, o1, o2 = o[3 * i], o[3 * i + 1], o[3 * i + 2]
        for k in range(pairs):
            o0[k], o1[k], o2[k] = _inverse_axis(s0[k], s1[k], s2[k], s3[k])


@jit
def _weight_chunks(first_chunk, last_chunk, worker, x, grad_out, partials, vs, zs, patches, geometry):
    """Chunks first_chunk..last_chunk - 1 of _weight_gradient (run by _runtime.jobs.run_jobs), in worker's
    scratch."""
    pad_top, pad_left, tiles_w, tiles_per_image = geometry
    batch, channels_in, channels_out = x.shape[0], x.shape[3], grad_out.shape[3]
    chunks, capacity = partials.shape[0], vs.shape[2]
    job_tiles = capacity - 1
    v_slot, z, patch = vs[worker], zs[worker], patches[worker]
    v_position_step, z_position_step = capacity * channels_in, capacity * channels_out
    partial_size = POSITIONS * channels_in * channels_out
    total = batch * tiles_per_image
    zero, one = np.int64(0), np.int64(1)  # not literals: those would compile another run_weight_tiles signature
    for chunk in range(first_chunk, last_chunk):
        partials[chunk] = 0.0
        start, last = chunk * total // chunks, (chunk + 1) * total // chunks
        while start < last:
            count = min(last - start, job_tiles)
            transform_input_tiles(x, start, count, tiles_w, tiles_per_image, pad_top, pad_left, patch, v_slot)
            transform_grad_tiles(grad_out, start, count, tiles_w, tiles_per_image, z, z_position_step)
            for p in range(POSITIONS):
                run_weight_tiles(partials, chunk * partial_size + p * channels_in * channels_out, v_slot,
                                 p * v_position_step, channels_in, zero, z, p * z_position_step, zero, one, count,
                                 channels_in, channels_out)
            start += count


def weight_gradient(x, grad_out, partials, vs, zs, patches, geometry):
    """partials[chunk] (4, 4, C_in, C_out) = the chunk's tiles' products V[p]^T Z[p], each chunk's tiles in order.
    vs (slots, 16, tiles per job + 1, C_in), zs (slots, 16 * (tiles per job + 1) * C_out) and patches
    (slots, 4, 4, C_in) are the slots' scratch; geometry (pad_top, pad_left, tiles_w, tiles per image)."""
    run_jobs(_weight_chunks, partials.shape[0], vs.shape[0], x, grad_out, partials, vs, zs, patches, geometry)
