"""The MPI process group with PyTorch's `torch.distributed` names: every process `mpiexec` started is one rank.

mpi4py is imported when the group is first used, so importing cnnnumba never needs it. Collectives work in place
on NumPy arrays. Blocking waits poll the MPI request from Python, so a Ctrl-C (SIGINT, which `mpiexec` forwards to
every rank) raises KeyboardInterrupt in a rank waiting for a peer instead of leaving it stuck inside MPI.
"""
import os
import sys
import time
import traceback

import numpy as np

_OPS = ("sum", "max", "min", "product")
# the world size MPI launchers announce to each process: MPICH's and Intel MPI's Hydra (and Slurm's PMI2), Open MPI,
# MVAPICH
_LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_DONE_TAG = 0x6E6E  # rank 0's "finished after Ctrl-C" message
_comm = None
_previous_excepthook = None


def _mpi():
    """The mpi4py.MPI module, or an ImportError that says how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise ImportError("cnnnumba.distributed needs mpi4py and an MPI library: pip install 'cnnnumba[mpi]' "
                          f"(mpi4py and mpich); importing mpi4py failed: {error}") from None
    return MPI


def launcher_world_size():
    """How many ranks the MPI launcher (`mpiexec -n N`, `srun --mpi=pmi2`) started, read from the environment it
    gives each rank without importing mpi4py; 1 for a process started alone."""
    for variable in _LAUNCHER_SIZE_VARIABLES:
        value = os.environ.get(variable, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def is_available():
    """Whether mpi4py (and so an MPI library) can be imported."""
    try:
        _mpi()
    except ImportError:
        return False
    return True


def init_process_group(backend="mpi"):
    """Join the process group of every rank started by `mpiexec` (a single rank when started alone).

    Idempotent: a second call does nothing. With more than one rank it also makes an uncaught exception on any
    rank end the whole job (the traceback is printed, then MPI_Abort), so no rank is left waiting for a peer that
    died; an uncaught KeyboardInterrupt exits that rank with status 130 without waiting in MPI_Finalize.
    """
    global _comm, _previous_excepthook
    if backend not in ("mpi", None):
        raise ValueError(f"cnnnumba.distributed supports the 'mpi' backend only, but got backend={backend!r}")
    if _comm is not None:
        return
    MPI = _mpi()
    _comm = MPI.COMM_WORLD
    if _comm.Get_size() > 1 and _previous_excepthook is None:
        _previous_excepthook = sys.excepthook
        sys.excepthook = _end_the_job_on_uncaught_exception


def _end_the_job_on_uncaught_exception(kind, value, trace):
    sys.stderr.write(f"[rank {get_rank()}] " + "".join(traceback.format_exception(kind, value, trace)))
    sys.stderr.flush()
    sys.stdout.flush()
    if issubclass(kind, KeyboardInterrupt):
        os._exit(130)  # every rank got the SIGINT; MPI_Finalize could wait forever on a peer's unmatched collective
    abort(1)


def is_initialized():
    return _comm is not None


def _group():
    if _comm is None:
        raise RuntimeError("Default process group has not been initialized, please make sure to call "
                           "cnnnumba.distributed.init_process_group()")
    return _comm


def get_rank():
    return _group().Get_rank()


def get_world_size():
    return _group().Get_size()


def get_local_world_size():
    """How many ranks run on this machine (cnnnumba's addition: it divides the cores among them)."""
    comm = _group()
    local = comm.Split_type(_mpi().COMM_TYPE_SHARED)
    try:
        return local.Get_size()
    finally:
        local.Free()


def barrier():
    wait(_group().Ibarrier())


def _check_array(array, what):
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{what} expected a NumPy array, but got {type(array).__name__}")
    if not array.flags.c_contiguous or not array.flags.writeable:
        raise ValueError(f"{what} works in place and needs a writable C-contiguous array")


def _op(op):
    if op not in _OPS:
        raise ValueError(f"all_reduce: op must be one of {', '.join(_OPS)}, but got {op!r}")
    MPI = _mpi()
    return {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN, "product": MPI.PROD}[op]


def all_reduce(array, op="sum"):
    """Reduce `array` over all ranks in place (every rank ends with the same result)."""
    wait(all_reduce_start(array, op))


def all_reduce_start(array, op="sum"):
    """Start a nonblocking in-place all-reduce (MPI_Iallreduce) of `array`; returns its request for `wait`/`test`.
    `array` must not be read or written until the request has completed."""
    _check_array(array, "all_reduce")
    return _group().Iallreduce(_mpi().IN_PLACE, array, op=_op(op))


def broadcast(array, src=0):
    """Overwrite `array` on every rank with rank `src`'s array, in place."""
    wait(broadcast_start(array, src))


def broadcast_start(array, src=0):
    """Start a nonblocking in-place broadcast (MPI_Ibcast) of rank `src`'s `array`; returns its request."""
    _check_array(array, "broadcast")
    comm = _group()
    if isinstance(src, bool) or not isinstance(src, (int, np.integer)) or not 0 <= src < comm.Get_size():
        raise ValueError(f"broadcast: src must be a rank between 0 and {comm.Get_size() - 1}, but got {src!r}")
    return comm.Ibcast(array, root=src)


def all_gather_object(obj):
    """The list of every rank's `obj` (picklable), in rank order."""
    comm = _group()
    wait(comm.Ibarrier())  # a peer still computing is waited for here, where Ctrl-C can interrupt the wait
    return comm.allgather(obj)


def test(request):
    """Whether a request from `all_reduce_start` has completed; each call also lets MPI make progress on it."""
    return request.Test()


def wait(request):
    """Wait for a request by polling it: MPI makes progress on each poll, and Python sees signals between polls."""
    polls = 0
    while not request.Test():
        polls += 1
        if polls > 1000:  # a long wait (a peer still computing): stop spinning on a core that peer may need
            time.sleep(50e-6)


ABORT_OUTPUT_GRACE_S = 0.2


def abort(code=1):
    """End every rank of the job now with exit status `code` (MPI_Abort)."""
    sys.stdout.flush()
    sys.stderr.flush()
    # MPICH's launcher forwards a rank's output asynchronously and tears the job down at the abort: without a pause
    # the traceback just written, and MPI's own abort message, were lost in about 1 job of 5 (tests/distributed).
    time.sleep(ABORT_OUTPUT_GRACE_S)
    _group().Abort(code)


def exit_after_interrupt(code=130, timeout=300):
    """End this rank after a Ctrl-C that every rank received (mpiexec forwards SIGINT to all of them).

    mpiexec ends the whole job as soon as one rank exits after a Ctrl-C, so the other ranks wait here (at most
    `timeout` seconds) until rank 0, which writes the files, has finished and sends them word. A point-to-point
    message, not a collective: a peer may have left a collective unmatched when the interrupt came. Exits without
    MPI_Finalize, which could wait for that collective.
    """
    comm = _group()
    sys.stdout.flush()
    sys.stderr.flush()
    if comm.Get_rank() == 0:
        for rank in range(1, comm.Get_size()):
            comm.isend(code, dest=rank, tag=_DONE_TAG)
        time.sleep(0.1)  # let the small messages leave before this process does
    else:
        request = comm.irecv(source=0, tag=_DONE_TAG)
        deadline = time.monotonic() + timeout
        while not request.Test() and time.monotonic() < deadline:
            time.sleep(0.01)
    os._exit(code)


def destroy_process_group():
    """Leave the process group: cnnnumba stops using MPI (MPI itself is finalized when the process exits)."""
    global _comm, _previous_excepthook
    if _comm is None:
        return
    if _previous_excepthook is not None:
        sys.excepthook = _previous_excepthook
        _previous_excepthook = None
    _comm = None


__all__ = ["abort", "all_gather_object", "all_reduce", "all_reduce_start", "barrier", "broadcast", "broadcast_start",
           "destroy_process_group", "exit_after_interrupt", "get_local_world_size", "get_rank", "get_world_size",
           "init_process_group", "is_available", "is_initialized", "launcher_world_size", "test", "wait"]
