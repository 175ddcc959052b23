"""Process-wide settings read once from the environment: threads, random generator, default dtype."""
import os

import numpy as np

DEFAULT_DTYPE = np.float32
FLOAT_DTYPES = (np.float32, np.float64)

_generator = np.random.default_rng(int(os.environ.get("CNNNUMBA_SEED", "0")))


def manual_seed(seed):
    """Seed every random draw cnnnumba makes (initialization, dropout, shuffling without an explicit seed)."""
    global _generator
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"manual_seed expected an int seed, but got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"manual_seed expected a non-negative seed, but got {seed}")
    _generator = np.random.default_rng(int(seed))
    return _generator


def generator():
    """The global generator that `manual_seed` resets."""
    return _generator


def get_rng_state():
    """The global generator's state as a JSON-serialisable dict (for checkpoints)."""
    return _generator.bit_generator.state


def set_rng_state(state):
    _generator.bit_generator.state = state


def set_num_threads(n):
    """Number of threads the parallel kernels use (at most the number Numba started with)."""
    import numba

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"set_num_threads expected an int, but got {type(n).__name__}")
    if not 1 <= n <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(
            f"set_num_threads expected a value between 1 and {numba.config.NUMBA_NUM_THREADS} "
            f"(the threads Numba started with), but got {n}"
        )
    numba.set_num_threads(int(n))


def get_num_threads():
    import numba

    return numba.get_num_threads()


_env_threads = os.environ.get("CNNNUMBA_NUM_THREADS")
if _env_threads:
    set_num_threads(int(_env_threads))
