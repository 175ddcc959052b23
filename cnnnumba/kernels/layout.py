"""Layout kernels: NCHW (the public layout) to the graph's NHWC at the input edge, and back at a flatten."""
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
