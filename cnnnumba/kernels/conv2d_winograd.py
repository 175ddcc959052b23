"""Winograd F(2x2, 3x3) transforms for 3x3 stride-1 convolutions on NHWC activations.

A tile is a 2x2 block of outputs; the 4x4 input patch under it gives them all as Y = A^T [U . V] A, with
V = B^T d B the patch transformed and U = G g G^T the 3x3 kernel transformed (. is the elementwise product at
the 16 positions). Summed over input channels, each position is one GEMM (tiles x C_in by C_in x C_out), and a
tile costs 16 multiplies per channel pair instead of 36. The weight gradient uses the same input transform:
dW = G^T [sum over tiles of (A dy A^T) . V] G, where dy is the tile's 2x2 output gradient.

Transformed arrays are (16, tiles, channels) with position 4 * row + column, so the GEMM of one position reads
rows of channels that are contiguous. The transforms' coefficients are 0, +-1 and +-1/2. The per-tile input and
output transforms are intrinsics on <16 x float> channel blocks (as plain loops over 1-D views they ran 10-14x
slower: views cost more than the arithmetic); every function here is serial, and the drivers call them per job.
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._jit import jit
from ._vector import INDEX, LANES, element_pointer, load_vector, store_vector, vector_type

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
    products; clamped at 0 (NaN kept) when relu is nonzero; channels a multiple of 16."""
    index = types.intp
    signature = types.void(m, index, index, bias, index, out, index, index, index, index, index, index)

    def codegen(context, builder, sig, args):
        (m_value, m_offset, position_step, bias_value, relu, out_value, out_offset, row_step, pixel_step,
         rows_inside, columns_inside, channels) = args
        m_pointer = element_pointer(context, builder, sig.args[0], m_value, m_offset)
        bias_pointer = element_pointer(context, builder, sig.args[3], bias_value, ir.Constant(INDEX, 0))
        out_pointer = element_pointer(context, builder, sig.args[5], out_value, out_offset)
        clamp = builder.icmp_signed("!=", relu, ir.Constant(INDEX, 0))
        zero = ir.Constant(vector_type(), [0.0] * LANES)
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
                    value = builder.fadd(pixels[j], bias_vector)
                    # ordered `<` is false for NaN, so NaN passes through, as in PyTorch
                    clamped = builder.select(builder.fcmp_ordered("<", value, zero), zero, value)
                    value = builder.select(clamp, clamped, value)
                    inside = builder.and_(builder.icmp_signed("<", ir.Constant(INDEX, i), rows_inside),
                                          builder.icmp_signed("<", ir.Constant(INDEX, j), columns_inside))
                    with builder.if_then(inside):
                        target = builder.add(builder.add(builder.mul(row_step, ir.Constant(INDEX, i)),
                                                         builder.mul(pixel_step, ir.Constant(INDEX, j))), c)
                        store_vector(builder, value, builder.gep(out_pointer, [target]))
        return context.get_dummy_value()

    return signature, codegen


@jit
def transform_input_tiles(x, n, first_tile, tiles, tiles_w, pad_top, pad_left, patch, v):
    """v[:, t] = the transformed 4x4 input patch of tile first_tile + t of image n, for t < tiles; tiles are
    numbered row-major over a grid tiles_w wide, and tile (th, tw)'s patch starts at input pixel
    (2 * th - pad_top, 2 * tw - pad_left), zero outside the image. v is (16, >= tiles, C) and patch a (4, 4, C)
    scratch for tiles at the image's edge; C a multiple of 16."""
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    row_step, position_step = width * channels, v.shape[1] * channels
    for t in range(tiles):
        tile = first_tile + t
        top = (tile // tiles_w) * TILE - pad_top
        left = (tile % tiles_w) * TILE - pad_left
        if top >= 0 and left >= 0 and top + PATCH <= height and left + PATCH <= width:
            _input_tile(x, ((n * height + top) * width + left) * channels, row_step, channels, v, t * channels,
                        position_step, channels)
        else:
            for i in range(PATCH):
                ih = top + i
                for j in range(PATCH):
                    iw = left + j
                    if 0 <= ih < height and 0 <= iw < width:
                        for c in range(channels):
                            patch[i, j, c] = x[n, ih, iw, c]
                    else:
                        for c in range(channels):
                            patch[i, j, c] = 0.0
            _input_tile(patch, 0, PATCH * channels, channels, v, t * channels, position_step, channels)


@jit
def inverse_transform_output_tiles(m, n, first_tile, tiles, tiles_w, bias, relu, out):
    """out[n] at the 2x2 outputs of tiles first_tile + t (t < tiles) = A^T m[:, t] A + bias, clamped at 0 when
    relu (NaN kept); outputs past out's edge are dropped. m is (16, >= tiles, C_out), C_out a multiple of 16."""
    out_h, out_w, channels = out.shape[1], out.shape[2], out.shape[3]
    position_step = m.shape[1] * channels
    clamp = 1 if relu else 0
    for t in range(tiles):
        tile = first_tile + t
        top, left = (tile // tiles_w) * TILE, (tile % tiles_w) * TILE
        _output_tile(m, t * channels, position_step, bias, clamp, out, ((n * out_h + top) * out_w + left) * channels,
                     out_w * channels, channels, min(TILE, out_h - top), min(TILE, out_w - left), channels)


@jit
def transform_weight(weight, u):
    """u (16, C_in, C_out) = G g G^T of each (C_in, C_out) pair's 3x3 kernel g; weight is (3, 3, C_in, C_out).
    G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]."""
    channels_in, channels_out = weight.shape[2], weight.shape[3]
    rows = np.empty((PATCH, 3), dtype=weight.dtype)
    for ci in range(channels_in):
        for co in range(channels_out):
            for j in range(3):
                g0, g1, g2 = weight[0, j, ci, co], weight[1, j, ci, co], weight[2, j, ci, co]
                rows[0, j] = g0
                rows[1, j] = 0.5 * (g0 + g1 + g2)
                rows[2, j] = 0.5 * (g0 - g1 + g2)
                rows[3, j] = g2
            for i in range(PATCH):
                g0, g1, g2 = rows[i, 0], rows[i, 1], rows[i, 2]
                u[4 * i, ci, co] = g0
                u[4 * i + 1, ci, co] = 0.5 * (g0 + g1 + g2)
                u[4 * i + 2, ci, co] = 0.5 * (g0 - g1 + g2)
                u[4 * i + 3, ci, co] = g2
