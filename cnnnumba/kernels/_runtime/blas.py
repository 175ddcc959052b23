"""BLAS products on Numba's threads, and control of the OpenBLAS thread pools that NumPy and SciPy bundle.

Every product cnnnumba runs (the linear layers, the im2col convolutions) goes through `matmul`: OpenBLAS (SciPy's,
what Numba's np.dot calls) held at one thread, the product split into blocks of its output's rows or columns that
Numba's workers run. Numba's OpenMP workers then are the only threads the kernels use: they can spin between kernels
(GNU OpenMP's default, environment.py) without taking a core from OpenBLAS's workers, under which spin
MobileNetV2's products had run 1.1-5.6x slower, and a kernel after a serial stretch need not wait for them to wake.
OpenBLAS has no public Python API for its thread count; its C setters are found by globbing the wheels'
bundled-library folders (.libs) and called through ctypes."""
import ctypes
import glob
import os
import sys

import numba
import numpy as np
from numba import prange, types
from numba.extending import overload
from numba.np.linalg import _BLAS

from .environment import OPENBLAS_LOADED_EARLY
from .jit import jit, parallel_jit

# Products of at most this many multiply-adds run as one block on the calling thread: OpenBLAS runs them on one
# thread anyway (GEMM_MULTITHREAD_THRESHOLD, 65536 * 4), and a parallel region would cost more than their split.
SERIAL_MACS = 1 << 18
# A larger product is split into one block per thread (Numba's count now), of its output's rows, or of its columns
# where it has fewer rows than columns: each block packs its own share of the larger operand and all of the
# smaller, as OpenBLAS's threads do (more blocks packed the smaller operand more often: 8 blocks ran ResNet-18's
# 64 x 4608 x 512 products 1.4x slower than 2). A block has at least BLOCK_MACS multiply-adds and BLOCK_MIN_SIDE
# rows or columns. Each output entry is one BLAS call's sum over the whole inner dimension, whatever the split.
BLOCK_MACS = 1 << 18
BLOCK_MIN_SIDE = 16


def _openblas_libraries(package):
    """Handles (ctypes.CDLL) of the OpenBLAS libraries bundled with `package`, which must already be imported."""
    module = sys.modules.get(package)
    if module is None:
        return
    package_dir = os.path.dirname(module.__file__)
    for path in (glob.glob(package_dir + ".libs/*openblas*")
                 + glob.glob(os.path.join(package_dir, ".libs", "*openblas*"))):
        try:
            yield ctypes.CDLL(path)  # already loaded: this only returns a handle
        except OSError:
            continue


def openblas_thread_setters(package):
    """ctypes (get, set) of the thread count of the OpenBLAS bundled with `package`: "scipy" (what Numba's np.dot
    calls) or "numpy" (what NumPy's matmul calls); (None, None) when the package is missing or its BLAS is another
    library."""
    try:
        __import__(package)
        if package == "scipy":
            import scipy.linalg.cython_blas  # noqa: F401  (what Numba binds np.dot to; loads the library)
    except ImportError:
        return None, None
    for library in _openblas_libraries(package):
        # 64-bit-integer builds (NumPy's wheels) suffix their symbols with 64_
        for name in ("scipy_openblas{}", "openblas{}", "scipy_openblas{}64_", "openblas{}64_"):
            get = getattr(library, name.format("_get_num_threads"), None)
            set_ = getattr(library, name.format("_set_num_threads"), None)
            if get is not None and set_ is not None:
                get.argtypes, get.restype = [], ctypes.c_int
                set_.argtypes, set_.restype = [ctypes.c_int], None
                return get, set_
    return None, None


def reread_thread_timeout(package):
    """Make the OpenBLAS bundled with `package`, loaded before environment.py set OPENBLAS_THREAD_TIMEOUT, take
    that value: it reads its environment again (openblas_read_env) and stops its thread pool
    (blas_thread_shutdown_, what its fork handler calls), which its next threaded call starts afresh with the
    new timeout. With the default timeout its workers spin about 0.1 s after each call, taking the cores from the
    Numba kernels between the GEMMs: a MobileNetV2 inference step ran 2.2x slower. Returns whether it could."""
    for library in _openblas_libraries(package):
        read_env = getattr(library, "openblas_read_env", None)
        shutdown = getattr(library, "blas_thread_shutdown_", None)
        if read_env is not None and shutdown is not None:
            read_env.argtypes, read_env.restype = [], None
            shutdown.argtypes, shutdown.restype = [], ctypes.c_int
            read_env()
            shutdown()
            return True
    return False


_GET_BLAS_THREADS, _SET_BLAS_THREADS = openblas_thread_setters("scipy")
for _package in OPENBLAS_LOADED_EARLY:
    reread_thread_timeout(_package)


