"""Anomaly detection: stop at the first op whose forward or backward produced NaN or Inf, and name it."""
import contextlib
import os
import threading
import traceback

import numpy as np

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class AnomalyError(RuntimeError):
    """An op's forward or backward produced NaN or Inf while anomaly detection was on.

    ``op`` is the op's name (``"Conv2d"``), ``phase`` is ``"forward"`` or ``"backward"``.
    """

    def __init__(self, message, op, phase):
        super().__init__(message)
        self.op = op
        self.phase = phase


class _AnomalyState(threading.local):
    # Per thread, like no_grad: a detect_anomaly() block in one thread does not slow or stop another's work.
    depth = 0
    check_nan = True


_state = _AnomalyState()
_lock = threading.Lock()
# How many threads have anomaly detection on. Function.apply and run_backward read this module global on every
# op (tens of nanoseconds; a threading.local attribute costs several times that) and look at the per-thread
# state only when it is non-zero.
active_threads = 0


def _set_depth(depth):
    global active_threads
    with _lock:
        active_threads += (depth > 0) - (_state.depth > 0)
        _state.depth = depth


def enabled_here():
    """Whether this thread checks ops (Function.apply and run_backward call this only when active_threads)."""
    return _state.depth > 0


def is_anomaly_enabled():
    """Whether anomaly detection is on in this thread."""
    return _state.depth > 0


@contextlib.contextmanager
def detect_anomaly(check_nan=True):
    """Inside this block every op's forward output and backward gradients are checked for NaN and Inf.

    The first op that produces one raises AnomalyError naming the op, the phase, the counts, whether its inputs
    were already non-finite, and (for backward) the line of user code that created the op. Costs one pass over
    each op's output; outside the block the checks cost nothing. ``check_nan=False`` records creation sites only.
    """
    if not isinstance(check_nan, bool):
        raise TypeError(f"detect_anomaly expected check_nan to be a bool, but got {type(check_nan).__name__}")
    previous = _state.check_nan
    _set_depth(_state.depth + 1)
    _state.check_nan = check_nan
    try:
        yield
    finally:
        _set_depth(_state.depth - 1)
        _state.check_nan = previous


def set_detect_anomaly(mode):
    """Turn anomaly detection on or off in this thread outside a `with` block (PyTorch's set_detect_anomaly)."""
    if not isinstance(mode, bool):
        raise TypeError(f"set_detect_anomaly expected a bool, but got {type(mode).__name__}")
    _set_depth(1 if mode else 0)
    _state.check_nan = True


def _user_frame():
    """'file:line in function' of the innermost caller outside cnnnumba (where the user built this op)."""
    for frame in reversed(traceback.extract_stack()):
        if not os.path.abspath(frame.filename).startswith(_PACKAGE_DIR + os.sep):
            return f"{frame.filename}:{frame.lineno} in {frame.name}"
    return "an unknown place"


def _non_finite(array):
    """(NaN count, Inf count) of a float array; (0, 0) for anything else."""
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fc":
        return 0, 0
    if np.isfinite(array).all():
        return 0, 0
    return int(np.isnan(array).sum()), int(np.isinf(array).sum())


def _describe(nans, infs):
    return " and ".join(part for part in (f"{nans} NaN" if nans else "", f"{infs} Inf" if infs else "") if part)


def _inputs_state(arrays):
    bad = [i for i, a in enumerate(arrays) if sum(_non_finite(a))]
    if not bad:
        return "its inputs were all finite"
    return f"its input{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} already held NaN or Inf"


def on_forward(op, arrays, output):
    """Called by Function.apply while anomaly detection is on, after op.forward returned `output`."""
    op._anomaly_site = _user_frame()
    if not _state.check_nan:
        return
    nans, infs = _non_finite(output)
    if nans or infs:
        name = type(op).__name__
        raise AnomalyError(
            f"detect_anomaly: the forward of {name} produced {_describe(nans, infs)} values in its output of "
            f"shape {tuple(output.shape)} ({_inputs_state(arrays)}); the op was called at {op._anomaly_site}",
            name, "forward")


def on_backward(op, grad_output, input_grads):
    """Called by run_backward while anomaly detection is on, after op.backward returned `input_grads`."""
    if not _state.check_nan:
        return
    for index, grad in enumerate(input_grads):
        nans, infs = _non_finite(grad)
        if nans or infs:
            name = type(op).__name__
            received = "finite" if not sum(_non_finite(grad_output)) else "already non-finite"
            site = getattr(op, "_anomaly_site", None) or "an unknown place (it was created outside detect_anomaly)"
            raise AnomalyError(
                f"detect_anomaly: the backward of {name} produced {_describe(nans, infs)} values in the gradient "
                f"of its input {index} (shape {tuple(grad.shape)}); the gradient it received was {received}; "
                f"the op was called at {site}",
                name, "backward")
