"""run_slots and run_jobs: every slot (job) runs once with the caller's arguments, whatever their types; a job's
worker's scratch serves one job at a time; the threads claim the work, so a slow thread takes less of it; and an
exception in a slot reaches the caller."""
import sys
import tracemalloc

import numba
import numpy as np
import pytest
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from cnnnumba.kernels._runtime.jit import jit
from cnnnumba.kernels._runtime.jobs import WORKERS, run_jobs, run_slots


@jit
def _record_slot(slot, seen, values, offset, scale, flags):
    """seen[slot] += 1; values[slot] = slot * scale + offset + flags[0] (flags: a tuple of ints)."""
    seen[slot] += 1
    values[slot] = slot * scale + offset + flags[0]


@jit
def _failing_slot(slot, out, bad_slot):
    if slot == bad_slot:
        raise ValueError("slot failed on purpose")
    out[slot] = 1.0


@jit
def _sum_rows_slot(slot, matrix, out):
    """out[slot] = the sum of row slot of a 2-D array of any layout."""
    total = 0.0
    for j in range(matrix.shape[1]):
        total += matrix[slot, j]
    out[slot] = total


@intrinsic
def _holds_reference(typingctx, array):
    """Whether an array holds a reference to its memory (a meminfo, counted at every call it is passed to)."""
    def codegen(context, builder, signature, values):
        meminfo = context.make_array(signature.args[0])(context, builder, values[0]).meminfo
        return builder.icmp_unsigned("!=", meminfo, cgutils.get_null_value(meminfo.type))

    return types.boolean(array), codegen


@jit
def _references_slot(slot, holds, matrix, pair):
    """holds[slot] = how many of: matrix, a view of it, pair's first array, an array made here hold a reference."""
    made = np.zeros(3)
    holds[slot] = (_holds_reference(matrix) + _holds_reference(matrix[slot]) + _holds_reference(pair[0])
                   + _holds_reference(made))


def test_slots_see_the_callers_arrays_without_a_reference_of_their_own():
    # the caller keeps its arrays alive; a slot counting references on them would make every tile call of every
    # thread update one shared counter (see _unowned in jobs.py)
    matrix = np.ones((4, 3))
    pair = (np.zeros(2), 1)
    before = sys.getrefcount(matrix), sys.getrefcount(pair[0])
    holds = np.full(4, -1, np.int64)
    run_slots(_references_slot, 4, holds, matrix, pair)
    np.testing.assert_array_equal(holds, 1)  # only the array made in the slot
    assert (sys.getrefcount(matrix), sys.getrefcount(pair[0])) == before


@pytest.mark.parametrize("slots", [1, 2, 7, 64])
def test_every_slot_runs_exactly_once_with_the_arguments_given(slots):
    seen = np.zeros(slots, np.int64)
    values = np.zeros(slots, np.float64)
    run_slots(_record_slot, slots, seen, values, 0.5, 3.0, (2, 9))
    np.testing.assert_array_equal(seen, 1)
    np.testing.assert_array_equal(values, np.arange(slots) * 3.0 + 2.5)


def test_the_same_slot_function_serves_arguments_of_other_types():
    # float32 values, an integer scale and another tuple length: another compiled slot, not the first one's code
    # reading these bytes as float64
    seen = np.zeros(5, np.int64)
    values = np.zeros(5, np.float32)
    run_slots(_record_slot, 5, seen, values, 1.0, 2, (7,))
    np.testing.assert_array_equal(values, np.arange(5, dtype=np.float32) * 2 + 8)
    values64 = np.zeros(5, np.float64)
    run_slots(_record_slot, 5, seen, values64, 0.25, 1.5, (1, 1, 1))
    np.testing.assert_array_equal(values64, np.arange(5) * 1.5 + 1.25)
    np.testing.assert_array_equal(seen, 2)


def test_non_contiguous_arrays_are_read_with_their_strides():
    matrix = np.arange(60, dtype=np.float64).reshape(6, 10)
    for view in (matrix, matrix[:, ::2], matrix.T.copy().T, matrix[::-1]):
        out = np.zeros(view.shape[0])
        run_slots(_sum_rows_slot, view.shape[0], view, out)
        np.testing.assert_array_equal(out, view.sum(axis=1))


def test_an_exception_in_a_slot_reaches_the_caller():
    out = np.zeros(4)
    with pytest.raises(ValueError, match="slot failed on purpose"):
        run_slots(_failing_slot, 4, out, 2)
    run_slots(_failing_slot, 4, out, -1)
    np.testing.assert_array_equal(out, 1.0)


