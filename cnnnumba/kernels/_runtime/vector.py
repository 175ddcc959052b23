"""LLVM IR building blocks for the kernels written as Numba intrinsics: <16 x float> loads, stores, broadcasts
and FMAs on raw element pointers. 16 lanes is the channel block of every layout; LLVM splits a vector into the
target's registers (one zmm, two ymm, four xmm or NEON q registers), and the tiles are sized per tier for that
(conv2d/tiles.py). Only target-independent LLVM intrinsics are named here (llvm.fma, llvm.fmuladd, llvm.masked.*),
so the IR compiles for any CPU."""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .machine import target_machine

LANES = 16
INDEX = ir.IntType(64)


def vector_type():
    return ir.VectorType(ir.FloatType(), LANES)


def fma_function(builder, vector):
    """The fused multiply-add a * b + c of `vector`s: llvm.fma where the target has an FMA instruction; elsewhere
    (SSE4.2) llvm.fma would become a library call per lane, so llvm.fmuladd, which LLVM lowers to a multiply and
    an add there (results then differ from FMA tiers in the last bit, the same on every run)."""
    name = "llvm.fma" if target_machine().fma else "llvm.fmuladd"
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector, [vector] * 3),
                                          f"{name}.{_mangled(vector)}")


def vector_fma(builder):
    return fma_function(builder, vector_type())


def element_pointer(context, builder, array_type, array_value, offset):
    """A pointer to element `offset` (counted in elements from the start of the data) of a Numba array."""
    data = context.make_array(array_type)(context, builder, array_value).data
    return builder.gep(data, [offset])


def lane_bytes(vector):
    """Bytes of one lane of a float or double vector."""
    return 8 if isinstance(vector.element, ir.DoubleType) else 4


def load_vector(builder, pointer, vector=None):
    """A `vector` (default <16 x float>) loaded from pointer, which need only be lane-aligned."""
    vector = vector or vector_type()
    return builder.load(builder.bitcast(pointer, vector.as_pointer()), align=lane_bytes(vector))


def store_vector(builder, value, pointer):
    builder.store(value, builder.bitcast(pointer, value.type.as_pointer()), align=lane_bytes(value.type))


def broadcast(builder, scalar):
    vector = vector_type()
    single = builder.insert_element(ir.Constant(vector, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(single, ir.Constant(vector, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES))


def offset_pointer(builder, pointer, elements):
    """pointer + elements, for a constant (int) or runtime (IR value) element count."""
    if isinstance(elements, int):
        elements = ir.Constant(INDEX, elements)
    return builder.gep(pointer, [elements])


def splat(builder, scalar, vector):
    """A `vector`-typed value with every lane = scalar (any element type; broadcast above is the float one)."""
    single = builder.insert_element(ir.Constant(vector, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(single, ir.Constant(vector, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), vector.count), [0] * vector.count))


def lane_mask(builder, count, lanes=LANES):
    """<lanes x i1>: the lanes below count (an i64 value; none when count <= 0)."""
    indices = ir.VectorType(INDEX, lanes)
    return builder.icmp_signed("<", ir.Constant(indices, list(range(lanes))), splat(builder, count, indices))


def _mangled(vector):
    element = vector.element
    if isinstance(element, ir.IntType):
        return f"v{vector.count}i{element.width}"
    return f"v{vector.count}f{32 if isinstance(element, ir.FloatType) else 64}"


def masked_load(builder, pointer, mask, vector=None, element_bytes=4):
    """The lanes of mask loaded from pointer (others 0): nothing is read for a lane that is off, so a vector may
    run past the end of an array."""
    vector = vector or vector_type()
    function = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vector, [vector.as_pointer(), ir.IntType(32), mask.type, vector]),
        f"llvm.masked.load.{_mangled(vector)}.p0")
    return builder.call(function, [builder.bitcast(pointer, vector.as_pointer()),
                                   ir.Constant(ir.IntType(32), element_bytes), mask,
                                   ir.Constant(vector, [0] * vector.count)])


def masked_store(builder, value, pointer, mask, element_bytes=4):
    """The lanes of mask stored at pointer; nothing is written for a lane that is off."""
    vector = value.type
    function = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [vector, vector.as_pointer(), ir.IntType(32), mask.type]),
        f"llvm.masked.store.{_mangled(vector)}.p0")
    builder.call(function, [value, builder.bitcast(pointer, vector.as_pointer()),
                            ir.Constant(ir.IntType(32), element_bytes), mask])


# Streaming kernels ask for the data this many bytes ahead of what they read: on the 2-core Xeon VMs here the
# hardware prefetchers left a pass over arrays fresh from memory waiting on every line (batch norm's backward
# sums over 64x32x32x16 took 0.83-0.94 ms against 0.29 from cache, with this 0.57; bench/README.md).
PREFETCH_BYTES = 2048
# The column-matrix weight gradient prefetches only gradients of at least this many bytes: a smaller one stays in
# cache from the pass that wrote it, and the hints cost instructions (LeNet-5's second layer, 410 KB: the AVX2
# step 1.02x slower). Batch norm's passes always prefetch: at 4096 x 16 the hints cost 4-7 us a call.
PREFETCH_MIN_BYTES = 1 << 20


def prefetch(builder, pointer):
    """A hint to bring the cache line holding pointer into L1 for reading (llvm.prefetch: no fault, no result, on
    any target)."""
    byte_pointer = ir.IntType(8).as_pointer()
    function = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer] + [ir.IntType(32)] * 3), "llvm.prefetch.p0")
    builder.call(function, [builder.bitcast(pointer, byte_pointer), ir.Constant(ir.IntType(32), 0),
                            ir.Constant(ir.IntType(32), 3), ir.Constant(ir.IntType(32), 1)])


@intrinsic
def prefetch_span(typingctx, array, offset, count):
    """Prefetches the cache lines holding array's flat elements offset..offset + count - 1 (of a C-contiguous
    array; past its end the hint is harmless and dropped)."""
    def codegen(context, builder, sig, args):
        array_value, offset, count = args
        data = context.make_array(sig.args[0])(context, builder, array_value).data
        step = ir.Constant(INDEX, max(1, 64 // context.get_abi_sizeof(context.get_value_type(sig.args[0].dtype))))
        lines = builder.sdiv(builder.add(count, builder.sub(step, ir.Constant(INDEX, 1))), step)
        with cgutils.for_range(builder, lines) as line:
            prefetch(builder, builder.gep(data, [builder.add(offset, builder.mul(line.index, step))]))
        return context.get_dummy_value()

    return types.void(array, types.intp, types.intp), codegen
