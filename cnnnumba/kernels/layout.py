"""Layout kernels: NCHW (the public layout) to the graph's NHWC at the input edge, and back at a flatten; a
convolution weight from PyTorch's (C_out, C_in, kH, kW) to the kernels' (kH, kW, C_in, C_out), and its gradient
back."""
import numpy as np

from ._runtime import jit, run_shares


# The inner loop runs along the target's contiguous axis (whole-line writes) when that axis is at least this long;
# along a shorter one (3 input channels) it runs along the source's instead. Flat image views, not 4-D indexing,
# keep the inner loop vectorized.
CONTIGUOUS_RUN = 16


@jit
def _transpose_images(slot, slots, source, target):
    """target[n, k, r] = source[n, r, k] for the slot's share of the images (run by _runtime.jobs.run_slots)."""
    images, rows, columns = source.shape
    for image in range(slot * images // slots, (slot + 1) * images // slots):
        matrix, transposed = source[image].reshape(-1), target[image].reshape(-1)
        if rows >= CONTIGUOUS_RUN:
            for k in range(columns):
                for r in range(rows):
                    transposed[k * rows + r] = matrix[r * columns + k]
        else:
            for r in range(rows):
                for k in range(columns):
                    transposed[k * rows + r] = matrix[r * columns + k]


def nchw_to_nhwc(source, target):
    """target[n, h, w, c] = source[n, c, h, w]: C-contiguous 4-D arrays of one dtype, target of the transposed
    shape (the caller checks); the images split over the threads (several times faster than NumPy's strided
    copy)."""
    batch, channels, height, width = source.shape
    run_shares(_transpose_images, batch, source.reshape(batch, channels, height * width),
               target.reshape(batch, height * width, channels))


def nhwc_to_nchw(source, target):
    """target[n, c, h, w] = source[n, h, w, c], as nchw_to_nhwc."""
    batch, height, width, channels = source.shape
    run_shares(_transpose_images, batch, source.reshape(batch, height * width, channels),
               target.reshape(batch, channels, height * width))


# A conv weight's (C_out, C_in, kH, kW) axes in the order the conv kernels store them: (kH, kW, C_in, C_out).
HWIO_AXES = (2, 3, 1, 0)

# Square blocks of the swapped axes: a block's reads and writes stay in L1 whichever axis is contiguous.
SWAP_BLOCK = 16


@jit
def _swap_outer_axes(slot, slots, source, target):
    """target[c, b, a] = source[a, b, c] for the slot's share of the middle axis's blocks, block by block."""
    outer, middle, inner = source.shape
    blocks = (middle + SWAP_BLOCK - 1) // SWAP_BLOCK
    for block in range(slot * blocks // slots, (slot + 1) * blocks // slots):
        b0, b1 = block * SWAP_BLOCK, min((block + 1) * SWAP_BLOCK, middle)
        for a0 in range(0, outer, SWAP_BLOCK):
            a1 = min(a0 + SWAP_BLOCK, outer)
            for c0 in range(0, inner, SWAP_BLOCK):
                for c in range(c0, min(c0 + SWAP_BLOCK, inner)):
                    for b in range(b0, b1):
                        for a in range(a0, a1):
                            target[c, b, a] = source[a, b, c]


def _swap(source, target, source_shape, target_shape):
    if not target.flags.c_contiguous or target.dtype != source.dtype or target.size != source.size:
        raise ValueError(f"weight layout: target must be a C-contiguous {source.dtype} array of {source.size} "
                         f"elements, got {target.dtype} {target.shape}")
    source3 = np.ascontiguousarray(source).reshape(source_shape)
    run_shares(_swap_outer_axes, (source_shape[1] + SWAP_BLOCK - 1) // SWAP_BLOCK, source3,
               target.reshape(target_shape))


def hwio_view(array):
    """`array` (C_out, C_in/groups, kH, kW) as the kernels' C-contiguous (kH, kW, C_in/groups, C_out) view, when
    it is stored in that order (a weight or gradient a captured graph homed, graph/update.py); else None."""
    if array is None:
        return None
    view = array.transpose(HWIO_AXES)
    return view if view.flags.c_contiguous else None


def oihw_to_hwio(source, target):
    """target[kh, kw, i, o] = source[o, i, kh, kw]: a convolution weight from PyTorch's layout to the kernels'
    (target C-contiguous, of the source's dtype), blocked and split over the threads: NumPy's strided
    copy of a 512-channel 3x3 weight took longer than the convolution itself. A source stored in HWIO order (a
    graph's parameter arena, graph/update.py) is one contiguous copy."""
    channels_out, group_in, kernel_h, kernel_w = source.shape
    stored = hwio_view(source)
    if stored is not None:
        np.copyto(target, stored)
        return target
    _swap(source, target, (channels_out, group_in, kernel_h * kernel_w), (kernel_h * kernel_w, group_in, channels_out))
    return target


def hwio_to_oihw(source, target):
    """target[o, i, kh, kw] = source[kh, kw, i, o], the inverse of oihw_to_hwio (a weight gradient back)."""
    kernel_h, kernel_w, group_in, channels_out = source.shape
    _swap(source, target, (kernel_h * kernel_w, group_in, channels_out), (channels_out, group_in, kernel_h * kernel_w))
    return target
