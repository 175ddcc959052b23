"""Control of the OpenBLAS thread pools that NumPy and SciPy bundle: Numba's np.dot inside @njit calls SciPy's, whose
threads are separate from Numba's workers. OpenBLAS has no public Python API for this; its C setters are found by
globbing the wheels' bundled-library folders (.libs) and called through ctypes."""
import ctypes
import glob
import os
import sys

from .environment import OPENBLAS_LOADED_EARLY

# Products up to this many multiply-adds run on one BLAS thread: waking OpenBLAS's pool for a linear layer's product
# cost far more than the product on a loaded machine (bench/README.md), and two threads pay off only on products
# far larger than a linear layer's.
SINGLE_THREAD_MACS = 1 << 24
# OpenBLAS itself runs a GEMM of at most 65536 * 4 multiply-adds on the calling thread (GEMM_MULTITHREAD_THRESHOLD)
_OPENBLAS_SERIAL_MACS = 1 << 18


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


def one_blas_thread(kernel, macs, *args):
    """kernel(*args), with SciPy's OpenBLAS on one thread when the product has at most SINGLE_THREAD_MACS
    multiply-adds. The thread count is process-wide in OpenBLAS (its `_local` setter is not per thread in the
    0.3.30 SciPy ships), so it is restored at once: the large GEMMs elsewhere (im2col convolutions) keep theirs."""
    if _SET_BLAS_THREADS is None or macs <= _OPENBLAS_SERIAL_MACS or macs > SINGLE_THREAD_MACS:
        kernel(*args)
        return
    previous = _GET_BLAS_THREADS()
    _SET_BLAS_THREADS(1)
    try:
        kernel(*args)
    finally:
        _SET_BLAS_THREADS(previous)
