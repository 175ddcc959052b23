"""Winograd F(2x2, 3x3) weight gradient of 3x3 stride-1 convolutions: dW = G^T [sum over tiles of
(A dy A^T) . (B^T d B)] G, with the input transform of conv2d_winograd.py and dy each tile's 2x2 output gradient."""
import numpy as np

from ._jit import jit
from .conv2d_winograd import PATCH, TILE


@jit
def _grad_rows(a0, a1, z0, z1, z2, z3):
    # A applied along one axis (2 values to 4): A = [[1, 0], [1, 1], [1, -1], [0, -1]]
    for c in range(a0.shape[0]):
        a, b = a0[c], a1[c]
        z0[c] = a
        z1[c] = a + b
        z2[c] = a - b
        z3[c] = -b


@jit
def transform_grad_tiles(grad_out, n, first_tile, tiles, tiles_w, patch, rows, z):
    """z[:, t] = A dy A^T for the 2x2 output gradient dy of tile first_tile + t of image n (t < tiles), zero past
    grad_out's edge. patch: (2, 2, C_out) and rows: (4, 2, C_out) scratch."""
    out_h, out_w, channels = grad_out.shape[1], grad_out.shape[2], grad_out.shape[3]
    for t in range(tiles):
        tile = first_tile + t
        top, left = (tile // tiles_w) * TILE, (tile % tiles_w) * TILE
        for i in range(TILE):
            for j in range(TILE):
                inside = top + i < out_h and left + j < out_w
                for c in range(channels):
                    patch[i, j, c] = grad_out[n, top + i, left + j, c] if inside else 0.0
        for j in range(TILE):
            _grad_rows(patch[0, j], patch[1, j], rows[0, j], rows[1, j], rows[2, j], rows[3, j])
        for i in range(PATCH):
            _grad_rows(rows[i, 0], rows[i, 1], z[4 * i, t], z[4 * i + 1, t], z[4 * i + 2, t], z[4 * i + 3, t])


@jit
def inverse_transform_weight_grad(summed, out):
    """out (3, 3, C_in, C_out) = G^T s G for each (C_in, C_out) pair, s the 4x4 products summed over tiles, held
    in summed (16, C_in, C_out). G^T = [[1, 1/2, 1/2, 0], [0, 1/2, -1/2, 0], [0, 1/2, 1/2, 1]]."""
    channels_in, channels_out = out.shape[2], out.shape[3]
    rows = np.empty((3, PATCH), dtype=out.dtype)
    for ci in range(channels_in):
        for co in range(channels_out):
            for j in range(PATCH):
                s0, s1, s2, s3 = (summed[j, ci, co], summed[4 + j, ci, co], summed[8 + j, ci, co],
                                  summed[12 + j, ci, co])
                rows[0, j] = s0 + 0.5 * (s1 + s2)
                rows[1, j] = 0.5 * (s1 - s2)
                rows[2, j] = 0.5 * (s1 + s2) + s3
            for i in range(3):
                s0, s1, s2, s3 = rows[i, 0], rows[i, 1], rows[i, 2], rows[i, 3]
                out[i, 0, ci, co] = s0 + 0.5 * (s1 + s2)
                out[i, 1, ci, co] = 0.5 * (s1 - s2)
                out[i, 2, ci, co] = 0.5 * (s1 + s2) + s3
