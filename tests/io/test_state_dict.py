"""State-dict checks: every missing, unexpected, misshapen or mistyped entry is named in one error."""
import numpy as np
import pytest

from cnnnumba.io import IncompatibleKeys, StateDictError, check_state_dict, compare_state_dict

EXPECTED = {
    "conv.weight": np.zeros((8, 1, 3, 3), np.float32),
    "conv.bias": np.zeros(8, np.float32),
    "bn.num_batches_tracked": ((), np.int64),  # (shape, dtype) pairs work as well as arrays
    "fc.weight": np.zeros((10, 32), np.float32),
}


def _matching():
    return {"conv.weight": np.ones((8, 1, 3, 3), np.float32), "conv.bias": np.ones(8, np.float32),
            "bn.num_batches_tracked": np.array(3), "fc.weight": np.ones((10, 32), np.float32)}


def test_matching_state_dict_passes():
    assert check_state_dict(_matching(), EXPECTED) == IncompatibleKeys([], [])


def test_every_problem_is_reported_at_once():
    state = _matching()
    del state["conv.bias"]
    del state["fc.weight"]
    state["extra.weight"] = np.zeros(2)
    state["conv.weight"] = np.zeros((8, 2, 3, 3), np.float64)
    state["bn.num_batches_tracked"] = [3]
    with pytest.raises(StateDictError) as raised:
        check_state_dict(state, EXPECTED, owner="Net")
    message = str(raised.value)
    assert message.startswith("Error(s) in loading state_dict for Net:")
    assert 'Missing key(s) in state_dict: "conv.bias", "fc.weight".' in message
    assert 'Unexpected key(s) in state_dict: "extra.weight".' in message
    assert ("size mismatch for conv.weight: copying a param with shape (8, 2, 3, 3) from checkpoint, "
            "the shape in current model is (8, 1, 3, 3).") in message
    assert ("dtype mismatch for conv.weight: copying a param with dtype float64 from checkpoint, "
            "the dtype in current model is float32.") in message
    assert "expected an array for bn.num_batches_tracked, but the checkpoint holds list" in message
    assert isinstance(raised.value, RuntimeError) and isinstance(raised.value, ValueError)


def test_non_strict_returns_missing_and_unexpected_but_still_raises_on_shapes():
    state = _matching()
    del state["fc.weight"]
    state["head.bias"] = np.zeros(3)
    assert check_state_dict(state, EXPECTED, strict=False) == IncompatibleKeys(["fc.weight"], ["head.bias"])
    state["conv.bias"] = np.zeros(9, np.float32)
    with pytest.raises(StateDictError, match="size mismatch for conv.bias"):
        check_state_dict(state, EXPECTED, strict=False)


def test_dtype_check_can_be_turned_off():
    state = _matching()
    state["conv.bias"] = state["conv.bias"].astype(np.float64)
    with pytest.raises(StateDictError, match="dtype mismatch for conv.bias"):
        check_state_dict(state, EXPECTED)
    assert check_state_dict(state, EXPECTED, check_dtype=False) == IncompatibleKeys([], [])


def test_compare_returns_the_three_lists():
    state = _matching()
    state["fc.weight"] = np.array([None] * 320, dtype=object).reshape(10, 32)
    missing, unexpected, mismatches = compare_state_dict(state, EXPECTED)
    assert (missing, unexpected) == ([], [])
    assert mismatches == ["object array for fc.weight: state dicts hold numeric arrays only"]


def test_bad_arguments():
    with pytest.raises(TypeError, match="expected a state dict .* but got list"):
        compare_state_dict([1], EXPECTED)
    with pytest.raises(TypeError, match="expected entry 'w' should be an array or a \\(shape, dtype\\) pair"):
        compare_state_dict({"w": np.zeros(1)}, {"w": 3})
