"""The few-channel kernels' register tiles (small_bands.py runs them over channel-planar frames): a forward tile
of a few output channels x `vectors` * LANES flattened pixels, and a weight-gradient tile of a few kw taps x output
channels summed over flattened pixels. Their shape is TIER_TILES' `few_channel` (tiles.py)."""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .._runtime import jit
from .._runtime.vector import INDEX, LANES, broadcast, fma_function, vector_type
from .tiles import TILES

# ---------------------------------------------------------------------------------------------------------
# float32 forward tile, spelled out in LLVM IR so its accumulators stay in vector registers (plain loops keep
# them in memory: one load and one store per FMA). A tile is `outputs` output channels x 32 flattened pixels: per
# tap two <16 x float> frame loads and `outputs` broadcast weights feed 2 * outputs FMAs.
# ---------------------------------------------------------------------------------------------------------

PIXEL_TILE_VECTORS, PIXEL_TILE_OUTPUTS = TILES["few_channel"]
PIXEL_TILE_PIXELS = PIXEL_TILE_VECTORS * LANES


def _make_pixel_tile(outputs):
    """An intrinsic computing acc[c, p0:p0 + PIXEL_TILE_PIXELS] for `outputs` consecutive output channels c of one
    band."""

    @intrinsic
    def pixel_tile(typingctx, acc, acc_offset, acc_row_step, frame, frame_offset, weight, weight_offset, bias,
                   bias_offset, channels_in, plane_step, kernel_h, row_step, kernel_w, tap_step, channels_out):
        """acc[acc_offset + c * acc_row_step + i] = bias[bias_offset + c] + sum over (ci, kh, kw) of
        frame[frame_offset + ci * plane_step + kh * row_step + kw * tap_step + i] *
        weight[weight_offset + ((ci * kernel_h + kh) * kernel_w + kw) * channels_out + c], for c < outputs and
        i < PIXEL_TILE_PIXELS; offsets and steps count float32 elements."""
        index = types.intp
        signature = types.void(acc, index, index, frame, index, weight, index, bias, index, index, index, index,
                               index, index, index, index)

        def codegen(context, builder, sig, args):
            (acc_value, acc_offset, acc_row_step, frame_value, frame_offset, weight_value, weight_offset, bias_value,
             bias_offset, channels_in, plane_step, kernel_h, row_step, kernel_w, tap_step, channels_out) = args
            vector = vector_type()
            fma = fma_function(builder, vector)

            def pointer(position, value, offset):
                data = context.make_array(sig.args[position])(context, builder, value).data
                return builder.gep(data, [offset])

            acc_pointer = pointer(0, acc_value, acc_offset)
            frame_pointer = pointer(3, frame_value, frame_offset)
            weight_pointer = pointer(5, weight_value, weight_offset)
            bias_pointer = pointer(7, bias_value, bias_offset)
            slots = []
            for c in range(outputs):
                start = broadcast(builder, builder.load(builder.gep(bias_pointer, [ir.Constant(INDEX, c)])))
                for _ in range(PIXEL_TILE_VECTORS):
                    slot = cgutils.alloca_once(builder, vector)
                    builder.store(start, slot)
                    slots.append(slot)
            with cgutils.for_range(builder, channels_in) as channel:
                frame_plane = builder.gep(frame_pointer, [builder.mul(channel.index, plane_step)])
                weight_plane = builder.gep(weight_pointer,
                                           [builder.mul(builder.mul(channel.index, kernel_h),
                                                        builder.mul(kernel_w, channels_out))])
                with cgutils.for_range(builder, kernel_h) as tap_h:
                    frame_row = builder.gep(frame_plane, [builder.mul(tap_h.index, row_step)])
                    weight_row = builder.gep(weight_plane,
                                             [builder.mul(tap_h.index, builder.mul(kernel_w, channels_out))])
                    with cgutils.for_range(builder, kernel_w) as tap_w:
                        frame_tap = builder.gep(frame_row, [builder.mul(tap_w.index, tap_step)])
                        weight_tap = builder.gep(weight_row, [builder.mul(tap_w.index, channels_out)])
                        pixels = [builder.load(builder.bitcast(builder.gep(frame_tap, [ir.Constant(INDEX, v * LANES)]),
                                                               vector.as_pointer()), align=4)
                                  for v in range(PIXEL_TILE_VECTORS)]
                        for c in range(outputs):
                            w = broadcast(builder, builder.load(builder.gep(weight_tap, [ir.Constant(INDEX, c)])))
                            for v in range(PIXEL_TILE_VECTORS):
                                slot = slots[c * PIXEL_TILE_VECTORS + v]
                                builder.store(builder.call(fma, [w, pixels[v], builder.load(slot)]), slot)
            for c in range(outputs):
                acc_row = builder.gep(acc_pointer, [builder.mul(acc_row_step, ir.Constant(INDEX, c))])
                for v in range(PIXEL_TILE_VECTORS):
                    target = builder.bitcast(builder.gep(acc_row, [ir.Constant(INDEX, v * LANES)]), vector.as_pointer())
                    builder.store(builder.load(slots[c * PIXEL_TILE_VECTORS + v]), target, align=4)
            return context.get_dummy_value()

        return signature, codegen

    return pixel_tile


