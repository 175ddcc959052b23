"""2-D pooling kernels (max, average, adaptive average) on NHWC buffers, forward and backward.

Layout: every image buffer is (N, H, W, C), C-contiguous, so the channel loop is innermost and contiguous.
Callers allocate the outputs (the graph executor reuses its buffers) and validate every size: output sizes
come from `shapes.pool_output_size`, strides and dilations are positive, padding at most half the kernel.

Forward kernels run a parallel loop over (image, output row); backward kernels one over (image, input row)
and gather from the outputs whose windows cover each input pixel, so every iteration writes only its own row
of the input gradient: no races, and the summation order does not depend on the thread count.

Max-pool indices follow PyTorch: the flat position ih * W + iw inside the image plane. A NaN in a window wins
(the last NaN in scan order gives the index), as in PyTorch. A window that holds no input element at all
(possible only when a dilation steps over the whole input) gives -inf and index -1.
"""
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from ._runtime import jit, parallel_jit, run_shares
from ._runtime.vector import INDEX, LANES, element_pointer, lane_mask, masked_load, masked_store, splat


@jit
def _first_tap(start, dilation):
    """The first window position at or after 0, stepping by the dilation from a possibly negative start."""
    while start < 0:
        start += dilation
    return start


# Below this many channels the general max-pool loop cannot vectorise over channels, and its data-dependent
# branches mispredict about half the time on real activations; _max_pool2d_forward_few takes over.
FEW_CHANNELS = 16


# Pool passes of at most this many elements (input side) run on the calling thread, where a parallel region costs
# more than it saves (measured on 2 idle cores: bench/README.md, "Figures behind code comments"). The bound favours
# idle cores, as the benchmarks run: on busy cores a parallel region waits for a descheduled thread.
SERIAL_ELEMENTS = 1 << 17


def _run_pool_slots(slot_function, size, jobs, *arguments):
    """slot_function(slot, slots, *arguments) over contiguous shares of the (image, row) jobs (run_shares: no
    reduction crosses a share), or as one slot on the calling thread for a pass of at most SERIAL_ELEMENTS
    elements: either way one compiled function."""
    run_shares(slot_function, 1 if size <= SERIAL_ELEMENTS else jobs, *arguments)


