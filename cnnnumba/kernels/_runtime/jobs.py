"""Running a kernel's slots in parallel, each slot a call of one compiled slot function through its address.

A parallel kernel whose prange body calls a jitted slot function has that function's code optimised and
code-generated three times on a cold start: in the slot's own library, again in the gufunc that Numba builds for
the prange body, and again when the gufunc is linked into the kernel. For the register-tiled convolution slots
that was two thirds of their compile time (a Winograd forward: 8.5 s, of which the slot itself 3.7 s). Here the
slot function is compiled once, for the exact argument types of the call, and the parallel loop reaches it
through its address: one small parallel loop (`_run_slots_parallel`, all-integer arguments, compiled once for
every kernel) calls a trampoline that unpacks the slot's arguments from the caller's frame.

The slots are not split among the threads in fixed halves: each thread claims the next unclaimed slot from a
counter until none is left. A vCPU of a shared host often runs at two thirds of its speed for seconds at a time
while the other runs at full speed (its host core's other hyperthread busy); with fixed halves every parallel pass
then waits for the slow one, and two threads gave about 1.4x one. Claimed slots move to whichever thread is free.
Which thread runs a slot changes no result: slots write disjoint outputs or per-slot partials. Kernels whose work
needs per-thread scratch use run_jobs: ranges of jobs are claimed like slots, each told which worker (scratch set)
runs it.

Numba drops an exception raised in a function called from a prange body (the loop goes on, nothing is raised), so
a slot (range) that fails is only noted there; once the loop is done it runs again serially, and its exception
(e.g. an IndexError under NUMBA_BOUNDSCHECK) reaches the caller as from a direct call.
"""
import functools
import hashlib

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba._dispatcher import compute_fingerprint
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.ufunc.parallel import _launch_threads

from .jit import jit, parallel_jit


def _call_native(context, builder, address, argtypes, values):
    """Call the Numba-compiled function returning None at `address` (an i64) with `values` of `argtypes`, and
    return from the current function with its status if it raised."""
    function_type = context.call_conv.get_function_type(types.none, argtypes)
    callee = builder.inttoptr(address, function_type.as_pointer())
    status, _ = context.call_conv.call_function(builder, callee, types.none, argtypes, values)
    with cgutils.if_unlikely(builder, status.is_error):
        context.call_conv.return_status_propagate(builder, status)


INT64 = ir.IntType(64)
# first slot, end of the range, worker, slot function address, packed arguments
_TRAMPOLINE_ARGUMENTS = (types.int64,) * 5


def _trampoline(context, module, arguments, pass_range):
    """The function (Numba's calling convention, arguments (first, last, worker, address, packed)) that calls the
    function at `address` with (first, last, worker) if pass_range, else with first alone, and then the tuple of
    type `arguments` stored at `packed`; one per tuple type and pass_range in a module."""
    function_type = context.call_conv.get_function_type(types.none, _TRAMPOLINE_ARGUMENTS)
    name = ("cnnnumba_job_trampoline." if pass_range else "cnnnumba_slot_trampoline.") + hashlib.sha1(
        str(arguments).encode()).hexdigest()
    function = cgutils.get_or_insert_function(module, function_type, name)
    if not function.is_declaration:
        return function
    function.linkage = "internal"
    builder = ir.IRBuilder(function.append_basic_block())
    return_pointer, exception_info, first, last, worker, address, packed = function.args
    leading = [first, last, worker] if pass_range else [first]
    slot_types = (types.int64,) * len(leading) + tuple(arguments.types)
    stored = builder.load(builder.inttoptr(packed, context.get_value_type(arguments).as_pointer()))
    values = leading + [builder.extract_value(stored, i) for i in range(len(arguments.types))]
    slot_function_type = context.call_conv.get_function_type(types.none, slot_types)
    callee = builder.inttoptr(address, slot_function_type.as_pointer())
    flat = list(context.get_arg_packer(slot_types).as_arguments(builder, values))
    # the slot's status and exception pass through unchanged: it returns None, like the trampoline
    builder.ret(builder.call(callee, [return_pointer, exception_info] + flat))
    return function