_pixel_tile_full = _make_pixel_tile(PIXEL_TILE_OUTPUTS)
_pixel_tile_7 = _make_pixel_tile(7)
_pixel_tile_6 = _make_pixel_tile(6)
_pixel_tile_5 = _make_pixel_tile(5)
_pixel_tile_4 = _make_pixel_tile(4)
_pixel_tile_3 = _make_pixel_tile(3)
_pixel_tile_2 = _make_pixel_tile(2)
_pixel_tile_1 = _make_pixel_tile(1)


@jit
def run_pixel_tiles(acc, acc_row_step, frame, weight, bias, p0, channels_in, plane_step, kernel_h, row_step,
                     kernel_w, tap_step, channels_out):
    """All output channels of the PIXEL_TILE_PIXELS pixels from p0: tiles of PIXEL_TILE_OUTPUTS output channels,
    then one tile as wide as the rest (LeNet-5's 6 channels in one tile, not 4 + 2)."""
    co = 0
    while co + PIXEL_TILE_OUTPUTS <= channels_out:
        _pixel_tile_full(acc, co * acc_row_step + p0, acc_row_step, frame, p0, weight, co, bias, co, channels_in,
                      plane_step, kernel_h, row_step, kernel_w, tap_step, channels_out)
        co += PIXEL_TILE_OUTPUTS
    rest = channels_out - co
    args_offset = co * acc_row_step + p0
    if rest == 7:
        _pixel_tile_7(acc, args_offset, acc_row_step, frame, p0, weight, co, bias, co, channels_in, plane_step,
                      kernel_h, row_step, kernel_w, tap_step, channels_out)
    elif rest == 6:
        _pixel_tile_6(acc, args_offset, acc_row_step, frame, p0, weight, co, bias, co, channels_in, plane_step,
                      kernel_h, row_step, kernel_w, tap_step, channels_out)
    elif rest == 5:
        _pixel_tile_5(acc, args_offset, acc_row_step, frame, p0, weight, co, bias, co, channels_in, plane_step,
                      kernel_h, row_step, kernel_w, tap_step, channels_out)
    elif rest == 4:
        _pixel_tile_4(acc, args_offset, acc_row_step, frame, p0, weight, co, bias, co, channels_in, plane_step,
                      kernel_h, row_step, kernel_w, tap_step, channels_out)
    elif rest == 3:
        _pixel_tile_3(acc, args_offset, acc_row_step, frame, p0, weight, co, bias, co, channels_in, plane_step,
                      kernel_h, row_step, kernel_w, tap_step, channels_out)
    elif rest == 2:
        _pixel_tile_2(acc, args_offset, acc_row_step, frame, p0, weight, co, bias, co, channels_in, plane_step,
                      kernel_h, row_step, kernel_w, tap_step, channels_out)
    elif rest == 1:
        _pixel_tile_1(acc, args_offset, acc_row_step, frame, p0, weight, co, bias, co, channels_in, plane_step,
                      kernel_h, row_step, kernel_w, tap_step, channels_out)


