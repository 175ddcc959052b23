"""The Numba decorators every kernel uses, so compile options live in one place."""
import functools

import numba

from .._config import recover_corrupt_cache_entries

# fastmath without nnan/ninf: NaN and Inf must survive max-pooling, losses and anomaly checks.
# Numba accepts only a plain set (not a frozenset) for fastmath, hence the set(...) copies below.
FASTMATH = frozenset({"contract", "arcp", "reassoc", "nsz"})

_jit = functools.partial(numba.njit, cache=True, nogil=True, fastmath=set(FASTMATH))
_parallel_jit = functools.partial(numba.njit, cache=True, nogil=True, parallel=True, fastmath=set(FASTMATH))


def _recovering(decorator):
    """`decorator` (used bare or with options) whose kernels treat a truncated cache file as a cache miss."""
    def decorate(function=None, **options):
        if function is None:
            return lambda f: decorate(f, **options)
        return recover_corrupt_cache_entries(decorator(**options)(function))

    return decorate


jit = _recovering(_jit)
parallel_jit = _recovering(_parallel_jit)