def _unowned(context, builder, value_type, value):
    """`value` with every array in it (nested in tuples too) holding no reference to its memory (a null meminfo).
    The caller keeps the arrays alive for the whole launch; with their meminfo, every call a slot makes with an
    array (each register tile's) would add and drop a reference atomically on a counter that all the threads share,
    its cache line moving between cores at every call."""
    if isinstance(value_type, types.Array):
        array = context.make_array(value_type)(context, builder, value)
        array.meminfo = cgutils.get_null_value(array.meminfo.type)
        return array._getvalue()
    if isinstance(value_type, types.BaseTuple):
        items = [_unowned(context, builder, item_type, builder.extract_value(value, i))
                 for i, item_type in enumerate(value_type.types)]
        return context.make_tuple(builder, value_type, items)
    return value


def _make_pack_arguments(pass_range):
    @intrinsic
    def pack_arguments(typingctx, arguments):
        """(address of a copy of the tuple `arguments` in this function's frame, address of its trampoline,
        address of a cell in this frame holding -1, where a failing range writes its first slot, address of a
        cell holding 0, the next slot to claim)."""
        def codegen(context, builder, signature, values):
            storage = cgutils.alloca_once(builder, context.get_value_type(arguments))
            builder.store(_unowned(context, builder, arguments, values[0]), storage)
            failed = cgutils.alloca_once_value(builder, ir.Constant(INT64, -1))
            next_slot = cgutils.alloca_once_value(builder, ir.Constant(INT64, 0))
            trampoline = _trampoline(context, builder.module, arguments, pass_range)
            addresses = [builder.ptrtoint(storage, INT64), builder.ptrtoint(trampoline, INT64),
                         builder.ptrtoint(failed, INT64), builder.ptrtoint(next_slot, INT64)]
            return context.make_tuple(builder, signature.return_type, addresses)

        return types.UniTuple(types.int64, 4)(arguments), codegen

    return pack_arguments


_pack_slot_arguments = _make_pack_arguments(False)
_pack_job_arguments = _make_pack_arguments(True)


@intrinsic
def _claim(typingctx, cell, count):
    """The value of the int64 at address `cell`, to which count is added atomically: the first of the next count
    slots to run."""
    def codegen(context, builder, signature, values):
        return builder.atomic_rmw("add", builder.inttoptr(values[0], INT64.as_pointer()), values[1], "monotonic")

    return types.int64(cell, count), codegen


@intrinsic
def _call_trampoline(typingctx, trampoline, first, last, worker, address, packed, failed):
    """Run slots first..last - 1; if that raised, write first to the cell at `failed` (any failing range will do)."""
    def codegen(context, builder, signature, values):
        function_type = context.call_conv.get_function_type(types.none, _TRAMPOLINE_ARGUMENTS)
        callee = builder.inttoptr(values[0], function_type.as_pointer())
        status, _ = context.call_conv.call_function(builder, callee, types.none, list(_TRAMPOLINE_ARGUMENTS),
                                                    list(values[1:6]))
        with cgutils.if_unlikely(builder, status.is_error):
            builder.store(values[1], builder.inttoptr(values[6], INT64.as_pointer()))
        return context.get_dummy_value()

    return types.none(trampoline, first, last, worker, address, packed, failed), codegen


@intrinsic
def _rerun_failed_range(typingctx, trampoline, address, packed, failed, grain, slots):
    """Run again, here, as worker 0, the range whose first slot is in the cell at `failed` (if any), so that its
    exception is raised."""
    def codegen(context, builder, signature, values):
        trampoline, address, packed, failed, grain, slots = values
        first = builder.load(builder.inttoptr(failed, INT64.as_pointer()))
        with cgutils.if_unlikely(builder, builder.icmp_signed(">=", first, ir.Constant(INT64, 0))):
            end = builder.add(first, grain)
            last = builder.select(builder.icmp_signed("<", end, slots), end, slots)
            _call_native(context, builder, trampoline, list(_TRAMPOLINE_ARGUMENTS),
                         [first, last, ir.Constant(INT64, 0), address, packed])
        return context.get_dummy_value()

    return types.none(trampoline, address, packed, failed, grain, slots), codegen


@parallel_jit
def _run_slots_parallel(trampoline, address, packed, failed, next_slot, slots, workers, grain):
    for worker in prange(workers):
        first = _claim(next_slot, grain)
        while first < slots:
            _call_trampoline(trampoline, first, min(first + grain, slots), np.int64(worker), address, packed, failed)
            first = _claim(next_slot, grain)