def _make_pixel_weight_tile(taps, outputs):
    """An intrinsic adding to the weight gradient of `taps` consecutive kw taps x `outputs` output channels the
    dot products of their frame rows with grad_out, over `vectors` * 16 flattened pixels."""

    @intrinsic
    def weight_tile(typingctx, partial, partial_offset, partial_tap_step, frame, frame_offset, tap_step, grad,
                    grad_offset, grad_row_step, vectors):
        """partial[partial_offset + k * partial_tap_step + c] += sum over i < vectors * 16 of
        frame[frame_offset + k * tap_step + i] * grad[grad_offset + c * grad_row_step + i], for k < taps and
        c < outputs; offsets and steps count float32 elements. The 16 lanes are summed in a fixed order."""
        index = types.intp
        signature = types.void(partial, index, index, frame, index, index, grad, index, index, index)

        def codegen(context, builder, sig, args):
            (partial_value, partial_offset, partial_tap_step, frame_value, frame_offset, tap_step, grad_value,
             grad_offset, grad_row_step, vectors) = args
            vector = vector_type()
            fma = fma_function(builder, vector)

            def pointer(position, value, offset):
                data = context.make_array(sig.args[position])(context, builder, value).data
                return builder.gep(data, [offset])

            partial_pointer = pointer(0, partial_value, partial_offset)
            frame_pointer = pointer(3, frame_value, frame_offset)
            grad_pointer = pointer(6, grad_value, grad_offset)
            frame_rows = [builder.gep(frame_pointer, [builder.mul(tap_step, ir.Constant(INDEX, k))])
                          for k in range(taps)]
            grad_rows = [builder.gep(grad_pointer, [builder.mul(grad_row_step, ir.Constant(INDEX, c))])
                         for c in range(outputs)]
            slots = []
            for _ in range(taps * outputs):
                slot = cgutils.alloca_once(builder, vector)
                builder.store(ir.Constant(vector, [0.0] * LANES), slot)
                slots.append(slot)
            with cgutils.for_range(builder, vectors) as step:
                offset = builder.mul(step.index, ir.Constant(INDEX, LANES))

                def load(row):
                    return builder.load(builder.bitcast(builder.gep(row, [offset]), vector.as_pointer()), align=4)

                frames = [load(row) for row in frame_rows]
                grads = [load(row) for row in grad_rows]
                for k in range(taps):
                    for c in range(outputs):
                        slot = slots[k * outputs + c]
                        builder.store(builder.call(fma, [frames[k], grads[c], builder.load(slot)]), slot)
            for k in range(taps):
                tap_row = builder.gep(partial_pointer, [builder.mul(partial_tap_step, ir.Constant(INDEX, k))])
                for c in range(outputs):
                    total = builder.load(slots[k * outputs + c])
                    width = LANES
                    while width > 1:  # halves added lane by lane: a fixed order in log2(16) vector steps
                        width //= 2
                        halves = [builder.shuffle_vector(total, total, ir.Constant(ir.VectorType(ir.IntType(32),
                                                                                                 width),
                                                                                   list(range(start, start + width))))
                                  for start in (0, width)]
                        total = builder.fadd(halves[0], halves[1])
                    target = builder.gep(tap_row, [ir.Constant(INDEX, c)])
                    builder.store(builder.fadd(builder.load(target),
                                               builder.extract_element(total, ir.Constant(ir.IntType(32), 0))),
                                  target)
            return context.get_dummy_value()

        return signature, codegen

    return weight_tile


_weight_tile_4x4 = _make_pixel_weight_tile(4, 4)
_weight_tile_4x2 = _make_pixel_weight_tile(4, 2)
_weight_tile_4x1 = _make_pixel_weight_tile(4, 1)
_weight_tile_1x4 = _make_pixel_weight_tile(1, 4)
_weight_tile_1x2 = _make_pixel_weight_tile(1, 2)
_weight_tile_1x1 = _make_pixel_weight_tile(1, 1)


@jit
def run_pixel_weight_tiles(partial, partial_offset, partial_tap_step, frame, frame_offset, tap_step, grad,
                           grad_row_step, vectors, four_taps, channels_out):
    """One kw block (4 taps when four_taps, else 1) x all output channels: tiles of 4 channels, then 2 and 1."""
    co = 0
    while co + 4 <= channels_out:
        if four_taps:
            _weight_tile_4x4(partial, partial_offset + co, partial_tap_step, frame, frame_offset, tap_step, grad,
                             co * grad_row_step, grad_row_step, vectors)
        else:
            _weight_tile_1x4(partial, partial_offset + co, partial_tap_step, frame, frame_offset, tap_step, grad,
                             co * grad_row_step, grad_row_step, vectors)
        co += 4
    if co + 2 <= channels_out:
        if four_taps:
            _weight_tile_4x2(partial, partial_offset + co, partial_tap_step, frame, frame_offset, tap_step, grad,
                             co * grad_row_step, grad_row_step, vectors)
        else:
            _weight_tile_1x2(partial, partial_offset + co, partial_tap_step, frame, frame_offset, tap_step, grad,
                             co * grad_row_step, grad_row_step, vectors)
        co += 2
    if co < channels_out:
        if four_taps:
            _weight_tile_4x1(partial, partial_offset + co, partial_tap_step, frame, frame_offset, tap_step, grad,
                             co * grad_row_step, grad_row_step, vectors)
        else:
            _weight_tile_1x1(partial, partial_offset + co, partial_tap_step, frame, frame_offset, tap_step, grad,
                             co * grad_row_step, grad_row_step, vectors)
