"""Start a worker script under `mpiexec -n N` from the ordinary pytest run, and kill its whole process group if it
hangs (a rank stuck in a collective must not hang the test session)."""
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKERS = Path(__file__).resolve().parent / "workers"


def require_mpi():
    """Skip the calling test unless mpi4py imports and mpiexec is on PATH."""
    pytest.importorskip("mpi4py")
    if shutil.which("mpiexec") is None:
        pytest.skip("mpiexec is not on PATH (pip install 'cnnnumba[mpi]')")


def run_mpi(arguments, ranks=2, timeout=180, env=None):
    """Run `mpiexec -n ranks python arguments...` in a new session, one kernel thread per rank unless `env` says
    otherwise; returns the CompletedProcess. On timeout the session's whole process group (mpiexec and every
    rank) is killed and the test fails with what the ranks printed."""
    require_mpi()
    command = ["mpiexec", "-n", str(ranks), sys.executable, *map(str, arguments)]
    environment = {**os.environ, "PYTHONPATH": str(REPO), "CNNNUMBA_NUM_THREADS": "1", **(env or {})}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                               env=environment, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{' '.join(command)} hung for {timeout} s and was killed\nstdout:\n{stdout}\nstderr:\n{stderr}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def worker(name):
    return WORKERS / name