@jit
def _launch(address, slots, workers, arguments):
    packed, trampoline, failed, next_slot = _pack_slot_arguments(arguments)
    one = np.int64(1)
    _run_slots_parallel(trampoline, address, packed, failed, next_slot, slots, workers, one)
    _rerun_failed_range(trampoline, address, packed, failed, one, slots)


@jit
def _launch_jobs(address, jobs, workers, grain, arguments):
    packed, trampoline, failed, next_job = _pack_job_arguments(arguments)
    _run_slots_parallel(trampoline, address, packed, failed, next_job, jobs, workers, grain)
    _rerun_failed_range(trampoline, address, packed, failed, grain, jobs)


_ADDRESSES = {}
# The most threads a launch may run: per-worker scratch is sized by it.
WORKERS = numba.config.NUMBA_NUM_THREADS
# run_jobs hands out a launch's jobs in ranges of about jobs / (workers * CLAIMS_PER_WORKER): each range is one
# call, whose set-up is then paid once for several small jobs (an F(4x4) forward's 8-tile jobs ran measurably
# slower one call each), while the last range a slow thread holds is still a small part of the pass.
CLAIMS_PER_WORKER = 16


def _address(function, leading, arguments):
    """The address of function compiled for (`leading` int64s, *the Numba types of arguments), compiled once."""
    key = (function, leading, *(compute_fingerprint(argument) for argument in arguments))
    address = _ADDRESSES.get(key)
    if address is None:
        # _launch holds _run_slots_parallel's code but is not itself parallel: loaded from the cache, nothing
        # starts Numba's threading layer, and its first parallel loop would call a null scheduler
        _launch_threads()
        signature = (types.int64,) * leading + tuple(numba.typeof(argument) for argument in arguments)
        function.compile(signature)
        compiled = function.overloads[signature]
        address = _ADDRESSES[key] = compiled.library.get_pointer_to_function(compiled.fndesc.llvm_func_name)
    return address


def run_slots(slot_function, slots, *arguments):
    """slot_function(slot, *arguments) for slot in range(slots), in parallel, each slot claimed by the next free
    thread. slot_function is a @jit function returning None; arguments are arrays, scalars or tuples of them, kept
    alive by the caller during the call. A single slot runs on the calling thread (a parallel region would only
    add its start-up)."""
    if slots == 1:
        slot_function(0, *arguments)
        return
    _launch(_address(slot_function, 1, arguments), slots, min(slots, WORKERS), arguments)


def run_jobs(job_function, jobs, workers, *arguments):
    """job_function(first, last, worker, *arguments) runs jobs first..last - 1, for ranges that together cover
    range(jobs) once, in parallel, each range claimed by the next free thread; worker < workers numbers the thread
    running it, so that scratch indexed by worker serves one range at a time (workers: how many scratch sets there
    are; at most WORKERS are used). Jobs must not depend on which range or worker runs them."""
    bind_jobs(job_function, jobs, workers, *arguments)()


def bind_jobs(job_function, jobs, workers, *arguments):
    """run_jobs with its launch prepared now: a callable that runs it on the same arguments (the arrays read in
    place at every call), for a kernel pass bound once and run at every step (kernels.conv2d.bind_forward)."""
    if jobs <= 1:
        return lambda: job_function(0, 1, 0, *arguments) if jobs == 1 else None
    workers = max(1, min(int(workers), int(jobs), WORKERS))
    grain = max(1, int(jobs) // (workers * CLAIMS_PER_WORKER))
    address = _address(job_function, 3, arguments)
    return functools.partial(_launch_jobs, address, jobs, workers, grain, arguments)


# Kernels whose slots each take a contiguous share of their jobs split them into at most this many slots: enough
# that any thread count here gets an even split, few enough that a share is not a sliver.
SHARE_SLOTS = 64


def run_shares(slot_function, jobs, *arguments):
    """slot_function(slot, slots, *arguments) for slot in range(slots), slots = min(jobs, SHARE_SLOTS) (at least
    1), each slot taking a contiguous share of the jobs; where no sum crosses a share, the split changes no
    result."""
    slots = max(1, min(int(jobs), SHARE_SLOTS))
    run_slots(slot_function, slots, slots, *arguments)
