"""Layout kernels: NCHW (the public layout) to the graph's NHWC at the input edge, and back at a flatten."""
from ._jit import jit
from ._slots import run_shares


# The inner loop runs along the target's contiguous axis (whole-line writes) when that axis is at least this long;
# along a shorter one (3 input channels) it runs along the source's instead. Per 64-image batch on one thread:
# 64x128x4x4 to NHWC 0.085 ms (0.10 the other way round), 64x3x32x32 0.12 ms (0.45); 4-D indexing instead of
# flat image views took 0.12-0.17 ms.
CONTIGUOUS_RUN = 16


@jit
def _images_to_nhwc(slot, slots, source, target):
    images, channels, height, width = source.shape
    plane = height * width
    for image in range(slot * images // slots, (slot + 1) * images // slots):
        planes, pixels = source[image].reshape(-1), target[image].reshape(-1)
        if channels >= CONTIGUOUS_RUN:
            for p in range(plane):
                for c in range(channels):
                    pixels[p * channels + c] = planes[c * plane + p]
        else:
            for c in range(channels):
                for p in range(plane):
                    pixels[p * channels + c] = planes[c * plane + p]


@jit
def _images_to_nchw(slot, slots, source, target):
    images, height, width, channels = source.shape
    plane = height * width
    for image in range(slot * images // slots, (slot + 1) * images // slots):
        pixels, planes = source[image].reshape(-1), target[image].reshape(-1)
        if plane >= CONTIGUOUS_RUN:
            for c in range(channels):
                for p in range(plane):
                    planes[c * plane + p] = pixels[p * channels + c]
        else:
            for p in range(plane):
                for c in range(channels):
                    planes[c * plane + p] = pixels[p * channels + c]


def nchw_to_nhwc(source, target):
    """target[n, h, w, c] = source[n, c, h, w]: C-contiguous 4-D arrays of one dtype, target of the transposed
    shape (the caller checks); the images split over the threads. 64x3x32x32 float32 (the cifar-cnn's batch):
    0.07 ms on one thread, 0.06 on two, against NumPy's strided copy's 0.53 ms, on idle cores; on busy ones a
    split over images once measured 1.2 ms against 0.7 serial (batch 256), the price every parallel kernel pays."""
    run_shares(_images_to_nhwc, source.shape[0], source, target)


def nhwc_to_nchw(source, target):
    """target[n, c, h, w] = source[n, h, w, c], as nchw_to_nhwc."""
    run_shares(_images_to_nchw, source.shape[0], source, target)
