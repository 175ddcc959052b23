"""Guards on Numba's kernel cache: a truncated or garbled cache file is a miss, not a crash, and an entry written
before any kernel source (or NUMBA_BOUNDSCHECK) changed is stale."""
import hashlib
import os
import warnings


def guard_cache_entries(dispatcher):
    """Make a truncated or garbled cache file of this kernel a cache miss (recompile and rewrite it, with a warning)
    instead of the UnpicklingError/EOFError Numba raises on the kernel's first call; and make its entries stale once
    any source file under cnnnumba/kernels changed (or NUMBA_BOUNDSCHECK did). Numba checks only the time stamp of
    the kernel's own file, but a kernel's code carries copies of the jitted functions it calls from other files,
    and the compile flags live in _runtime/jit.py (tests/reliability/test_cache.py). Checked and unchecked kernels
    share entry names, so runs of both kinds need cache directories of their own."""
    cache_file = getattr(getattr(dispatcher, "_cache", None), "_cache_file", None)
    if cache_file is not None and not isinstance(cache_file, _recovering_cache_file_class()):
        cache_file.__class__ = _recovering_cache_file_class()
        cache_file._source_stamp = (cache_file._source_stamp, kernel_sources_digest())
    return dispatcher


_KERNEL_SOURCES_DIGEST = None
KERNELS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def kernel_source_files():
    """Every .py file under cnnnumba/kernels, subpackages included, as sorted paths relative to it."""
    found = []
    for folder, subfolders, names in os.walk(KERNELS_DIR):
        subfolders[:] = sorted(d for d in subfolders if d != "__pycache__")
        found += [os.path.relpath(os.path.join(folder, name), KERNELS_DIR) for name in names if name.endswith(".py")]
    return sorted(found)


def kernel_sources_digest():
    """A digest of every kernel source file (relative paths and contents) and of NUMBA_BOUNDSCHECK (which Numba's
    cache also ignores: a bounds-checked kernel and an unchecked one would load in each other's place), computed
    once per process."""
    global _KERNEL_SOURCES_DIGEST
    if _KERNEL_SOURCES_DIGEST is None:
        import numba

        digest = hashlib.sha256(f"boundscheck={bool(numba.config.BOUNDSCHECK)}\0".encode())
        for name in kernel_source_files():
            digest.update(name.replace(os.sep, "/").encode() + b"\0")
            with open(os.path.join(KERNELS_DIR, name), "rb") as source:
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
