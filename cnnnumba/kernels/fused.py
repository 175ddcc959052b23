"""Fused kernels for the graph executor: batch norm (+ shortcut add) + a clamp, add + ReLU and ReLU + bias gradient,
all writing into given buffers.

Activations are channels-innermost (rows, C) arrays (NHWC flattened). Per-channel sums over rows use per-chunk
float64 partials of ROWS_PER_CHUNK rows added in chunk order, so results do not depend on the thread count, and
the elementwise passes run without contraction or reassociation, with the same arithmetic as kernels/norm.py,
so a fused batch norm + ReLU gives the numbers of the two unfused kernels.

The activation after a batch norm is a clamp to [lower, upper], given as `clamp` = (lower, upper): ReLU is
RELU = (0, inf), ReLU6 (0, 6), Hardtanh its (min_val, max_val), and NO_CLAMP = (-inf, inf) is no activation; an
infinite bound is no bound. Its gradient passes where lower < pre-activation < upper (0 where the output reached
either bound, and at NaN), as PyTorch's vectorized hardtanh and cnnnumba's ReLU backward mask it.

The batch-norm passes are built to read memory as few times as possible: the statistics read x once, the batch
norm + clamp backward recomputes the mask from x instead of reading the output, and the batch norm + add + clamp
backward's apply pass reads the masked gradient its reduction pass wrote (bench/README.md, 2026-11-28 01:10 UTC).
"""
import math

import numpy as np
from numba import prange

from ._runtime import EXACT_FASTMATH, jit, parallel_jit, run_shares
from ._runtime.vector import LANES
from .channel_blocks import block_grad_sums, block_masked_grad_sums, block_moments
from .elementwise import CHUNK as ELEMENT_CHUNK

# the activations a batch norm applies, as the clamps (lower, upper) described above
NO_CLAMP = (-math.inf, math.inf)
RELU = (0.0, math.inf)


# The statistics and the batch norm + ReLU (or + add + ReLU) forwards and backwards run their chunk and row loops
# as slot functions over contiguous shares of the chunks or rows (_runtime.jobs.run_shares), not prange kernels:
# a prange kernel compiles its loop body again in the gufunc and again when linking it (twice the cold compile).

# Per-channel sums over rows are split into chunks of this many rows whatever the thread count, and the chunk
# partials are added in chunk order, so the statistics and gradients are bit-identical for any thread count.
ROWS_PER_CHUNK = 256


