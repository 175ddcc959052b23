"""run_slots from a warm cache: a process whose first parallel loop is a cached run_slots launch still runs it."""
import os
import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from cnnnumba.kernels._runtime.jobs import run_slots
    from tests.kernels.test_jobs import _record_slot

    seen = np.zeros(3, np.int64)
    values = np.zeros(3, np.dtype(sys.argv[1]))
    run_slots(_record_slot, 3, seen, values, 0.5, 2.0, (1,))
    assert seen.tolist() == [1, 1, 1] and values.tolist() == [1.5, 3.5, 5.5], (seen, values)
""")


def test_a_cached_launch_is_the_first_parallel_loop_of_a_process(tmp_path):
    # The second process compiles a launch for float32 values around the parallel loop the first one cached
    # (so compiling it starts no threads); the third loads that launch, and nothing else parallel has run in it:
    # its loop needs the threading layer started (it once called a null scheduler there and crashed).
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    environment = dict(os.environ, CNNNUMBA_CACHE_DIR=str(tmp_path), NUMBA_NUM_THREADS="2",
                       PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    for run, dtype in enumerate(("float64", "float32", "float32")):
        result = subprocess.run([sys.executable, "-c", _SCRIPT, dtype], env=environment, cwd=root,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"run {run} ({dtype}): exit {result.returncode}\n{result.stderr[-2000:]}"
