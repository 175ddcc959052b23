"""The Numba decorators every kernel uses, so compile options live in one place."""
import functools

import numba

# fastmath without nnan/ninf: NaN and Inf must survive max-pooling, losses and anomaly checks.
FASTMATH = frozenset({"contract", "arcp", "reassoc", "nsz"})

jit = functools.partial(numba.njit, cache=True, nogil=True, fastmath=FASTMATH)
parallel_jit = functools.partial(numba.njit, cache=True, nogil=True, parallel=True, fastmath=FASTMATH)
