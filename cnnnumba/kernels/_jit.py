"""The Numba decorators every kernel uses, so compile options live in one place."""
import functools

import numba

# fastmath without nnan/ninf: NaN and Inf must survive max-pooling, losses and anomaly checks.
# Numba accepts only a plain set (not a frozenset) for fastmath, hence the set(...) copies below.
FASTMATH = frozenset({"contract", "arcp", "reassoc", "nsz"})

jit = functools.partial(numba.njit, cache=True, nogil=True, fastmath=set(FASTMATH))
parallel_jit = functools.partial(numba.njit, cache=True, nogil=True, parallel=True, fastmath=set(FASTMATH))