def product_blocks(rows, inner, columns, threads):
    """How many blocks `matmul` splits a (rows x inner) @ (inner x columns) product into on `threads` threads: of
    its rows where rows >= columns, else of its columns."""
    macs = rows * inner * columns
    if macs <= SERIAL_MACS:
        return 1
    return int(max(1, min(threads, max(rows, columns) // BLOCK_MIN_SIDE, macs // BLOCK_MACS)))


def _blas_gemm(transa, transb, m, n, k, a, lda, b, ldb, c, ldc):
    """c = op(a) op(b) in BLAS's column-major terms, for float32 or float64 views (jitted only: see below)."""
    raise NotImplementedError


@overload(_blas_gemm)
def _blas_gemm_for_dtype(transa, transb, m, n, k, a, lda, b, ldb, c, ldc):
    # Numba's own binding of SciPy's ?gemm (private: numba.np.linalg._BLAS), the one np.dot calls, here with the
    # leading dimensions np.dot does not take, so a block of rows or columns of a strided view needs no copy
    dtype = c.dtype
    gemm = _BLAS().numba_xxgemm(dtype)
    kind = np.int8(ord("s" if dtype == types.float32 else "d"))

    def call(transa, transb, m, n, k, a, lda, b, ldb, c, ldc):
        one = np.ones(1, c.dtype)
        zero = np.zeros(1, c.dtype)
        gemm(kind, transa, transb, m, n, k, one.ctypes, a.ctypes, lda, b.ctypes, ldb, zero.ctypes, c.ctypes, ldc)

    return call


@jit
def _gemm(a, b, out):
    """out (M, N) = a (M, K) @ b (K, N); each a 2-D view with a unit stride along one axis, out's along its rows.
    Row-major out is BLAS's column-major out^T = b^T a^T, its leading dimension out's row stride; a row-major
    operand is its own transpose there ('N'), a column-major one is taken transposed ('T')."""
    item = out.itemsize
    rows, columns = out.shape
    inner = a.shape[1]
    if b.strides[1] == item:
        transb, ldb = np.int8(ord("N")), max(b.strides[0] // item, columns)
    else:
        transb, ldb = np.int8(ord("T")), max(b.strides[1] // item, inner)
    if a.strides[1] == item:
        transa, lda = np.int8(ord("N")), max(a.strides[0] // item, inner)
    else:
        transa, lda = np.int8(ord("T")), max(a.strides[1] // item, rows)
    _blas_gemm(transb, transa, columns, rows, inner, b, ldb, a, lda, out, max(out.strides[0] // item, columns))


@parallel_jit
def _matmul_blocks(a, b, out, blocks):
    rows, columns = out.shape
    for block in prange(blocks):
        if rows >= columns:
            first, last = block * rows // blocks, (block + 1) * rows // blocks
            _gemm(a[first:last], b, out[first:last])
        else:
            first, last = block * columns // blocks, (block + 1) * columns // blocks
            _gemm(a, b[:, first:last], out[:, first:last])


@jit
def _matrix_vector(matrix, vector, out):
    np.dot(matrix, vector, out)


def _unit_strided(matrix):
    """Whether BLAS takes `matrix` as it is: a unit stride along one axis, the other at least that axis' length."""
    item = matrix.itemsize
    (rows, columns), (row_step, column_step) = matrix.shape, matrix.strides
    return (column_step == item and row_step >= columns * item) or (row_step == item and column_step >= rows * item)


def matmul(a, b, out):
    """out (M, N) = a (M, K) @ b (K, N), float32 or float64, out C-contiguous; a and b any 2-D views (transposed
    ones too; one without a unit stride is copied first). Split into product_blocks(M, K, N, threads) blocks of
    rows or columns on Numba's threads, each one single-threaded BLAS call (SciPy's OpenBLAS held at one thread
    meanwhile, so that no call of its own starts its threads); a product of an empty inner dimension is zeros."""
    rows, inner = a.shape
    if inner == 0:
        out[...] = 0
        return out
    if out.size == 0:
        return out
    a, b = (m if _unit_strided(m) else np.ascontiguousarray(m) for m in (a, b))
    blocks = product_blocks(rows, inner, b.shape[1], numba.get_num_threads())
    previous = _GET_BLAS_THREADS() if _SET_BLAS_THREADS is not None else 1
    if previous != 1:
        _SET_BLAS_THREADS(1)
    try:
        # one output row or column: BLAS's matrix-vector product (its GEMM took 9x as long for a classifier's
        # 1 x 512 @ 512 x 1000)
        if rows == 1:
            _matrix_vector(b.T, np.ascontiguousarray(a[0]), out[0])
        elif out.shape[1] == 1:
            _matrix_vector(a, np.ascontiguousarray(b[:, 0]), out[:, 0])
        elif blocks == 1:
            _gemm(a, b, out)
        else:
            _matmul_blocks(a, b, out, blocks)
    finally:
        if previous != 1:
            _SET_BLAS_THREADS(previous)
    return out
