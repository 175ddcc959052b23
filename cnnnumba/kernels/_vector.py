"""LLVM IR building blocks for the kernels written as Numba intrinsics: <16 x float> loads, stores, broadcasts
and FMAs on raw element pointers (AVX-512 width; LLVM splits them on narrower machines)."""
from llvmlite import ir
from numba.core import cgutils

LANES = 16
INDEX = ir.IntType(64)


def vector_type():
    return ir.VectorType(ir.FloatType(), LANES)


def vector_fma(builder):
    vector = vector_type()
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector, [vector] * 3), "llvm.fma.v16f32")


def element_pointer(context, builder, array_type, array_value, offset):
    """A pointer to element `offset` (counted in elements from the start of the data) of a Numba array."""
    data = context.make_array(array_type)(context, builder, array_value).data
    return builder.gep(data, [offset])


def load_vector(builder, pointer):
    return builder.load(builder.bitcast(pointer, vector_type().as_pointer()), align=4)


def store_vector(builder, value, pointer):
    builder.store(value, builder.bitcast(pointer, value.type.as_pointer()), align=4)


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
