"""The convolution workspace convention: one byte buffer per call, carved into cache-line-aligned scratch arrays.

Every conv pass describes its scratch as a tuple of (name, shape, dtype) specs, computed from the shapes alone and
kept within WORKSPACE_BYTES; `specs_bytes` says how big a workspace must be for them and `carve` cuts the views
out of a caller's workspace (a 1-D uint8 array), or out of a fresh one when the caller passes None. A memory
planner can therefore size one workspace as the maximum over every pass it will run, and replay them without
allocating. Scratch that each parallel job needs (padded strips, output rows) exists once per *slot*, one per
thread at most (_runtime.WORKERS): the threads claim ranges of a pass's jobs and run each in their own slot
(_runtime.jobs.run_jobs), so its size does not grow with the batch.
"""
import functools
import math

import numpy as np

from .._runtime import WORKERS, jit, run_shares

# The budget for all the scratch of one conv pass, whatever the batch size and channel count. A pass that
# cannot fit (one transformed weight larger than a quarter of it) takes a path that needs no weight copy.
WORKSPACE_BYTES = 32 << 20
CACHE_LINE = 64
def spec_bytes(shape, dtype):
    """Bytes one spec takes in a workspace: its array rounded up to whole cache lines."""
    size = math.prod(shape) * np.dtype(dtype).itemsize
    return -(-size // CACHE_LINE) * CACHE_LINE


@functools.lru_cache(maxsize=1024)
def _layout(specs):
    """((name, byte offset, element count, dtype, shape) per spec, workspace bytes needed) for a specs tuple."""
    entries, offset = [], 0
    for name, shape, dtype in specs:
        entries.append((name, offset, math.prod(shape), np.dtype(dtype), tuple(shape)))
        offset += spec_bytes(shape, dtype)
    return tuple(entries), (CACHE_LINE + offset if specs else 0)


def specs_bytes(specs):
    """Workspace bytes for a tuple of (name, shape, dtype) specs, including the slack to align the first one."""
    return _layout(tuple(specs))[1]


def slots_within(per_slot_bytes, fixed_bytes, jobs, budget):
    """How many per-job scratch slots fit beside fixed_bytes in the budget: 1 to WORKERS (more slots than threads
    buys nothing), no more than jobs."""
    fit = (budget - fixed_bytes) // max(per_slot_bytes, 1)
    return int(max(1, min(WORKERS, jobs, fit)))


def new_workspace(nbytes):
    """A workspace of nbytes (uint8; carve aligns its views)."""
    return np.empty(max(int(nbytes), 0), np.uint8)


def carve(workspace, specs):
    """{name: view} for each spec, each view starting on a cache line of workspace (a new one when None)."""
    layout, needed = _layout(specs)
    if workspace is None:
        workspace = new_workspace(needed)
    elif not (isinstance(workspace, np.ndarray) and workspace.dtype == np.uint8 and workspace.ndim == 1
              and workspace.flags.c_contiguous and workspace.flags.writeable):
        raise TypeError("conv2d kernel: workspace must be a writeable 1-D C-contiguous uint8 array")
    if workspace.size < needed:
        raise ValueError(f"conv2d kernel: workspace of {workspace.size} bytes, but this pass needs {needed}")
    start = -workspace.__array_interface__["data"][0] % CACHE_LINE
    views = {}
    for name, offset, count, dtype, shape in layout:
        first = start + offset
        views[name] = workspace[first:first + count * dtype.itemsize].view(dtype).reshape(shape)
    return views


# sum_partials splits its elements over the threads in shares of at least this many (smaller shares cost more to
# hand out than they save).
SHARE_ELEMENTS = 16384


@jit
def _sum_partials_share(slot, slots, partials, out):
    # elements [first, last) of out: each element's sum runs in chunk order whatever the split. The loops index
    # slices from 0: over range(first, last) LLVM cannot rule out a negative (wrapped-around) index and leaves the
    # loop scalar.
    flat = partials.reshape(partials.shape[0], -1)
    first, last = slot * flat.shape[1] // slots, (slot + 1) * flat.shape[1] // slots
    share = out.reshape(-1)[first:last]
    source = flat[0, first:last]
    for i in range(share.shape[0]):
        share[i] = source[i]
    for c in range(1, flat.shape[0]):
        source = flat[c, first:last]
        for i in range(share.shape[0]):
            share[i] += source[i]


@jit
def sum_partials_serial(partials, out):
    """sum_partials on the calling thread, for callers inside compiled kernels."""
    _sum_partials_share(0, 1, partials, out)


def sum_partials(partials, out):
    """out = the partial results (a workspace's per-chunk weight or bias gradients) summed over their leading
    axis in chunk order, so the result does not depend on the thread count; the elements split over the threads."""
    run_shares(_sum_partials_share, out.size // SHARE_ELEMENTS, partials, out)

@jit
def all_finite(values):
    """Whether a 1-D array holds no inf or NaN (v - v is NaN exactly for those)."""
    bad = False
    for k in range(values.shape[0]):
        residue = values[k] - values[k]
        bad |= residue != residue
    return not bad


# Reductions over the batch split the flattened (image, output row) range into this many chunks at most, a
# number that does not depend on the thread count, so results are bit-identical for any number of threads.
MAX_REDUCTION_CHUNKS = 16


@jit
def chunk_bounds(total, chunks, index):
    # callers pass a prange index as np.int64: Numba types it uint64 inside the gufunc and int64 outside,
    # and each type would compile a copy of every helper it reaches
    return index * total // chunks, (index + 1) * total // chunks
