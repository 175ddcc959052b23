"""Settings that must be in place before Numba, its OpenMP layer or OpenBLAS read the environment: thread spin and
sleep defaults, and the directory Numba caches compiled kernels in. Imported first by kernels._runtime."""
import os
import sys
import tempfile
import warnings

# Each default below is set only when the user has not set the variable; README.md (Environment) lists them.
# GNU OpenMP's own spin (GOMP_SPINCOUNT 300,000, a few ms) is left as it is: its workers wait for the next kernel
# through a serial stretch (a linear layer, the loss) that a short spin slept through, each wake costing ~40 us
# (LeNet-5's step 0.95x, inference 0.88x against 10,000). The BLAS products run on those same workers
# (blas.matmul), so their spin takes no core from another pool.
THREAD_DEFAULTS = {
    # OpenBLAS workers busy-wait about 0.1 s after each call, so a linear layer's small GEMM left both cores
    # spinning under the next convolution; 2^4 cycles lets them sleep at once.
    "OPENBLAS_THREAD_TIMEOUT": "4",
}
# The packages whose bundled OpenBLAS was loaded before these defaults were set (a program that imports NumPy
# before cnnnumba): it read its environment then, so blas.py makes it read OPENBLAS_THREAD_TIMEOUT again.
OPENBLAS_LOADED_EARLY = tuple(name for name in ("numpy", "scipy") if name in sys.modules
                              and "OPENBLAS_THREAD_TIMEOUT" not in os.environ)
for _name, _value in THREAD_DEFAULTS.items():
    os.environ.setdefault(_name, _value)


# What Numba does on its own: an unwritable NUMBA_CACHE_DIR is skipped silently for the package's __pycache__ and
# then the user-wide cache (~/.cache/numba); when none is writable it refuses to decorate the kernels. Added here:
# CNNNUMBA_CACHE_DIR (it wins over NUMBA_CACHE_DIR), a warning that names an unwritable requested directory, and a
# private fallback when nothing Numba would try is writable.

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
        kernels = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if _unwritable_reason(os.path.join(kernels, "__pycache__")) is None or _unwritable_reason(
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
