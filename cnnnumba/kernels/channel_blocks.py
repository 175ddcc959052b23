"""Per-channel sums over one chunk's rows, 16 channels at a time, for the batch-norm passes of fused.py: LLVM IR
intrinsics with float64 accumulators in vector registers, for channel counts that are a multiple of 16.

In plain Numba loops over a runtime channel count the float64 accumulators live in memory, and those loops were
bound by that arithmetic, not by memory (bench/README.md, "Figures behind code comments"). These intrinsics walk a
group of rows for one block of 16 channels with <16 x double> accumulators in registers: two sets, one for the even
and one for the odd rows counted from the group's first, so that consecutive rows do not wait on each other's
additions, added together and to the sums so far at the end. That order depends on the chunk alone, so the results
do not depend on the thread count. The arrays are C-contiguous (the typing refuses other layouts), and the callers
check that every block lies inside every array it touches before taking this path. The kernels call them straight
from their loop bodies: through a jitted per-chunk helper, the helper's code was compiled once more.
"""
import math

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._runtime.vector import INDEX, LANES, PREFETCH_BYTES, element_pointer, fma_function, lane_bytes, prefetch, splat

def _all_c_contiguous(*arrays):
    return all(isinstance(a, types.Array) and a.layout == "C" for a in arrays)


def _doubles():
    return ir.VectorType(ir.DoubleType(), LANES)


def _load_block(builder, pointer, element):
    """The 16 elements at pointer, as <16 x element>."""
    return builder.load(builder.bitcast(pointer, ir.VectorType(element, LANES).as_pointer()), align=4)


def _store_block(builder, value, pointer):
    builder.store(value, builder.bitcast(pointer, value.type.as_pointer()), align=4)


def _widen(builder, vector):
    """A <16 x float> or <16 x double> vector as <16 x double>, exactly."""
    if isinstance(vector.type.element, ir.DoubleType):
        return vector
    return builder.fpext(vector, _doubles())


def _fma(builder, a, b, c):
    return builder.call(fma_function(builder, a.type), [a, b, c])


def _block_rows(context, builder, array_type, array_value, c0):
    """row -> a pointer to element (row, c0) of a C-contiguous 2-D array."""
    width = cgutils.unpack_tuple(builder, context.make_array(array_type)(context, builder, array_value).shape, 2)[1]
    block = element_pointer(context, builder, array_type, array_value, c0)
    return lambda row: builder.gep(block, [builder.mul(row, width)])