@jit
def _record_job(first, last, worker, seen, workers_seen, busy, overlaps, spins):
    """For each job of the range: seen[job] += 1 and workers_seen[job] = worker; counts in overlaps[worker] any
    range that found worker's scratch (busy[worker]) in use by another; spins 20x longer per job on worker 1 (a
    slow core)."""
    if busy[worker] != 0:
        overlaps[worker] += 1
    busy[worker] = 1
    total = 0.0
    for job in range(first, last):
        seen[job] += 1
        workers_seen[job] = worker
        for i in range(spins * (20 if worker == 1 else 1)):
            total += np.sqrt(i + total * 1e-9)
    busy[worker] = 0 if total >= 0 else 2


def _run_recorded_jobs(jobs, workers, spins):
    seen, workers_seen = np.zeros(jobs, np.int64), np.full(jobs, -1, np.int64)
    busy, overlaps = np.zeros(workers, np.int64), np.zeros(workers, np.int64)
    run_jobs(_record_job, jobs, workers, seen, workers_seen, busy, overlaps, spins)
    return seen, workers_seen, overlaps


@pytest.mark.parametrize("jobs, workers", [(1, 2), (2, 2), (7, 1), (97, 2), (64, 64), (1000, 2)])
def test_every_job_runs_once_on_a_worker_below_the_count_given(jobs, workers):
    seen, workers_seen, overlaps = _run_recorded_jobs(jobs, workers, 200)
    np.testing.assert_array_equal(seen, 1)
    assert workers_seen.min() >= 0 and workers_seen.max() < min(workers, WORKERS)
    np.testing.assert_array_equal(overlaps, 0)


@pytest.mark.skipif(WORKERS < 2, reason="needs two threads")
def test_a_slow_thread_takes_fewer_jobs():
    # worker 1's jobs spin 20x longer, as on a core that runs slowly. Fixed halves would give each worker 64 jobs;
    # claiming gives worker 0 about 20 for each one worker 1 takes. Only "more than worker 1" is asked, so a thread
    # held up on a busy machine does not fail the test.
    previous = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        seen, workers_seen, _ = _run_recorded_jobs(128, 2, 20000)
    finally:
        numba.set_num_threads(previous)
    np.testing.assert_array_equal(seen, 1)
    assert np.count_nonzero(workers_seen == 0) > np.count_nonzero(workers_seen == 1), np.bincount(workers_seen)


@jit
def _failing_job(first, last, worker, out, bad_job):
    for job in range(first, last):
        if job == bad_job:
            raise ValueError("job failed on purpose")
        out[job] = worker + 1.0


@pytest.mark.parametrize("jobs, bad_job", [(9, 4), (1000, 999), (1000, 3)])
def test_an_exception_in_a_job_reaches_the_caller(jobs, bad_job):
    out = np.zeros(jobs)
    with pytest.raises(ValueError, match="job failed on purpose"):
        run_jobs(_failing_job, jobs, 2, out, bad_job)
    run_jobs(_failing_job, jobs, 2, out, -1)
    assert np.all(out >= 1.0)


@jit
def _sixteen_argument_job(first, last, worker, out, a, b, c, d, e, f, g, h, i, j, k, l, m, n, o):
    for job in range(first, last):
        out[job] = a + b + c + d + e + f + g + h + i + j + k + l + m + n + o


@pytest.mark.parametrize("launch", ["jobs", "slots"])
def test_a_launch_keeps_no_memory_whatever_its_argument_count(launch):
    # A Numba dispatcher called with 20 arguments kept 200 bytes a call (Numba 0.68.1): run_jobs then called its
    # launcher with a job's 16 arguments spread out, and a captured graph's first conv leaked at every step.
    out = np.zeros(8)
    arguments = (out,) + tuple(range(15))
    if launch == "jobs":
        def run():
            run_jobs(_sixteen_argument_job, 8, 2, *arguments)
    else:
        def run():
            run_slots(_sixteen_argument_slot, 8, *arguments)
    run()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(200):
            run()
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert out[0] == sum(range(15))
    assert retained < 2048, retained


@jit
def _sixteen_argument_slot(slot, out, a, b, c, d, e, f, g, h, i, j, k, l, m, n, o):
    out[slot] = a + b + c + d + e + f + g + h + i + j + k + l + m + n + o
