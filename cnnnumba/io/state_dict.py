"""Compare a state dict against the keys, shapes and dtypes a model expects, naming every mismatch."""
import collections

import numpy as np

IncompatibleKeys = collections.namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class StateDictError(ValueError, RuntimeError):
    """A state dict that does not fit; a RuntimeError like PyTorch's and a ValueError like cnnnumba's others."""


def _spec(name, value):
    """(shape, dtype) of an expected entry: an array, or a (shape, dtype) pair."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return tuple(value.shape), np.dtype(value.dtype)
    if isinstance(value, tuple) and len(value) == 2:
        return tuple(value[0]), np.dtype(value[1])
    raise TypeError(f"expected entry {name!r} should be an array or a (shape, dtype) pair, but got {value!r}")


def compare_state_dict(state_dict, expected, check_dtype=True):
    """(missing keys, unexpected keys, mismatches): every key of `expected` absent from `state_dict`, every key
    of `state_dict` not in `expected`, and one message per entry whose type, shape or dtype differs."""
    if not isinstance(state_dict, collections.abc.Mapping):
        raise TypeError(f"expected a state dict (a mapping of names to arrays), but got {type(state_dict).__name__}")
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatches = []
    for key, reference in expected.items():
        if key not in state_dict:
            continue
        shape, dtype = _spec(key, reference)
        value = state_dict[key]
        if not isinstance(value, (np.ndarray, np.generic)):
            mismatches.append(f"expected an array for {key}, but the checkpoint holds {type(value).__name__}")
            continue
        if value.dtype.hasobject:
            mismatches.append(f"object array for {key}: state dicts hold numeric arrays only")
            continue
        if tuple(value.shape) != shape:
            mismatches.append(f"size mismatch for {key}: copying a param with shape {tuple(value.shape)} from "
                              f"checkpoint, the shape in current model is {shape}")
        if check_dtype and value.dtype != dtype:
            mismatches.append(f"dtype mismatch for {key}: copying a param with dtype {value.dtype} from "
                              f"checkpoint, the dtype in current model is {dtype}")
    return missing, unexpected, mismatches


def check_state_dict(state_dict, expected, strict=True, check_dtype=True, owner="Module"):
    """Raise StateDictError listing every problem at once, PyTorch-style; return IncompatibleKeys otherwise.

    With strict=False, missing and unexpected keys are returned rather than raised; shape and dtype mismatches
    always raise (as in PyTorch's load_state_dict).
    """
    missing, unexpected, mismatches = compare_state_dict(state_dict, expected, check_dtype=check_dtype)
    problems = []
    if strict and missing:
        problems.append("Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in missing) + ".")
    if strict and unexpected:
        problems.append("Unexpected key(s) in state_dict: " + ", ".join(f'"{k}"' for k in unexpected) + ".")
    problems.extend(m + "." for m in mismatches)
    if problems:
        raise StateDictError(f"Error(s) in loading state_dict for {owner}:\n\t" + "\n\t".join(problems))
    return IncompatibleKeys(missing, unexpected)