def _rows_ahead(builder, row, element):
    """The row whose block a block kernel prefetches while at `row`: PREFETCH_BYTES of the block's 16 lanes on."""
    block_bytes = LANES * lane_bytes(ir.VectorType(element, LANES))
    return builder.add(row, ir.Constant(INDEX, max(1, PREFETCH_BYTES // block_bytes)))


def _sum_rows_in_pairs(builder, begin, end, add_row, sums):
    """Folds add_row(row, accumulators) -> accumulators over the rows begin..end-1, the even rows (counted from
    begin) into `sums` and the odd ones into a set of zeros; returns the two sets added lane by lane."""
    zero = ir.Constant(_doubles(), [0.0] * LANES)
    slots = [[cgutils.alloca_once_value(builder, value) for value in values] for values in (sums, [zero] * len(sums))]

    def add(row, parity):
        for slot, value in zip(slots[parity], add_row(row, [builder.load(slot) for slot in slots[parity]])):
            builder.store(value, slot)

    two = ir.Constant(INDEX, 2)
    count = builder.sub(end, begin)
    pairs = builder.sdiv(count, two)
    with cgutils.for_range(builder, pairs) as pair:
        row = builder.add(begin, builder.mul(pair.index, two))
        add(row, 0)
        add(builder.add(row, ir.Constant(INDEX, 1)), 1)
    with builder.if_then(builder.icmp_signed("!=", builder.mul(pairs, two), count)):
        add(builder.sub(end, ir.Constant(INDEX, 1)), 0)
    return [builder.fadd(builder.load(even), builder.load(odd)) for even, odd in zip(*slots)]


@intrinsic
def block_moments(typingctx, x, first, begin, end, c0, deviations, squares):
    """For the 16 channels c of the block at c0, over the rows r of begin..end-1, in float64: adds to
    deviations[c] the sum of d = x[r, c] - x[first, c] and to squares[c] the sum of d * d."""
    if not _all_c_contiguous(x, deviations, squares):
        return None
    index = types.intp
    signature = types.void(x, index, index, index, index, deviations, squares)

    def codegen(context, builder, sig, args):
        x_value, first, begin, end, c0, deviations_value, squares_value = args
        element = context.get_value_type(sig.args[0].dtype)
        x_row = _block_rows(context, builder, sig.args[0], x_value, c0)
        shift = _widen(builder, _load_block(builder, x_row(first), element))

        def add_row(row, accumulators):
            prefetch(builder, x_row(_rows_ahead(builder, row, element)))
            deviation = builder.fsub(_widen(builder, _load_block(builder, x_row(row), element)), shift)
            total, squared = accumulators
            return builder.fadd(total, deviation), _fma(builder, deviation, deviation, squared)

        outputs = [element_pointer(context, builder, sig.args[k], value, c0)
                   for k, value in ((5, deviations_value), (6, squares_value))]
        sums = _sum_rows_in_pairs(builder, begin, end, add_row,
                                  [_load_block(builder, pointer, ir.DoubleType()) for pointer in outputs])
        for value, pointer in zip(sums, outputs):
            _store_block(builder, value, pointer)
        return context.get_dummy_value()

    return signature, codegen


def _grad_sums_codegen(context, builder, array_types, x_value, begin, end, c0, mean_value, partial_dy_value,
                       partial_dy_xhat_value, chunk, gradient_at):
    """The two sums of the batch-norm backward over the rows begin..end-1 for the block at c0, in float64, added to
    partial_dy[chunk, c] (the sum of g) and partial_dy_xhat[chunk, c] (the sum of g * (x[r, c] - mean[c])),
    g = gradient_at(row) (the masked gradient, in x's dtype). array_types: the Numba types of x, mean, partial_dy
    and partial_dy_xhat."""
    x_type, mean_type, partial_dy_type, partial_dy_xhat_type = array_types
    element = context.get_value_type(x_type.dtype)
    x_row = _block_rows(context, builder, x_type, x_value, c0)
    mean = _load_block(builder, element_pointer(context, builder, mean_type, mean_value, c0), ir.DoubleType())

    def add_row(row, accumulators):
        gradient = _widen(builder, gradient_at(row))
        centred = builder.fsub(_widen(builder, _load_block(builder, x_row(row), element)), mean)
        total, weighted = accumulators
        return builder.fadd(total, gradient), _fma(builder, gradient, centred, weighted)

    outputs = [_block_rows(context, builder, array_type, value, c0)(chunk)
               for array_type, value in ((partial_dy_type, partial_dy_value),
                                         (partial_dy_xhat_type, partial_dy_xhat_value))]
    sums = _sum_rows_in_pairs(builder, begin, end, add_row,
                              [_load_block(builder, pointer, ir.DoubleType()) for pointer in outputs])
    for value, pointer in zip(sums, outputs):
        _store_block(builder, value, pointer)
    return context.get_dummy_value()


def _clamp_mask(builder, element, lower, upper):
    """values -> <16 x i1>, the lanes where lower < value < upper (a clamp's gradient passes), lower and upper
    scalars of type element; an infinite bound is no bound, and NaN is outside any other."""
    vector, flags = ir.VectorType(element, LANES), ir.VectorType(ir.IntType(1), LANES)
    lower_vector, upper_vector = splat(builder, lower, vector), splat(builder, upper, vector)
    no_lower = splat(builder, builder.fcmp_ordered("==", lower, ir.Constant(element, -math.inf)), flags)
    no_upper = splat(builder, builder.fcmp_ordered("==", upper, ir.Constant(element, math.inf)), flags)

    def mask(values):
        above = builder.or_(builder.fcmp_ordered(">", values, lower_vector), no_lower)
        return builder.and_(above, builder.or_(builder.fcmp_ordered("<", values, upper_vector), no_upper))

    return mask


def _clamp_bounds_typed(x, lower, upper):
    return isinstance(lower, types.Float) and lower == x.dtype and upper == x.dtype


@intrinsic
def block_grad_sums(typingctx, grad_y, x, begin, end, c0, mean, coefficients, lower, upper, partial_dy,
                     partial_dy_xhat, chunk):
    """The batch-norm backward's sums (see _grad_sums_codegen) with g = grad_y where lower < the pre-activation
    (x - coefficients[0]) * coefficients[1] + coefficients[2] < upper (see _clamp_mask), else 0; the
    pre-activation computed in x's dtype without contraction as batch_norm_act_forward computes it."""
    if not _all_c_contiguous(grad_y, x, mean, coefficients, partial_dy, partial_dy_xhat) \
            or not _clamp_bounds_typed(x, lower, upper):
        return None
    index = types.intp
    signature = types.void(grad_y, x, index, index, index, mean, coefficients, lower, upper, partial_dy,
                           partial_dy_xhat, index)

    def codegen(context, builder, sig, args):
        (grad_y_value, x_value, begin, end, c0, mean_value, coefficients_value, lower, upper, partial_dy_value,
         partial_dy_xhat_value, chunk) = args
        element = context.get_value_type(sig.args[1].dtype)
        grad_row = _block_rows(context, builder, sig.args[0], grad_y_value, c0)
        x_row = _block_rows(context, builder, sig.args[1], x_value, c0)
        coefficient_row = _block_rows(context, builder, sig.args[6], coefficients_value, c0)
        centre, scale, shift = (_load_block(builder, coefficient_row(ir.Constant(INDEX, k)), element)
                                for k in range(3))
        zero = ir.Constant(ir.VectorType(element, LANES), [0.0] * LANES)
        passes = _clamp_mask(builder, element, lower, upper)

        def gradient_at(row):
            ahead = _rows_ahead(builder, row, element)
            prefetch(builder, grad_row(ahead))
            prefetch(builder, x_row(ahead))
            gradient = _load_block(builder, grad_row(row), element)
            pre_activation = builder.fadd(builder.fmul(builder.fsub(_load_block(builder, x_row(row), element), centre),
                                                       scale), shift)
            return builder.select(passes(pre_activation), gradient, zero)

        arrays = (sig.args[1], sig.args[5], sig.args[9], sig.args[10])
        return _grad_sums_codegen(context, builder, arrays, x_value, begin, end, c0, mean_value, partial_dy_value,
                                  partial_dy_xhat_value, chunk, gradient_at)

    return signature, codegen


@intrinsic
def block_masked_grad_sums(typingctx, grad_y, y, x, begin, end, c0, mean, lower, upper, grad_shortcut, partial_dy,
                            partial_dy_xhat, chunk):
    """The batch-norm backward's sums (see _grad_sums_codegen) with g = grad_y where lower < y < upper (see
    _clamp_mask), else 0, also stored into grad_shortcut."""
    if not _all_c_contiguous(grad_y, y, x, mean, grad_shortcut, partial_dy, partial_dy_xhat) \
            or not _clamp_bounds_typed(x, lower, upper):
        return None
    index = types.intp
    signature = types.void(grad_y, y, x, index, index, index, mean, lower, upper, grad_shortcut, partial_dy,
                           partial_dy_xhat, index)

    def codegen(context, builder, sig, args):
        (grad_y_value, y_value, x_value, begin, end, c0, mean_value, lower, upper, grad_shortcut_value,
         partial_dy_value, partial_dy_xhat_value, chunk) = args
        element = context.get_value_type(sig.args[2].dtype)
        grad_row = _block_rows(context, builder, sig.args[0], grad_y_value, c0)
        y_row = _block_rows(context, builder, sig.args[1], y_value, c0)
        x_row = _block_rows(context, builder, sig.args[2], x_value, c0)
        shortcut_row = _block_rows(context, builder, sig.args[9], grad_shortcut_value, c0)
        zero = ir.Constant(ir.VectorType(element, LANES), [0.0] * LANES)
        passes = _clamp_mask(builder, element, lower, upper)

        def gradient_at(row):
            ahead = _rows_ahead(builder, row, element)
            for rows_of in (grad_row, y_row, x_row):
                prefetch(builder, rows_of(ahead))
            kept = passes(_load_block(builder, y_row(row), element))
            gradient = builder.select(kept, _load_block(builder, grad_row(row), element), zero)
            _store_block(builder, gradient, shortcut_row(row))
            return gradient

        arrays = (sig.args[2], sig.args[6], sig.args[10], sig.args[11])
        return _grad_sums_codegen(context, builder, arrays, x_value, begin, end, c0, mean_value, partial_dy_value,
                                  partial_dy_xhat_value, chunk, gradient_at)

    return signature, codegen
