"""What works around Numba, OpenMP and OpenBLAS, in one place: thread and cache settings made before Numba loads
(environment), the compile options every kernel uses (jit), the cache guard (cache), the parallel job launcher
(jobs), BLAS products on Numba's threads (blas) and the LLVM vector IR helpers of the register tiles (vector).

Private Numba APIs relied on (tested with Numba 0.68.1; pyproject.toml bounds numba to the versions tested):
- numba.core.cpu.ParallelOptions: parallel=True with most parfor passes off (jit).
- numba.np.ufunc.parallel._launch_threads, numba._dispatcher.compute_fingerprint, Dispatcher.overloads,
  CompileResult.library.get_pointer_to_function / fndesc.llvm_func_name and the target context's call_conv:
  calling a compiled job function through its address from one small parallel loop (jobs).
- numba.core.caching.IndexDataCacheFile (_load_index, _load_data, _index_path, _data_path, _source_stamp) and
  Dispatcher._cache._cache_file: treating a corrupt entry as a miss and stamping entries with a digest of every
  kernel source (cache).
- numba.core.cgutils helpers and the llvmlite IR builder inside numba.extending.intrinsic (vector, jobs, tiles).
- numba.np.linalg._BLAS().numba_xxgemm: the ?gemm binding np.dot calls, with leading dimensions (blas).
"""
from . import environment  # noqa: F401  (first: its settings must precede Numba's import and its thread layer)
from .blas import matmul, openblas_thread_setters
from .jit import EXACT_FASTMATH, FASTMATH, jit, parallel_jit
from .jobs import WORKERS, run_jobs, run_shares, run_slots

__all__ = ["EXACT_FASTMATH", "FASTMATH", "WORKERS", "jit", "matmul", "openblas_thread_setters", "parallel_jit",
           "run_jobs", "run_shares", "run_slots"]
