"""The Numba decorators every kernel uses, so compile options live in one place."""
import functools

import numba
from numba.core.cpu import ParallelOptions

from .cache import guard_cache_entries

# fastmath without nnan/ninf: NaN and Inf must survive max-pooling, losses and anomaly checks.
# Without reassoc: a kernel that calls another carries a copy of the callee's code, optimised again with the caller,
# and which copy a call reaches depends on what the process compiled or loaded first. With reassociation allowed,
# the copies summed in different orders, so a process that compiled its kernels and one that loaded them from the
# cache trained to different weights from one seed (tests/reliability/test_determinism.py). The hot loops keep
# their order explicitly (register-tile intrinsics), so this costs them nothing.
# Numba accepts only a plain set (not a frozenset) for fastmath, hence the set(...) copies below.
FASTMATH = frozenset({"contract", "arcp", "nsz"})
# The elementwise batch-norm passes also run without contraction: with it LLVM rounded some elements differently
# depending on where the thread count split the rows (vectorized body against scalar remainder).
EXACT_FASTMATH = {"arcp", "nsz"}
# Parallel kernels too: Numba compiles a prange body into a library of its own and links a copy of it into the
# kernel, where it is optimised again. A process that compiles the kernel runs the first (already in the JIT, it
# wins over the copy's weak symbol), one that loads the kernel from the cache runs the copy; with contraction the
# copies fused different products of a*b + c*d (SGD's momentum * buffer + g), and trained to different weights.

# Parallel kernels parallelise their explicit prange loops and nothing else. With parallel=True Numba also turns
# every array expression, np.zeros/np.empty_like/astype, slice assignment (`row[:] = 0`) and in-place array
# operator into a parfor of its own, each lowered to a separate gufunc; in these kernels those are small
# per-channel or per-row set-ups (nested ones run serially anyway), yet their parfor lowering made up most of the
# cold compile of a parallel kernel.
# Fusion of adjacent prange loops stays on, as before.
PARALLEL_OPTIONS = {"prange": True, "fusion": True, "comprehension": False, "reduction": False,
                    "inplace_binop": False, "setitem": False, "numpy": False, "stencil": False}


def _numba_jit(function, parallel=False, **options):
    # A ParallelOptions object, not the dict: Numba pops a dict's keys as it reads them, so a kernel's second
    # signature would compile with every option back on; it copies an object instead.
    if parallel is True:
        parallel = ParallelOptions(dict(PARALLEL_OPTIONS))
    return numba.njit(function, parallel=parallel, **options)


# error_model="numpy": a division by zero gives inf/nan (floats) or 0 (integers) as in NumPy, instead of a
# ZeroDivisionError raised from compiled code. Kernels are reached only with validated shapes, so the raising
# branches never fire; building them compiled Numba's exception and string-formatting helpers into every kernel.
_OPTIONS = dict(cache=True, nogil=True, error_model="numpy", fastmath=set(FASTMATH))
_jit = functools.partial(_numba_jit, **_OPTIONS)
_parallel_jit = functools.partial(_numba_jit, parallel=True, **dict(_OPTIONS, fastmath=set(EXACT_FASTMATH)))


def _guarded(decorator):
    """`decorator` (used bare or with options) whose kernels' cache entries are checked (cache.guard_cache_entries):
    a truncated file is a miss, and so is an entry from before a kernel source changed."""
    def decorate(function=None, **options):
        if function is None:
            return lambda f: decorate(f, **options)
        return guard_cache_entries(decorator(function, **options))

    return decorate


jit = _guarded(_jit)
parallel_jit = _guarded(_parallel_jit)
