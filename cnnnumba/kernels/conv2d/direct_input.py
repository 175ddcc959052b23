"""The register-tiled input gradient (Variant.DIRECT's backward-input): at stride 1 one forward of grad_out with
the kernel flipped and its channel axes swapped; strided, one forward per stride phase, all in one parallel region.
"""
import numpy as np

from .._runtime import jit, run_slots
from . import direct
from .direct import _bind_forward_fast, _forward_geometry, _forward_rows_jobs
from .workspace import slots_within, spec_bytes, specs_bytes


@jit
def _forward_phases_slot(slot, slots, x, weights, bias, out, strips, phases, reduction_block, relu):
    """The share of one slot of all the phases' jobs (see _forward_phases)."""
    batch, channels = x.shape[0], x.shape[3]
    strip_size = strips.shape[0] // slots
    total = phases[-1, 22]
    first_unit, last_unit = slot * total // slots, (slot + 1) * total // slots
    # With an image or more per slot, the slot runs every phase of one image before the next: the phases write
    # interleaved pixels of the same rows, which then stay in cache (phase after phase over the whole batch read
    # and wrote each cache line of out once per phase). Fewer images: shares of all the phases' jobs by cost.
    by_image = batch >= slots
    images = (slot + 1) * batch // slots - slot * batch // slots if by_image else 1
    for image in range(images):
        n = slot * batch // slots + image
        for p in range(phases.shape[0]):
            g = phases[p]
            jobs, cost, start = g[20], g[21], g[22] - g[20] * g[21]
            if by_image:
                first, last = n * (jobs // batch), (n + 1) * (jobs // batch)
            else:
                # a job belongs to the slot whose share holds its first unit of work
                first = min(jobs, max(0, -((start - first_unit) // cost)))
                last = min(jobs, max(0, -((start - last_unit) // cost)))
            if first >= last:
                continue
            geometry = (g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9], g[10], g[11], g[12],
                        reduction_block)
            weight = weights[g[18]:g[18] + g[14] * g[15] * g[16] * g[17]].reshape((g[14], g[15], g[16], g[17]))
            strip = strips[slot * strip_size:slot * strip_size + g[13] * g[19] * channels].reshape((g[13], g[19],
                                                                                                 channels))
            _forward_rows_jobs(first, last, x, weight, bias, out, strip, geometry, relu, 1)


def _forward_phases(x, weights, bias, out, strips, phases, reduction_block, relu, slots):
    """Several register-tiled forwards of one x in one parallel region: the stride phases of a strided
    backward-input, each writing its own grid of out pixels. phases is an int64 table, one row per forward:
    its _bind_forward_rows geometry (13 values, the reduction block apart), strip rows, its weight's 4-D shape,
    the weight's offset in the flat weights, frame width, jobs, cost per job (taps) and the cumulative cost up to
    and including it. The slots take contiguous shares of the total cost (a one-tap phase's jobs are cheaper
    than a four-tap one's); strips is flat, one strip of the largest phase per slot."""
    run_slots(_forward_phases_slot, slots, slots, x, weights, bias, out, strips, phases, reduction_block, relu)


def _input_phases(size, kernel, stride, pad):
    """The stride phases of one axis of a backward-input: for each first input index i0 < stride, the input
    indices i0, i0 + stride, ... receive the taps k = a, a + stride, ... (a = (i0 + pad) % stride); as a
    stride-1 correlation of grad_out with those taps reversed, that is (i0, count, first tap a, taps, pad)."""
    phases = []
    for first in range(min(stride, size)):
        tap = (first + pad) % stride
        taps = len(range(tap, kernel, stride))
        phases.append((first, -(-(size - first) // stride), tap, taps, taps - 1 - (first + pad) // stride))
    return phases


def _phase_grid(out_shape, weight_shape, stride, padding):
    """The (first_h, count_h, tap_h, taps_h, pad_h, first_w, count_w, tap_w, taps_w, pad_w) of every stride
    phase of a strided backward-input (see _input_phases)."""
    return [phase_h + phase_w for phase_h in _input_phases(out_shape[1], weight_shape[0], stride[0], padding[0])
            for phase_w in _input_phases(out_shape[2], weight_shape[1], stride[1], padding[1])]


# The columns of a phase table row (_forward_phases_slot reads them by index): 14 of the forward geometry, then
# strip_h, the sub-kernel's shape (4), its offset in the weight buffer, frame_w, jobs, cost and cumulative cost.
PHASE_COLUMNS = 23
PHASE_WEIGHT_OFFSET = 18


def _phase_table(out_shape, weight_shape, stride, padding, geometries):
    """The int64 table of _forward_phases for the phases that have taps (phases without taps only get zeros):
    their flipped sub-kernels lie one after the other in the workspace's weight buffer (the phases share out
    the taps, so it holds them all), folded to (taps_h, 1, taps_w * C_out, C_in)."""
    rows, offset, cumulative = [], 0, 0
    channels_in, channels_out = weight_shape[2], weight_shape[3]
    for phase, (frame_w, rows_per_job, strip_h, jobs) in zip(_phase_grid(out_shape, weight_shape, stride, padding),
                                                             geometries):
        first_h, count_h, _, taps_h, pad_h, first_w, count_w, _, taps_w, pad_w = phase
        if taps_h == 0 or taps_w == 0:
            continue
        cost = taps_h * taps_w
        cumulative += jobs * cost
        rows.append((1, 1, pad_h, pad_w, 1, 1, rows_per_job, count_h, count_w, first_h, first_w, stride[0], stride[1],
                     strip_h, taps_h, 1, taps_w * channels_out, channels_in, offset, frame_w, jobs, cost, cumulative))
        offset += taps_h * taps_w * channels_out * channels_in
    return np.array(rows, np.int64).reshape(-1, PHASE_COLUMNS)


def _backward_input_phases(grad_out, weight, out, stride, padding, scratch, details):
    """Strided (dilation 1) backward-input as stride x stride phases, each a register-tiled forward of grad_out
    with a flipped sub-kernel (copied into the workspace) writing every stride-th input pixel: no zero-inserted
    grad_out, no wasted taps; all phases run in one parallel region."""
    slots, _, phases = details
    weights = scratch["weight"]
    for phase in _phase_grid(out.shape, weight.shape, stride, padding):
        first_h, _, tap_h, taps_h, _, first_w, _, tap_w, taps_w, _ = phase
        if taps_h == 0 or taps_w == 0:
            out[:, first_h::stride[0], first_w::stride[1]] = 0.0
    for row, phase in zip(phases, [p for p in _phase_grid(out.shape, weight.shape, stride, padding) if p[3] and p[8]]):
        tap_h, taps_h, tap_w, taps_w = phase[2], phase[3], phase[7], phase[8]
        offset = row[PHASE_WEIGHT_OFFSET]
        sub = weights[offset:offset + taps_h * taps_w * weight.shape[3] * weight.shape[2]]
        sub.reshape(taps_h, taps_w, weight.shape[3], weight.shape[2])[...] = \
            weight[tap_h::stride[0], tap_w::stride[1]][::-1, ::-1].transpose(0, 1, 3, 2)
    if len(phases):
        _forward_phases(grad_out, weights, scratch["zero_bias"], out, scratch["strips"], phases,
                        direct.REDUCTION_BLOCK, 0, slots)


def backward_input_plan(dtype, x_shape, weight_shape, out_shape, stride, padding, dilation, budget):
    """(specs, (slots, geometries, phase table or None)) of the register-tiled input gradient: one forward of
    grad_out (out_shape) with the kernel flipped, or one per stride phase."""
    kernel_h, kernel_w, group_in, channels_out = weight_shape
    transposed = (kernel_h, kernel_w, channels_out, group_in)
    specs = (("zero_bias", (x_shape[3],), dtype), ("weight", (kernel_h * kernel_w * channels_out * group_in,), dtype))
    if max(stride) > 1:
        geometries = [_forward_geometry(out_shape, (p[3], p[8], channels_out, group_in), (p[1], p[6]), (1, 1),
                                        (p[4], p[9]), (1, 1), dtype.itemsize)
                      for p in _phase_grid(x_shape, weight_shape, stride, padding)]
    else:
        pad = (dilation[0] * (kernel_h - 1) - padding[0], dilation[1] * (kernel_w - 1) - padding[1])
        geometries = [_forward_geometry(out_shape, transposed, x_shape[1:3], (1, 1), pad, dilation, dtype.itemsize)]
    strip = max(g[2] * g[0] * channels_out for g in geometries)
    slots = slots_within(spec_bytes((strip,), dtype), specs_bytes(specs), max(g[3] for g in geometries), budget)
    phases = _phase_table(x_shape, weight_shape, stride, padding, geometries) if max(stride) > 1 else None
    return specs + (("strips", (slots * strip,), dtype),), (slots, geometries, phases)


def backward_input(grad_out, weight, out, stride, padding, dilation, scratch, details):
    scratch["zero_bias"][...] = 0.0
    if max(stride) > 1:
        _backward_input_phases(grad_out, weight, out, stride, padding, scratch, details)
        return
    # With stride 1 the input gradient is a forward convolution of grad_out, padded by the dilated kernel
    # extent minus the forward padding, with the kernel flipped and its channel axes swapped.
    kernel_h, kernel_w = weight.shape[:2]
    pad_top = dilation[0] * (kernel_h - 1) - padding[0]
    pad_left = dilation[1] * (kernel_w - 1) - padding[1]
    flipped = scratch["weight"].reshape(kernel_h, kernel_w, weight.shape[3], weight.shape[2])
    flipped[...] = weight[::-1, ::-1].transpose(0, 1, 3, 2)
    slots, (geometry,), _ = details
    _bind_forward_fast(grad_out, flipped, scratch["zero_bias"], out, (1, 1), (pad_top, pad_left), dilation,
                       scratch["strips"], slots, geometry)()
