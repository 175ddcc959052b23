"""Weights files in the safetensors format (PyTorch's and Hugging Face's), and `save`/`load` choosing the format.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON (name -> dtype, shape, byte
range), then the raw arrays; the `safetensors` package reads and writes it, and nothing in it is ever unpickled.
`load` tells the two formats apart by their first bytes: a cnnnumba checkpoint is a zip archive ("PK\\x03\\x04"),
a safetensors file has a header length that fits in the file followed by "{".
"""
import collections.abc
import json
import os
import struct

import numpy as np

from ..autograd.tensor import Tensor
from . import checkpoint
from .atomic import write_atomically
from .checkpoint import CheckpointError

SUFFIX = ".safetensors"
_ZIP_MAGIC = b"PK\x03\x04"
# the dtypes NumPy can hold, by their safetensors names
_DTYPES = {"BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "U16": np.uint16, "I16": np.int16, "U32": np.uint32,
           "I32": np.int32, "U64": np.uint64, "I64": np.int64, "F16": np.float16, "F32": np.float32,
           "F64": np.float64}


def _safetensors_numpy():
    try:
        import safetensors.numpy
    except ImportError:  # pragma: no cover - a dependency; this is for broken installs
        raise ImportError("reading and writing .safetensors files needs the safetensors package "
                          "(pip install safetensors)") from None
    return safetensors.numpy


def _flat_arrays(state_dict):
    """name -> C-contiguous array for a flat dict of arrays (Tensors and numpy scalars accepted)."""
    if not isinstance(state_dict, collections.abc.Mapping):
        raise TypeError(f"a safetensors file holds a flat dict of name -> array (a state dict), but got "
                        f"{type(state_dict).__name__}; save other objects to a checkpoint (any other suffix)")
    arrays = {}
    for name, value in state_dict.items():
        if not isinstance(name, str):
            raise TypeError(f"safetensors keys must be str, but got {type(name).__name__} ({name!r})")
        value = value.data if isinstance(value, Tensor) else value
        if not isinstance(value, (np.ndarray, np.generic)):
            raise TypeError(f"cannot save {name!r} to a safetensors file: expected an array, but got "
                            f"{type(value).__name__} (nested objects go in a checkpoint: any other suffix)")
        array = np.asarray(value)  # not ascontiguousarray, which makes 0-d arrays (num_batches_tracked) 1-d
        array = array if array.flags.c_contiguous else array.copy(order="C")
        if array.dtype.type not in _DTYPES.values():
            raise TypeError(f"cannot save {name!r} to a safetensors file: dtype {array.dtype} is not one of "
                            f"{', '.join(np.dtype(t).name for t in _DTYPES.values())}")
        arrays[name] = array
    return arrays


def save_safetensors(state_dict, path):
    """Write a flat dict of arrays (a `state_dict()`) as safetensors, atomically, as `checkpoint.save` writes."""
    data = _safetensors_numpy().save(_flat_arrays(state_dict))
    write_atomically(path, lambda file: file.write(data))


def _check_header(path, data):
    """The parsed JSON header; a clear CheckpointError for a truncated, garbled or unreadable one."""
    if len(data) < 8:
        raise CheckpointError(f"{path}: truncated safetensors file ({len(data)} bytes; the header length alone "
                              "takes 8)")
    (length,) = struct.unpack("<Q", data[:8])
    if 8 + length > len(data):
        raise CheckpointError(f"{path}: truncated safetensors file: its header needs {length} bytes but only "
                              f"{len(data) - 8} follow the length")
    try:
        header = json.loads(data[8:8 + length].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: corrupt safetensors header: {error}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header: expected a JSON object")
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        if dtype not in _DTYPES:
            hint = " (convert it to float32 before saving, e.g. tensor.float() in PyTorch)" if dtype == "BF16" \
                else ""
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype!r}, which NumPy cannot hold{hint}")
    return header


def load_safetensors(path):
    """name -> writable ndarray from a safetensors file (e.g. `safetensors.torch.save_file(model.state_dict())`)."""
    path = os.fspath(path)
    with open(path, "rb") as file:
        data = file.read()
    _check_header(path, data)
    numpy_api = _safetensors_numpy()
    try:
        arrays = numpy_api.load(data)
    except Exception as error:  # SafetensorError is a plain Exception subclass of the Rust extension
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file: {error}") from None
    return {name: np.array(array) for name, array in arrays.items()}


def _is_safetensors(path):
    """Whether the file starts like a safetensors file (a header length that fits in the file, then "{") or, when it
    is no zip archive, is named like one (so a damaged one gets the safetensors reader's errors)."""
    with open(path, "rb") as file:
        head = file.read(9)
    if head[:4] == _ZIP_MAGIC:
        return False
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < os.path.getsize(path):
        return True
    return path.endswith(SUFFIX)


def save(obj, path):
    """Save `obj` to `path`: a flat dict of arrays to a path ending in ".safetensors" as safetensors (PyTorch and
    Hugging Face read it), anything else as a cnnnumba checkpoint (`checkpoint.save`). Both writes are atomic."""
    if os.fspath(path).endswith(SUFFIX):
        save_safetensors(obj, path)
    else:
        checkpoint.save(obj, path)


def load(path):
    """Load a cnnnumba checkpoint or a safetensors file, told apart by the file's first bytes, not its name.
    Never unpickles."""
    path = os.fspath(path)
    if os.path.isfile(path) and _is_safetensors(path):
        return load_safetensors(path)
    return checkpoint.load(path)