@jit
def chunk_count(rows):
    """How many partial rows a (chunks, C) buffer needs for `rows` input rows."""
    return max((rows + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK, 1)


# A chunk's rows are walked in groups of about this many elements per array, each group block by block: the
# arrays' part of one group stays in L1 while its blocks go by (whole chunks at 64 channels did not: 64 KiB per
# array, and the add + ReLU backward reads three and writes one).
GROUP_ELEMENTS = 2048


@jit
def _sum_chunks_into(partials, chunks, out):
    for c in range(out.shape[0]):
        out[c] = 0.0
    for chunk in range(chunks):
        for c in range(out.shape[0]):
            out[c] += partials[chunk, c]


@jit
def _chunk_moments(x, partials, chunk):
    # One pass over one chunk: deviations from a shift K (the chunk's first row, read again from x, not stored),
    # their sum D and the sum of their squares Q, in float64; then the chunk's mean K + D/n and its sum of squared
    # deviations from that mean, Q - D^2/n, into partials[0] and partials[1]. Not raw squares: K is one of the
    # chunk's values, so n (mean - K)^2 <= Q and the subtraction cancels at most log2(n) = 8 of float64's 53 bits
    # whatever the mean (raw squares cancel all of them when the mean is large next to the spread). One pass, not
    # two (its mean first): these loops are bound by arithmetic, not memory, once the chunk is in cache.
    # Views are taken here, not in the caller's prange body, where Numba 0.68 leaks them.
    rows, channels = x.shape
    begin, end = chunk * ROWS_PER_CHUNK, min((chunk + 1) * ROWS_PER_CHUNK, rows)
    count = end - begin
    deviations, squares = partials[0, chunk], partials[1, chunk]
    for c in range(channels):
        deviations[c] = 0.0
        squares[c] = 0.0
    if channels % LANES == 0 and partials.shape[2] == channels and count > 0:
        group_rows = max(GROUP_ELEMENTS // channels, 2)
        for group in range(begin, end, group_rows):
            for c in range(0, channels, LANES):
                block_moments(x, begin, group, min(group + group_rows, end), c, deviations, squares)
    else:
        # Four rows per update of each accumulator: the accumulators live in memory (the channel count is not
        # known at compile time), and one update per row made the loop wait on store-to-load latency.
        quad_end = begin + (count // 4) * 4
        for r in range(begin, quad_end, 4):
            for c in range(channels):
                shift = np.float64(x[begin, c])
                d0 = np.float64(x[r, c]) - shift
                d1 = np.float64(x[r + 1, c]) - shift
                d2 = np.float64(x[r + 2, c]) - shift
                d3 = np.float64(x[r + 3, c]) - shift
                deviations[c] += (d0 + d1) + (d2 + d3)
                squares[c] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
        for r in range(quad_end, end):
            for c in range(channels):
                deviation = np.float64(x[r, c]) - np.float64(x[begin, c])
                deviations[c] += deviation
                squares[c] += deviation * deviation
    for c in range(channels):
        squares[c] -= deviations[c] * deviations[c] / count
        deviations[c] = np.float64(x[begin, c]) + deviations[c] / count  # now the chunk's mean


@jit
def _moments_slot(slot, slots, x, partials):
    """_chunk_moments of the slot's share of the chunks (run by _runtime.jobs.run_slots)."""
    chunks = chunk_count(x.shape[0])
    for chunk in range(slot * chunks // slots, (slot + 1) * chunks // slots):
        _chunk_moments(x, partials, chunk)


@jit
def _combine_moments(rows, eps, partials, mean, variance, invstd):
    chunks = chunk_count(rows)
    channels = mean.shape[0]
    for c in range(channels):
        mean[c] = 0.0
        variance[c] = 0.0
    for chunk in range(chunks):
        count = min((chunk + 1) * ROWS_PER_CHUNK, rows) - chunk * ROWS_PER_CHUNK
        for c in range(channels):
            mean[c] += count * partials[0, chunk, c]
    for c in range(channels):
        mean[c] = mean[c] / rows
    for chunk in range(chunks):
        count = min((chunk + 1) * ROWS_PER_CHUNK, rows) - chunk * ROWS_PER_CHUNK
        for c in range(channels):
            offset = partials[0, chunk, c] - mean[c]
            variance[c] += partials[1, chunk, c] + count * (offset * offset)
    for c in range(channels):
        variance[c] = variance[c] / rows
        invstd[c] = 1.0 / np.sqrt(variance[c] + eps)


def batch_norm_statistics(x, eps, partials, mean, variance, invstd):
    """Per-channel float64 mean, biased variance and 1 / sqrt(variance + eps) of x (rows, C), one pass over x.

    partials is a (2, chunk_count(rows), C) float64 scratch, left holding each chunk's mean and sum of squared
    deviations from its mean. The chunks combine in chunk order by Chan, Golub and LeVeque's formula for the
    squared deviations of a union of groups, sum_k (M2_k + n_k (mean_k - mean)^2): every term is non-negative, so
    no cancellation there either.
    """
    rows = x.shape[0]
    run_shares(_moments_slot, chunk_count(rows), x, partials)
    _combine_moments(rows, float(eps), partials, mean, variance, invstd)


@jit
def _normalize_coefficients(mean, invstd, weight, bias, coefficients):
    # the per-channel centre, scale and shift rounded to x's dtype, in rows 0-2 of coefficients; the forward and
    # the backward's ReLU mask both compute the pre-activation from these, so the mask is the forward's bit for bit
    for c in range(mean.shape[0]):
        coefficients[0, c] = mean[c]
        coefficients[1, c] = invstd[c] * weight[c]
        coefficients[2, c] = bias[c]


def clamp_bounds(clamp, dtype):
    """A clamp's (lower, upper) as scalars of the activations' dtype: the bound a clamped element takes, and the
    kernels compare in that dtype (one compiled signature per dtype, as for the arrays)."""
    lower, upper = clamp
    return dtype.type(lower), dtype.type(upper)


@jit
def _passes(value, lower, upper, has_lower, has_upper):
    """Whether a clamp's gradient passes at value: lower < value < upper, a missing bound passing all (NaN fails
    any other)."""
    return (not has_lower or value > lower) and (not has_upper or value < upper)


@jit(fastmath=EXACT_FASTMATH)
def normalize_rows_slot(slot, slots, x, shortcut, add, coefficients, lower, upper, out):
    """The slot's share of the rows of batch_norm_act_forward (add False: shortcut is not read) or of
    batch_norm_add_act_forward (run by _runtime.jobs.run_slots). The batch-norm value is rounded to x's dtype
    before the shortcut is added, as the unfused kernels round it; NaN passes the clamp."""
    rows, channels = x.shape
    for r in range(slot * rows // slots, (slot + 1) * rows // slots):
        for c in range(channels):
            value = (x[r, c] - coefficients[0, c]) * coefficients[1, c] + coefficients[2, c]
            if add:
                value = value + shortcut[r, c]
            if value <= lower:
                value = lower
            elif value >= upper:
                value = upper
            out[r, c] = value


# Normalizing passes this short run on the calling thread: waking the pool cost more (batch-1 inference).
NORMALIZE_SERIAL_ELEMENTS = 1 << 16


def batch_norm_act_forward(x, mean, invstd, weight, bias, clamp, coefficients, out):
    """out = (x - mean) * invstd * weight + bias per channel, then clamped to clamp = (lower, upper) (NaN kept;
    NO_CLAMP for none, RELU for ReLU).

    coefficients is a scratch of x's dtype with at least 3 rows of C: the per-channel centre, scale and shift
    rounded to x's dtype exactly as the unfused kernel rounds them.
    """
    _normalize_coefficients(mean, invstd, weight, bias, coefficients)
    run_shares(normalize_rows_slot, 1 if x.size <= NORMALIZE_SERIAL_ELEMENTS else x.shape[0], x, x, False,
               coefficients, *clamp_bounds(clamp, x.dtype), out)


@jit
def _backward_coefficients(sums, mean, invstd, weight, rows, coefficients, grad_weight, grad_bias):
    # rows 3-6 of coefficients: grad_x = (g * [3] + [4]) + (x - [6]) * [5], with g the (masked) output gradient
    for c in range(mean.shape[0]):
        sum_dy = sums[0, c]
        sum_dy_xhat = sums[1, c] * invstd[c]
        grad_weight[c] = sum_dy_xhat
        grad_bias[c] = sum_dy
        scale = np.float64(weight[c]) * invstd[c]
        coefficients[3, c] = scale
        coefficients[4, c] = -scale * sum_dy / rows
        coefficients[5, c] = -scale * invstd[c] * sum_dy_xhat / rows
        coefficients[6, c] = mean[c]


@jit(fastmath=EXACT_FASTMATH)
def _backward_sums_slot(slot, slots, grad_y, x, mean, coefficients, lower, upper, partial_dy, partial_dy_xhat):
    """batch_norm_act_backward's per-chunk sums of the masked gradient and of it times x - mean, for the slot's
    share of the chunks (run by _runtime.jobs.run_slots)."""
    rows, channels = x.shape
    chunks = chunk_count(rows)
    has_lower, has_upper = lower > -np.inf, upper < np.inf
    blocks = channels % LANES == 0 and grad_y.shape == x.shape and partial_dy.shape[1] == channels \
        and partial_dy_xhat.shape[1] == channels and mean.shape[0] == channels and coefficients.shape[1] == channels
    group_rows = max(GROUP_ELEMENTS // channels, 2)
    for chunk in range(slot * chunks // slots, (slot + 1) * chunks // slots):
        for c in range(channels):
            partial_dy[chunk, c] = 0.0
            partial_dy_xhat[chunk, c] = 0.0
        begin, end = chunk * ROWS_PER_CHUNK, min((chunk + 1) * ROWS_PER_CHUNK, rows)
        if blocks:
            for group in range(begin, end, group_rows):
                for c in range(0, channels, LANES):
                    block_grad_sums(grad_y, x, group, min(group + group_rows, end), c, mean, coefficients, lower,
                                     upper, partial_dy, partial_dy_xhat, chunk)
            continue
        for r in range(begin, end):
            for c in range(channels):
                g = np.float64(grad_y[r, c])
                pre_activation = (x[r, c] - coefficients[0, c]) * coefficients[1, c] + coefficients[2, c]
                if not _passes(pre_activation, lower, upper, has_lower, has_upper):
                    g = 0.0
                partial_dy[chunk, c] += g
                partial_dy_xhat[chunk, c] += g * (np.float64(x[r, c]) - mean[c])


@jit
def _finish_backward_sums(rows, partial_dy, partial_dy_xhat, sums, mean, invstd, weight, coefficients, grad_weight,
                          grad_bias):
    chunks = chunk_count(rows)
    _sum_chunks_into(partial_dy, chunks, sums[0])
    _sum_chunks_into(partial_dy_xhat, chunks, sums[1])
    _backward_coefficients(sums, mean, invstd, weight, rows, coefficients, grad_weight, grad_bias)


@jit(fastmath=EXACT_FASTMATH)
def _backward_rows_slot(slot, slots, grad_y, x, coefficients, lower, upper, grad_x):
    """The slot's share of batch_norm_act_backward's rows of grad_x (run by _runtime.jobs.run_slots)."""
    rows, channels = x.shape
    has_lower, has_upper = lower > -np.inf, upper < np.inf
    for r in range(slot * rows // slots, (slot + 1) * rows // slots):
        for c in range(channels):
            centred = (x[r, c] - coefficients[6, c]) * coefficients[5, c]
            pre_activation = (x[r, c] - coefficients[0, c]) * coefficients[1, c] + coefficients[2, c]
            if _passes(pre_activation, lower, upper, has_lower, has_upper):
                grad_x[r, c] = (grad_y[r, c] * coefficients[3, c] + coefficients[4, c]) + centred
            else:
                # a zeroed gradient times the finite scale adds exactly nothing
                grad_x[r, c] = coefficients[4, c] + centred


def batch_norm_act_backward(grad_y, x, mean, invstd, weight, bias, clamp, partial_dy, partial_dy_xhat, sums,
                            coefficients, grad_x, grad_weight, grad_bias):
    """Gradients of training-mode batch norm (through the batch statistics) followed by a clamp to
    clamp = (lower, upper) (NO_CLAMP for none).

    The clamp's mask is recomputed from x (lower < pre-activation < upper, the pre-activation computed as
    batch_norm_act_forward computes it, bit for bit: same coefficients, same operations, no contraction), so
    neither the output nor the masked gradient is read or stored: two passes that read grad_y and x. bias is only
    read for that mask. sums is a (2, C) float64 scratch and coefficients a (7, C) scratch of x's dtype.
    """
    rows = x.shape[0]
    lower, upper = clamp_bounds(clamp, x.dtype)
    _normalize_coefficients(mean, invstd, weight, bias, coefficients)
    run_shares(_backward_sums_slot, chunk_count(rows), grad_y, x, mean, coefficients, lower, upper, partial_dy,
               partial_dy_xhat)
    _finish_backward_sums(rows, partial_dy, partial_dy_xhat, sums, mean, invstd, weight, coefficients, grad_weight,
                          grad_bias)
    run_shares(_backward_rows_slot, rows, grad_y, x, coefficients, lower, upper, grad_x)


@jit(fastmath=EXACT_FASTMATH)
def _masked_backward_sums_slot(slot, slots, grad_y, y, x, mean, lower, upper, grad_shortcut, partial_dy,
                               partial_dy_xhat):
    """batch_norm_add_act_backward's masked gradient (into grad_shortcut) and its per-chunk sums, for the slot's
    share of the chunks (run by _runtime.jobs.run_slots)."""
    rows, channels = x.shape
    chunks = chunk_count(rows)
    has_lower, has_upper = lower > -np.inf, upper < np.inf
    blocks = channels % LANES == 0 and grad_y.shape == x.shape and y.shape == x.shape \
        and grad_shortcut.shape == x.shape and partial_dy.shape[1] == channels \
        and partial_dy_xhat.shape[1] == channels and mean.shape[0] == channels
    group_rows = max(GROUP_ELEMENTS // channels, 2)
    for chunk in range(slot * chunks // slots, (slot + 1) * chunks // slots):
        for c in range(channels):
            partial_dy[chunk, c] = 0.0
            partial_dy_xhat[chunk, c] = 0.0
        begin, end = chunk * ROWS_PER_CHUNK, min((chunk + 1) * ROWS_PER_CHUNK, rows)
        if blocks:
            for group in range(begin, end, group_rows):
                for c in range(0, channels, LANES):
                    block_masked_grad_sums(grad_y, y, x, group, min(group + group_rows, end), c, mean, lower, upper,
                                            grad_shortcut, partial_dy, partial_dy_xhat, chunk)
            continue
        for r in range(begin, end):
            for c in range(channels):
                g = grad_y[r, c] if _passes(y[r, c], lower, upper, has_lower, has_upper) else 0
                grad_shortcut[r, c] = g
                partial_dy[chunk, c] += np.float64(g)
                partial_dy_xhat[chunk, c] += np.float64(g) * (np.float64(x[r, c]) - mean[c])


def batch_norm_add_act_backward(grad_y, y, x, mean, invstd, weight, clamp, partial_dy, partial_dy_xhat, sums,
                                coefficients, grad_shortcut, grad_x, grad_weight, grad_bias):
    """Gradients of clamp(batch_norm(x) + shortcut), training mode, clamp = (lower, upper): grad_shortcut is the
    masked gradient (grad_y where lower < y < upper, y the fused output), written by the reduction pass, which the
    apply pass then reads instead of grad_y and y; grad_x, grad_weight and grad_bias are batch norm's gradients
    given that gradient.

    With RELU the numbers are those of the ReLU backward kernel followed by batch_norm_act_backward without a
    clamp, whose apply pass this is. sums is a (2, C) float64 scratch and coefficients a (7, C) scratch of x's
    dtype (rows 3-6 used).
    """
    rows = x.shape[0]
    run_shares(_masked_backward_sums_slot, chunk_count(rows), grad_y, y, x, mean, *clamp_bounds(clamp, x.dtype),
               grad_shortcut, partial_dy, partial_dy_xhat)
    _finish_backward_sums(rows, partial_dy, partial_dy_xhat, sums, mean, invstd, weight, coefficients, grad_weight,
                          grad_bias)
    run_shares(_backward_rows_slot, rows, grad_shortcut, x, coefficients, *clamp_bounds(NO_CLAMP, x.dtype), grad_x)


# relu_backward_bias_grad runs serially up to this many elements: a parallel region costs more than it saves on a
# memory-bound pass this short when the cores are shared
SERIAL_ELEMENTS = 1 << 19


@jit
def _relu_backward_bias_chunk(grad_y, y, grad_x, partials, chunk):
    """The rows of one ROWS_PER_CHUNK chunk: grad_x masked, and its per-channel float64 column sums in partials."""
    if grad_y.shape[1] >= 16:
        _relu_backward_bias_rows(grad_y, y, grad_x, partials, chunk)
    else:
        _relu_backward_bias_columns(grad_y, y, grad_x, partials, chunk)


@jit
def _relu_backward_bias_rows(grad_y, y, grad_x, partials, chunk):
    # a row is at least one vector: mask and accumulate row by row, vectorized along the channels
    rows, channels = grad_y.shape
    begin, end = chunk * ROWS_PER_CHUNK, min((chunk + 1) * ROWS_PER_CHUNK, rows)
    grad_y_part, y_part, grad_x_part, sums = grad_y[begin:end], y[begin:end], grad_x[begin:end], partials[chunk]
    for c in range(channels):
        sums[c] = 0.0
    for r in range(end - begin):
        for c in range(channels):
            g = grad_y_part[r, c] if y_part[r, c] > 0 else 0.0
            grad_x_part[r, c] = g
            sums[c] += np.float64(g)


COLUMN_BLOCK_ROWS = 8  # _relu_backward_bias_columns' blocks of rows


@jit
def _relu_backward_bias_columns(grad_y, y, grad_x, partials, chunk):
    rows, channels = grad_y.shape
    begin, end = chunk * ROWS_PER_CHUNK, min((chunk + 1) * ROWS_PER_CHUNK, rows)
    # Few channels: loops along a row or down a column run scalar. Blocks of rows (flat slices from 0) are masked and
    # summed by position (vectorized; 6 channels: 0.26 -> 0.15 ms), then folded into the columns in a fixed order.
    period = channels * COLUMN_BLOCK_ROWS
    sums = np.zeros(period)
    first, count = begin * channels, (end - begin) * channels
    y_flat, grad_y_flat, grad_x_flat = y.reshape(-1), grad_y.reshape(-1), grad_x.reshape(-1)
    for start in range(first, first + count, period):
        size = min(period, first + count - start)
        y_block, grad_y_block = y_flat[start:start + size], grad_y_flat[start:start + size]
        grad_x_block = grad_x_flat[start:start + size]
        for i in range(size):
            g = grad_y_block[i] if y_block[i] > 0 else 0
            grad_x_block[i] = g
            sums[i] += np.float64(g)
    for c in range(channels):
        total = 0.0
        for k in range(COLUMN_BLOCK_ROWS):
            total += sums[k * channels + c]
        partials[chunk, c] = total


@jit
def _sum_partials_into_bias(partials, chunks, grad_bias):
    for c in range(grad_bias.shape[0]):
        total = 0.0
        for chunk in range(chunks):
            total += partials[chunk, c]
        grad_bias[c] = total


@jit
def _relu_backward_bias_grad_serial(grad_y, y, grad_x, partials, grad_bias):
    chunks = chunk_count(grad_y.shape[0])
    for chunk in range(chunks):
        _relu_backward_bias_chunk(grad_y, y, grad_x, partials, np.int64(chunk))
    _sum_partials_into_bias(partials, chunks, grad_bias)


@parallel_jit
def _relu_backward_bias_grad_parallel(grad_y, y, grad_x, partials, grad_bias):
    chunks = chunk_count(grad_y.shape[0])
    for chunk in prange(chunks):
        # np.int64: a prange index is uint64 inside the gufunc, which would compile the helper a second time
        _relu_backward_bias_chunk(grad_y, y, grad_x, partials, np.int64(chunk))
    _sum_partials_into_bias(partials, chunks, grad_bias)


def relu_backward_bias_grad(grad_y, y, grad_x, partials, grad_bias):
    """grad_x = grad_y where y > 0 else 0 (y the ReLU output; C-contiguous rows x C), and grad_bias = column sums
    of grad_x: per-chunk float64 partials (a (chunk_count(rows), C) buffer) added in chunk order, so the bits do
    not depend on the thread count or on the serial/parallel choice."""
    if grad_y.size <= SERIAL_ELEMENTS:
        _relu_backward_bias_grad_serial(grad_y, y, grad_x, partials, grad_bias)
    else:
        _relu_backward_bias_grad_parallel(grad_y, y, grad_x, partials, grad_bias)


def batch_norm_add_act_forward(x, shortcut, mean, invstd, weight, bias, clamp, coefficients, out):
    """out = (x - mean) * invstd * weight + bias + shortcut per channel, clamped to clamp = (lower, upper) (NaN
    kept): the end of a residual block (batch norm, shortcut add, activation) in one pass over memory instead of
    two or three.

    The batch-norm value is rounded to x's dtype before the shortcut is added, so the numbers are those of the
    unfused batch norm, add and activation kernels. coefficients is a scratch of x's dtype, as for
    batch_norm_act_forward.
    """
    _normalize_coefficients(mean, invstd, weight, bias, coefficients)
    run_shares(normalize_rows_slot, 1 if x.size <= NORMALIZE_SERIAL_ELEMENTS else x.shape[0], x, shortcut, True,
               coefficients, *clamp_bounds(clamp, x.dtype), out)


@jit
def _add_relu_range(a, b, out, begin, end):
    # slices that start at 0: LLVM vectorizes this loop; indexing from `begin` it stays scalar
    a_part, b_part, out_part = a[begin:end], b[begin:end], out[begin:end]
    for i in range(out_part.size):
        total = a_part[i] + b_part[i]
        out_part[i] = 0 if total <= 0 else total


@parallel_jit
def _add_relu_chunks(a, b, out):
    for chunk in prange((a.size + ELEMENT_CHUNK - 1) // ELEMENT_CHUNK):
        _add_relu_range(a, b, out, chunk * ELEMENT_CHUNK, min(a.size, (chunk + 1) * ELEMENT_CHUNK))


@jit
def add_relu_forward(a, b, out):
    """out = max(a + b, 0) on flat arrays of one dtype (NaN kept), as np.add followed by the ReLU kernel."""
    if a.size <= ELEMENT_CHUNK:
        _add_relu_range(a, b, out, 0, a.size)
    else:
        _add_relu_chunks(a, b, out)
