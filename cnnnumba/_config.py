"""Process-wide settings read once from the environment: threads, random generator, dtype, compile cache."""
import hashlib
import os
import sys
import tempfile
import warnings

import numpy as np

# GNU OpenMP (Numba's "omp" threading layer here) keeps its workers spinning for 300,000 iterations after each
# parallel region. The BLAS calls between kernels (linear layers, im2col GEMMs) then share the cores with spinning
# threads, and a 0.1 ms GEMM can wait out a scheduler time slice (4-8 ms). A short spin still keeps back-to-back
# kernels warm. It must be set before the threading layer loads; a user's own setting wins.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")
# The other way round: OpenBLAS workers busy-wait 2^28 cycles (about 0.1 s) after each BLAS call, so one small
# GEMM (a linear layer's np.dot inside @njit, which uses SciPy's OpenBLAS, loaded after this line) leaves both
# cores spinning under the next convolution: the captured cifar-cnn step took 155-160 ms instead of 120-123 ms.
# 2^4 cycles lets them sleep at once. NumPy's own OpenBLAS has read the variable already unless it was set
# before NumPy was imported; a user's own setting wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

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


# ----- Numba's compile cache -------------------------------------------------------------------------------------
# Numba reads NUMBA_CACHE_DIR once, when it is imported, so this runs at import of cnnnumba._config, which
# cnnnumba/__init__.py imports first. What Numba does on its own: an unwritable NUMBA_CACHE_DIR is skipped silently
# for the package's __pycache__ and then the user-wide cache (~/.cache/numba); when none of those is writable it
# refuses to decorate the kernels (RuntimeError at import). What is added here: CNNNUMBA_CACHE_DIR, a warning
# that names an unwritable requested directory, a private fallback when nothing Numba would try is writable, and
# (in `guard_cache_entries`) treating a truncated cache file as a miss instead of a crash and an entry written
# before any kernel source changed as stale.

def _unwritable_reason(path):
    """None when `path` is (or can be made) a directory this process can write into, else why not."""
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as error:
        return error.strerror or type(error).__name__
    return None


def _private_cache_dir():
    """A per-user directory under the temp dir that only this user can write (cached kernels are pickles, which
    must never be loaded from a directory someone else controls)."""
    path = os.path.join(tempfile.gettempdir(), f"cnnnumba-numba-cache-{os.getuid() if hasattr(os, 'getuid') else 0}")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError:
        return None
    if hasattr(os, "getuid") and (info.st_uid != os.getuid() or info.st_mode & 0o022 or os.path.islink(path)):
        return None
    return path if _unwritable_reason(path) is None else None


def _user_cache_home():
    return os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")


def _fallback_cache_dirs():
    yield os.path.join(_user_cache_home(), "cnnnumba", "numba")
    private = _private_cache_dir()
    if private is not None:
        yield private


def _settle_cache_dir():
    """The directory Numba will cache cnnnumba's kernels in (None: Numba's own choice), warning on a fallback."""
    for variable in ("CNNNUMBA_CACHE_DIR", "NUMBA_CACHE_DIR"):
        requested = os.environ.get(variable)
        if requested:
            break
    if requested:
        reason = _unwritable_reason(requested)
        if reason is None:
            return requested
        why = f"{variable}={requested!r} is not writable ({reason})"
    else:
        package_cache = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels", "__pycache__")
        if _unwritable_reason(package_cache) is None or _unwritable_reason(
                os.path.join(_user_cache_home(), "numba")) is None:
            return None
        why = "neither the package's __pycache__ nor the user-wide Numba cache is writable"
    for candidate in _fallback_cache_dirs():
        if _unwritable_reason(candidate) is None:
            warnings.warn(f"{why}; cnnnumba caches its compiled kernels in {candidate} instead", RuntimeWarning,
                          stacklevel=2)
            return candidate
    warnings.warn(f"{why}, and no fallback directory is writable; Numba may be unable to cache kernels",
                  RuntimeWarning, stacklevel=2)
    return None


CACHE_DIR = _settle_cache_dir()
if CACHE_DIR is not None:
    os.environ["NUMBA_CACHE_DIR"] = CACHE_DIR
    if "numba" in sys.modules:  # imported before cnnnumba: its config already read the environment
        sys.modules["numba"].config.CACHE_DIR = CACHE_DIR


def guard_cache_entries(dispatcher):
    """Make a truncated or garbled cache file of this kernel a cache miss (recompile and rewrite it, with a warning)
    instead of the UnpicklingError/EOFError Numba raises on the kernel's first call; and make its entries stale once
    any file of cnnnumba/kernels changed (or NUMBA_BOUNDSCHECK did). Numba checks only the time stamp of the
    kernel's own file, but a kernel's code carries copies of the jitted functions it calls from other files, and the
    compile flags live in kernels/_jit.py: after either changed, an old entry loaded as before (a cache warm from
    before the flags lost float reassociation kept giving other weights than a fresh one;
    tests/reliability/test_cache.py). Checked and unchecked kernels share entry names, so runs of both kinds need
    cache directories of their own (each would otherwise keep recompiling over the other's entries)."""
    cache_file = getattr(getattr(dispatcher, "_cache", None), "_cache_file", None)
    if cache_file is not None and not isinstance(cache_file, _recovering_cache_file_class()):
        cache_file.__class__ = _recovering_cache_file_class()
        cache_file._source_stamp = (cache_file._source_stamp, _kernel_sources_digest())
    return dispatcher


_KERNEL_SOURCES_DIGEST = None


def _kernel_sources_digest():
    """A digest of every .py file of cnnnumba/kernels (names and contents) and of NUMBA_BOUNDSCHECK (which Numba's
    cache also ignores: a bounds-checked kernel and an unchecked one would load in each other's place), computed
    once per process."""
    global _KERNEL_SOURCES_DIGEST
    if _KERNEL_SOURCES_DIGEST is None:
        import numba

        digest = hashlib.sha256(f"boundscheck={bool(numba.config.BOUNDSCHECK)}\0".encode())
        folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels")
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                digest.update(name.encode() + b"\0")
                with open(os.path.join(folder, name), "rb") as source:
                    digest.update(source.read())
        _KERNEL_SOURCES_DIGEST = digest.hexdigest()
    return _KERNEL_SOURCES_DIGEST


_RECOVERING_CACHE_FILE = None


def _recovering_cache_file_class():
    global _RECOVERING_CACHE_FILE
    if _RECOVERING_CACHE_FILE is None:
        from numba.core.caching import IndexDataCacheFile

        def corrupt(path, error):
            warnings.warn(f"ignoring a corrupt Numba cache file {path} ({type(error).__name__}: {error}); "
                          "the kernel is compiled again and the file rewritten", RuntimeWarning, stacklevel=3)

        class RecoveringIndexDataCacheFile(IndexDataCacheFile):
            def _load_index(self):
                try:
                    return super()._load_index()
                except OSError:
                    raise
                except Exception as error:  # pickle errors, EOFError, ValueError: a truncated or garbled index
                    corrupt(self._index_path, error)
                    return {}

            def _load_data(self, name):
                try:
                    return super()._load_data(name)
                except OSError:
                    raise
                except Exception as error:
                    corrupt(self._data_path(name), error)
                    return None

        _RECOVERING_CACHE_FILE = RecoveringIndexDataCacheFile
    return _RECOVERING_CACHE_FILE
