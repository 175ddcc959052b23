"""run_slots: every slot runs once with the caller's arguments, whatever their types, and a slot's exception
reaches the caller."""
import numpy as np
import pytest

from cnnnumba.kernels._jit import jit
from cnnnumba.kernels._slots import run_slots


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