@jit
def _max_pool2d_forward_few(slot, slots, x, out, indices, kernel_h, kernel_w, stride_h, stride_w):
    """max_pool2d_forward for few channels when every window lies inside x (no padding, dilation 1, no window
    clipped by ceil_mode), for the slot's share of the (image, output row) jobs: one channel at a time, the
    running max and its index in scalars updated by selects (no branch to mispredict), scalar indexing only (no
    view per output pixel)."""
    batch, height, width, channels = x.shape
    out_h, out_w = out.shape[1], out.shape[2]
    jobs = batch * out_h
    for job in range(slot * jobs // slots, (slot + 1) * jobs // slots):
        n = job // out_h
        oh = job % out_h
        first_ih = oh * stride_h
        for ow in range(out_w):
            first_iw = ow * stride_w
            if kernel_h == 2 and kernel_w == 2:
                # the common 2x2 window spelled out: taps known at compile time unroll and vectorize
                for c in range(channels):
                    best = x[n, first_ih, first_iw, c]
                    best_index = first_ih * width + first_iw
                    for ih in range(first_ih, first_ih + 2):
                        for iw in range(first_iw, first_iw + 2):
                            value = x[n, ih, iw, c]
                            take = (value > best) | np.isnan(value)
                            best = value if take else best
                            best_index = ih * width + iw if take else best_index
                    out[n, oh, ow, c] = best
                    indices[n, oh, ow, c] = best_index
                continue
            for c in range(channels):
                best = x[n, first_ih, first_iw, c]
                best_index = first_ih * width + first_iw
                for ih in range(first_ih, first_ih + kernel_h):
                    for iw in range(first_iw, first_iw + kernel_w):
                        value = x[n, ih, iw, c]
                        # `value > best` is False for NaN, so NaN is checked explicitly (PyTorch: NaN wins).
                        take = (value > best) | np.isnan(value)
                        best = value if take else best
                        best_index = ih * width + iw if take else best_index
                out[n, oh, ow, c] = best
                indices[n, oh, ow, c] = best_index


# ---------------------------------------------------------------------------------------------------------
# The 2x2 window (every pooling layer of the benchmark models) with all channels of a pixel in one masked vector
# of up to 16 lanes: at few channels a channel loop runs 6 trips per pixel and LLVM's vectorised loop plus its
# remainder and alias checks cost more than the work (LeNet-5's 64x28x28x6 forward: 9-14 ns per output element
# in plain loops). Masked loads and stores touch only the lanes below the channel count, so the last pixel of an
# array reads nothing past its end.
# ---------------------------------------------------------------------------------------------------------

def _scan_2x2(context, builder, x_type, x_value, top, bottom, step, count):
    """The 2x2 kernels' scan, in IR: the taps x[top + c], x[top + step + c], x[bottom + c], x[bottom + step + c] for
    the count (<= 16) lanes c, a later tap winning when greater or NaN. (winner's values, the three later taps'
    win masks in scan order, the lane mask, bytes per element)."""
    element = context.get_value_type(x_type.dtype)
    element_bytes = context.get_abi_sizeof(element)
    values = ir.VectorType(element, LANES)
    mask = lane_mask(builder, count)

    def tap(offset):
        return masked_load(builder, element_pointer(context, builder, x_type, x_value, offset), mask, values,
                           element_bytes)

    best, takes = tap(top), []
    for position in (builder.add(top, step), bottom, builder.add(bottom, step)):
        value = tap(position)
        take = builder.or_(builder.fcmp_ordered(">", value, best), builder.fcmp_unordered("uno", value, value))
        best = builder.select(take, value, best)
        takes.append(take)
    return best, takes, mask, element_bytes


@intrinsic
def _max_2x2_pixel(typingctx, x, top, bottom, step, out, indices, out_offset, first_index, width, count):
    """For the `count` (<= 16) channels of one output pixel: the taps a0 = x[top + c], a1 = x[top + step + c],
    b0 = x[bottom + c], b1 = x[bottom + step + c] (flat element offsets of C-contiguous arrays) scanned in that
    order, a later tap winning when greater or NaN; out[out_offset + c] = the winner, indices[out_offset + c] =
    first_index + (0, 1, width or width + 1)."""
    index = types.intp
    signature = types.void(x, index, index, index, out, indices, index, index, index, index)

    def codegen(context, builder, sig, args):
        x_value, top, bottom, step, out_value, indices_value, out_offset, first_index, width, count = args
        best, takes, mask, element_bytes = _scan_2x2(context, builder, sig.args[0], x_value, top, bottom, step,
                                                     count)
        offsets = ir.VectorType(INDEX, LANES)
        winner = ir.Constant(offsets, [0] * LANES)
        for take, offset in zip(takes, (ir.Constant(INDEX, 1), width, builder.add(width, ir.Constant(INDEX, 1)))):
            winner = builder.select(take, splat(builder, offset, offsets), winner)
        masked_store(builder, best, element_pointer(context, builder, sig.args[4], out_value, out_offset), mask,
                      element_bytes)
        masked_store(builder, builder.add(winner, splat(builder, first_index, offsets)),
                      element_pointer(context, builder, sig.args[5], indices_value, out_offset), mask, 8)
        return context.get_dummy_value()

    return signature, codegen


@intrinsic
def _max_2x2_values(typingctx, x, top, bottom, step, out, out_offset, count):
    """_max_2x2_pixel's out alone, for a forward no backward follows: the same scan (the same winner, NaN included),
    no index selected or stored (2-2.5x faster: the 16 int64 index lanes took more selects and stores than the
    values)."""
    index = types.intp
    signature = types.void(x, index, index, index, out, index, index)

    def codegen(context, builder, sig, args):
        x_value, top, bottom, step, out_value, out_offset, count = args
        best, _, mask, element_bytes = _scan_2x2(context, builder, sig.args[0], x_value, top, bottom, step, count)
        masked_store(builder, best, element_pointer(context, builder, sig.args[4], out_value, out_offset), mask,
                      element_bytes)
        return context.get_dummy_value()

    return signature, codegen


@intrinsic
def _unpool_2x2_pixel(typingctx, grad_out, indices, out_offset, grad_in, top, bottom, step, first_index, width,
                      count):
    """For the `count` (<= 16) channels of one output pixel whose 2x2 window covers no other window's taps:
    grad_in at the taps (top, top + step, bottom, bottom + step; flat element offsets) = grad_out[out_offset + c]
    where indices[out_offset + c] names that tap (first_index + 0, 1, width, width + 1), else 0."""
    index = types.intp
    signature = types.void(grad_out, indices, index, grad_in, index, index, index, index, index, index)

    def codegen(context, builder, sig, args):
        grad_out_value, indices_value, out_offset, grad_in_value, top, bottom, step, first_index, width, count = args
        element = context.get_value_type(sig.args[0].dtype)
        element_bytes = context.get_abi_sizeof(element)
        values = ir.VectorType(element, LANES)
        offsets = ir.VectorType(INDEX, LANES)
        mask = lane_mask(builder, count)
        grad = masked_load(builder, element_pointer(context, builder, sig.args[0], grad_out_value, out_offset), mask,
                            values, element_bytes)
        winner = masked_load(builder, element_pointer(context, builder, sig.args[1], indices_value, out_offset), mask,
                              offsets, 8)
        winner = builder.sub(winner, splat(builder, first_index, offsets))
        zero = ir.Constant(values, [0] * LANES)
        taps = ((top, ir.Constant(INDEX, 0)), (builder.add(top, step), ir.Constant(INDEX, 1)), (bottom, width),
                (builder.add(bottom, step), builder.add(width, ir.Constant(INDEX, 1))))
        for position, offset in taps:
            chosen = builder.icmp_signed("==", winner, splat(builder, offset, offsets))
            masked_store(builder, builder.select(chosen, grad, zero),
                          element_pointer(context, builder, sig.args[3], grad_in_value, position), mask, element_bytes)
        return context.get_dummy_value()

    return signature, codegen


@jit
def _max_pool2d_forward_2x2(slot, slots, x, out, indices, stride_h, stride_w):
    """max_pool2d_forward for a 2x2 window inside x (no padding, dilation 1, no window clipped) on C-contiguous
    operands, for the slot's share of the (image, output row) jobs, a pixel's channels 16 at a time; indices None:
    the values alone (Numba compiles that case apart, without the index path)."""
    batch, height, width, channels = x.shape
    out_h, out_w = out.shape[1], out.shape[2]
    row = width * channels
    jobs = batch * out_h
    for job in range(slot * jobs // slots, (slot + 1) * jobs // slots):
        n = job // out_h
        ih = (job % out_h) * stride_h
        top = (n * height + ih) * row
        first = job * out_w * channels
        for ow in range(out_w):
            left = top + ow * stride_w * channels
            for c in range(0, channels, LANES):
                if indices is None:
                    _max_2x2_values(x, left + c, left + row + c, channels, out, first + ow * channels + c,
                                    min(LANES, channels - c))
                else:
                    _max_2x2_pixel(x, left + c, left + row + c, channels, out, indices, first + ow * channels + c,
                                   ih * width + ow * stride_w, width, min(LANES, channels - c))


@jit
def _max_pool2d_backward_2x2(slot, slots, grad_out, indices, grad_in):
    """max_pool2d_backward for 2x2 windows with stride 2 that lie inside grad_in (no padding, dilation 1), on
    C-contiguous operands, for the slot's share of the (image, output row) jobs: each job writes the two input
    rows its windows cover, zeros in the columns right of the last window, and (the last row of windows of an
    image) zeros in the rows below it."""
    batch, height, width, channels = grad_in.shape
    out_h, out_w = grad_out.shape[1], grad_out.shape[2]
    row = width * channels
    flat_in = grad_in.reshape(-1)
    jobs = batch * out_h
    for job in range(slot * jobs // slots, (slot + 1) * jobs // slots):
        n = job // out_h
        oh = job % out_h
        top = (n * height + 2 * oh) * row
        first = job * out_w * channels
        for ow in range(out_w):
            left = top + 2 * ow * channels
            for c in range(0, channels, LANES):
                _unpool_2x2_pixel(grad_out, indices, first + ow * channels + c, grad_in, left + c, left + row + c,
                                  channels, 2 * oh * width + 2 * ow, width, min(LANES, channels - c))
        for i in range(top + 2 * out_w * channels, top + row):
            flat_in[i] = 0
        for i in range(top + row + 2 * out_w * channels, top + 2 * row):
            flat_in[i] = 0
        if oh == out_h - 1:
            for i in range(top + 2 * row, (n + 1) * height * row):
                flat_in[i] = 0


def _check_same_shape(array, like, name, like_name):
    if array.shape != like.shape:
        raise ValueError(f"max_pool2d kernel: {name} has shape {array.shape}, but {like_name} has {like.shape}")


def _windows_inside(x_shape, out_shape, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                    dilation_w):
    """No padding, dilation 1, and every window inside x (none clipped by ceil_mode)."""
    out_h, out_w = out_shape[1], out_shape[2]
    return (pad_h == 0 and pad_w == 0 and dilation_h == 1 and dilation_w == 1 and out_h > 0 and out_w > 0
            and (out_h - 1) * stride_h + kernel_h <= x_shape[1] and (out_w - 1) * stride_w + kernel_w <= x_shape[2])


def max_pool2d_values_only(x_shape, out_shape, *window):
    """Whether max_pool2d_forward can run without indices on C-contiguous arrays of these shapes: a 2x2 window that
    lies inside x (_windows_inside), the one window whose kernel computes the values apart; the other windows'
    loops write the argmax as they go. window: (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
    dilation_w)."""
    return window[0] == 2 and window[1] == 2 and _windows_inside(x_shape, out_shape, *window)


def max_pool2d_forward(x, out, indices, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                       dilation_h, dilation_w):
    """out[n, oh, ow, c] = max over the window; indices[n, oh, ow, c] = ih * W + iw of the winner, or indices None
    for the values alone (a forward that no backward follows), where max_pool2d_values_only allows it.

    The variant is chosen here in Python, not inside njit, so a step compiles only the one it runs."""
    # the 2x2 variant stores through raw vector pointers, which no bounds check (not even NUMBA_BOUNDSCHECK) sees
    batch, channels, out_h = x.shape[0], x.shape[3], out.shape[1]
    window = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w)
    two_by_two = (max_pool2d_values_only(x.shape, out.shape, *window) and x.flags.c_contiguous
                  and out.flags.c_contiguous)
    if indices is None:
        if not two_by_two:
            raise ValueError(f"max_pool2d kernel: indices=None needs a 2x2 window inside x on C-contiguous arrays "
                             f"(max_pool2d_values_only), but got window {window}, x {x.shape}, out {out.shape}")
        _run_pool_slots(_max_pool2d_forward_2x2, x.size, batch * out_h, x, out, None, stride_h, stride_w)
        return
    _check_same_shape(indices, out, "indices", "out")
    inside = _windows_inside(x.shape, out.shape, *window)
    if two_by_two and indices.flags.c_contiguous:
        _run_pool_slots(_max_pool2d_forward_2x2, x.size, batch * out_h, x, out, indices, stride_h, stride_w)
    elif inside and channels < FEW_CHANNELS:
        _run_pool_slots(_max_pool2d_forward_few, x.size, batch * out_h, x, out, indices, kernel_h, kernel_w,
                        stride_h, stride_w)
    else:
        _max_pool2d_forward_general(x, out, indices, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                                    dilation_h, dilation_w)


@parallel_jit
def _max_pool2d_forward_general(x, out, indices, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                                dilation_h, dilation_w):
    batch, height, width, channels = x.shape
    out_h, out_w = out.shape[1], out.shape[2]
    for job in prange(batch * out_h):
        n = job // out_h
        oh = job % out_h
        h_begin = oh * stride_h - pad_h
        h_end = min(h_begin + (kernel_h - 1) * dilation_h + 1, height)
        h_begin = _first_tap(h_begin, dilation_h)
        for ow in range(out_w):
            w_begin = ow * stride_w - pad_w
            w_end = min(w_begin + (kernel_w - 1) * dilation_w + 1, width)
            w_begin = _first_tap(w_begin, dilation_w)
            best = out[n, oh, ow]
            best_index = indices[n, oh, ow]
            first = h_begin * width + w_begin if (h_begin < h_end and w_begin < w_end) else -1
            for c in range(channels):
                best[c] = -np.inf
                best_index[c] = first
            for ih in range(h_begin, h_end, dilation_h):
                for iw in range(w_begin, w_end, dilation_w):
                    flat = ih * width + iw
                    pixel = x[n, ih, iw]
                    for c in range(channels):
                        value = pixel[c]
                        # `value > best` is False for NaN, so NaN is checked explicitly (PyTorch: NaN wins).
                        if value > best[c] or np.isnan(value):
                            best[c] = value
                            best_index[c] = flat


@jit
def _max_pool2d_backward_tiled(slot, slots, grad_out, indices, grad_in, kernel_h, kernel_w):
    """max_pool2d_backward when the windows tile the input (stride = kernel, no padding or dilation), for the
    slot's share of the (image, input row) jobs: each input pixel lies in at most one window, so it takes that
    window's gradient where it was the winner, else 0."""
    batch, height, width, channels = grad_in.shape
    out_h, out_w = grad_out.shape[1], grad_out.shape[2]
    jobs = batch * height
    # Scalar indexing only: a row view per pixel costs more than the work of a few channels.
    for job in range(slot * jobs // slots, (slot + 1) * jobs // slots):
        n = job // height
        ih = job % height
        oh = ih // kernel_h
        if oh >= out_h:
            grad_in[n, ih] = 0
            continue
        covered = min(width, out_w * kernel_w)
        whole = 0
        if kernel_w == 2:
            # the common 2-wide window spelled out: a constant trip count lets LLVM unroll the pair
            whole = covered // 2
            for ow in range(whole):
                for iw in range(2 * ow, 2 * ow + 2):
                    flat = ih * width + iw
                    for c in range(channels):
                        grad_in[n, ih, iw, c] = grad_out[n, oh, ow, c] if indices[n, oh, ow, c] == flat else 0
        for ow in range(whole, out_w):
            for iw in range(ow * kernel_w, min((ow + 1) * kernel_w, covered)):
                flat = ih * width + iw
                for c in range(channels):
                    grad_in[n, ih, iw, c] = grad_out[n, oh, ow, c] if indices[n, oh, ow, c] == flat else 0
        for iw in range(covered, width):
            for c in range(channels):
                grad_in[n, ih, iw, c] = 0


def max_pool2d_backward(grad_out, indices, grad_in, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                        dilation_h, dilation_w):
    """grad_in[n, ih, iw, c] = sum of grad_out over the windows whose max was (ih, iw) in channel c.

    The variant is chosen here in Python, not inside njit, so a step compiles only the one it runs."""
    _check_same_shape(indices, grad_out, "indices", "grad_out")
    batch, height, width, _ = grad_in.shape
    out_h, out_w = grad_out.shape[1], grad_out.shape[2]
    if (kernel_h == kernel_w == stride_h == stride_w == 2 and pad_h == pad_w == 0 and dilation_h == dilation_w == 1
            and out_h > 0 and out_w > 0 and 2 * out_h <= height and 2 * out_w <= width
            and grad_out.flags.c_contiguous and indices.flags.c_contiguous and grad_in.flags.c_contiguous):
        _run_pool_slots(_max_pool2d_backward_2x2, grad_in.size, batch * out_h, grad_out, indices, grad_in)
    elif (stride_h == kernel_h and stride_w == kernel_w and pad_h == 0 and pad_w == 0 and dilation_h == 1
            and dilation_w == 1):
        _run_pool_slots(_max_pool2d_backward_tiled, grad_in.size, batch * height, grad_out, indices, grad_in,
                        kernel_h, kernel_w)
    else:
        _max_pool2d_backward_general(grad_out, indices, grad_in, kernel_h, kernel_w, stride_h, stride_w, pad_h,
                                     pad_w, dilation_h, dilation_w)


@parallel_jit
def _max_pool2d_backward_general(grad_out, indices, grad_in, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                                 dilation_h, dilation_w):
    batch, height, width, channels = grad_in.shape
    out_h, out_w = grad_out.shape[1], grad_out.shape[2]
    for job in prange(batch * height):
        n = job // height
        ih = job % height
        row = grad_in[n, ih]
        row[:, :] = 0
        for iw in range(width):
            flat = ih * width + iw
            target = row[iw]
            # taps in decreasing order visit the covering outputs in increasing order, like PyTorch's scatter
            for ki in range(kernel_h - 1, -1, -1):
                t = ih + pad_h - ki * dilation_h
                if t < 0 or t % stride_h != 0:
                    continue
                oh = t // stride_h
                if oh >= out_h:
                    continue
                for kj in range(kernel_w - 1, -1, -1):
                    u = iw + pad_w - kj * dilation_w
                    if u < 0 or u % stride_w != 0:
                        continue
                    ow = u // stride_w
                    if ow >= out_w:
                        continue
                    source_index = indices[n, oh, ow]
                    source_grad = grad_out[n, oh, ow]
                    for c in range(channels):
                        if source_index[c] == flat:
                            target[c] += source_grad[c]


@jit
def _avg_window(oh, ow, height, width, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                count_include_pad, divisor_override):
    """PyTorch's clipped window (h_begin, h_end, w_begin, w_end) and its divisor (0 for an empty window).

    The padded extent is clipped at the far padding edge before counting, so a window that ceil_mode pushes
    past the padding is divided by fewer elements than kernel_h * kernel_w even with count_include_pad.
    """
    h_begin = oh * stride_h - pad_h
    w_begin = ow * stride_w - pad_w
    h_end = min(h_begin + kernel_h, height + pad_h)
    w_end = min(w_begin + kernel_w, width + pad_w)
    padded_size = (h_end - h_begin) * (w_end - w_begin)
    h_begin = max(h_begin, 0)
    w_begin = max(w_begin, 0)
    h_end = min(h_end, height)
    w_end = min(w_end, width)
    if h_begin >= h_end or w_begin >= w_end:
        return h_begin, h_end, w_begin, w_end, 0
    if divisor_override != 0:
        divisor = divisor_override
    elif count_include_pad:
        divisor = padded_size
    else:
        divisor = (h_end - h_begin) * (w_end - w_begin)
    return h_begin, h_end, w_begin, w_end, divisor


@parallel_jit
def avg_pool2d_forward(x, out, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, count_include_pad,
                       divisor_override):
    """out[n, oh, ow, c] = window sum / divisor (divisor_override 0 means none); empty windows give 0."""
    batch, height, width, channels = x.shape
    out_h, out_w = out.shape[1], out.shape[2]
    for job in prange(batch * out_h):
        n = job // out_h
        oh = job % out_h
        for ow in range(out_w):
            h_begin, h_end, w_begin, w_end, divisor = _avg_window(
                oh, ow, height, width, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                count_include_pad, divisor_override)
            total = out[n, oh, ow]
            total[:] = 0
            if divisor == 0:
                continue
            for ih in range(h_begin, h_end):
                for iw in range(w_begin, w_end):
                    pixel = x[n, ih, iw]
                    for c in range(channels):
                        total[c] += pixel[c]
            for c in range(channels):
                total[c] = total[c] / divisor


@parallel_jit
def avg_pool2d_backward(grad_out, grad_in, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                        count_include_pad, divisor_override):
    """grad_in[n, ih, iw, c] = sum over the windows covering (ih, iw) of grad_out / that window's divisor."""
    batch, height, width, channels = grad_in.shape
    out_h, out_w = grad_out.shape[1], grad_out.shape[2]
    for job in prange(batch * height):
        n = job // height
        ih = job % height
        row = grad_in[n, ih]
        row[:, :] = 0
        # outputs whose window [o * stride - pad, o * stride - pad + kernel) covers ih
        oh_first = max((ih + pad_h - kernel_h + stride_h) // stride_h, 0)
        oh_last = min((ih + pad_h) // stride_h, out_h - 1)
        for iw in range(width):
            target = row[iw]
            ow_first = max((iw + pad_w - kernel_w + stride_w) // stride_w, 0)
            ow_last = min((iw + pad_w) // stride_w, out_w - 1)
            for oh in range(oh_first, oh_last + 1):
                for ow in range(ow_first, ow_last + 1):
                    h_begin, h_end, w_begin, w_end, divisor = _avg_window(
                        oh, ow, height, width, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                        count_include_pad, divisor_override)
                    if divisor == 0:
                        continue
                    source_grad = grad_out[n, oh, ow]
                    for c in range(channels):
                        target[c] += source_grad[c] / divisor


@jit
def _adaptive_bounds(index, in_size, out_size):
    """PyTorch's adaptive window: [floor(i * In / Out), ceil((i + 1) * In / Out))."""
    return (index * in_size) // out_size, ((index + 1) * in_size + out_size - 1) // out_size


@parallel_jit
def adaptive_avg_pool2d_forward(x, out):
    """out[n, oh, ow, c] = mean of x over the adaptive window of (oh, ow); an empty input gives NaN."""
    batch, height, width, channels = x.shape
    out_h, out_w = out.shape[1], out.shape[2]
    for job in prange(batch * out_h):
        n = job // out_h
        oh = job % out_h
        h_begin, h_end = _adaptive_bounds(oh, height, out_h)
        for ow in range(out_w):
            w_begin, w_end = _adaptive_bounds(ow, width, out_w)
            total = out[n, oh, ow]
            total[:] = 0
            count = (h_end - h_begin) * (w_end - w_begin)
            if count == 0:
                total[:] = np.nan  # the mean of nothing, as PyTorch gives it
                continue
            for ih in range(h_begin, h_end):
                for iw in range(w_begin, w_end):
                    pixel = x[n, ih, iw]
                    for c in range(channels):
                        total[c] += pixel[c]
            for c in range(channels):
                total[c] = total[c] / count


@parallel_jit
def adaptive_avg_pool2d_backward(grad_out, grad_in):
    """grad_in[n, ih, iw, c] = sum over the adaptive windows covering (ih, iw) of grad_out / window size."""
    batch, height, width, channels = grad_in.shape
    out_h, out_w = grad_out.shape[1], grad_out.shape[2]
    for job in prange(batch * height):
        n = job // height
        ih = job % height
        row = grad_in[n, ih]
        row[:, :] = 0
        # the outputs covering ih are exactly [floor(ih * Out / In), ceil((ih + 1) * Out / In))
        oh_first, oh_stop = _adaptive_bounds(ih, out_h, height)
        for iw in range(width):
            target = row[iw]
            ow_first, ow_stop = _adaptive_bounds(iw, out_w, width)
            for oh in range(oh_first, min(oh_stop, out_h)):
                h_begin, h_end = _adaptive_bounds(oh, height, out_h)
                if ih < h_begin or ih >= h_end:
                    continue
                for ow in range(ow_first, min(ow_stop, out_w)):
                    w_begin, w_end = _adaptive_bounds(ow, width, out_w)
                    if iw < w_begin or iw >= w_end:
                        continue
                    count = (h_end - h_begin) * (w_end - w_begin)
                    source_grad = grad_out[n, oh, ow]
                    for c in range(channels):
                        target[c] += source_grad[c] / count
