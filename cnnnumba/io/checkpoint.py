"""Checkpoints without pickle: an .npz of plain arrays plus a JSON description of the nested structure."""
import collections
import json
import math
import os
import zipfile
import zlib

import numpy as np

from .atomic import write_atomically

FORMAT_NAME = "cnnnumba-checkpoint"
FORMAT_VERSION = 1
METADATA_KEY = "__cnnnumba_metadata__"
_ARRAY_PREFIX = "a"


class CheckpointError(ValueError):
    """A file that cannot be loaded as a cnnnumba checkpoint or safetensors weights (truncated, corrupt, unsafe, too
    new, foreign)."""


def _describe(path):
    return "".join(f"[{p!r}]" for p in path) or "the top level"


class _Encoder:
    """Turns a nested object into JSON-able nodes, collecting its arrays under generated names."""

    def __init__(self):
        self.arrays = {}
        self._open = set()  # ids of containers on the current path, to refuse cycles

    def _store(self, array):
        name = f"{_ARRAY_PREFIX}{len(self.arrays)}"
        self.arrays[name] = array
        return name

    def encode(self, obj, path=()):
        kind = type(obj)
        if obj is None or kind in (bool, int, str):
            return obj
        if kind is float:
            return obj if math.isfinite(obj) else {"$": "float", "v": repr(obj)}
        if kind is np.ndarray:
            if obj.dtype.hasobject:
                raise TypeError(f"cannot save an object array (dtype {obj.dtype}) at {_describe(path)}: "
                                "checkpoints hold plain numeric, bool or string arrays only, never pickle")
            return {"$": "ndarray", "k": self._store(obj)}
        if isinstance(obj, np.ndarray):
            raise TypeError(f"cannot save an array subclass {kind.__module__}.{kind.__qualname__} at "
                            f"{_describe(path)}: convert it with np.asarray() first")
        if isinstance(obj, np.generic):
            if obj.dtype.hasobject:
                raise TypeError(f"cannot save a numpy object scalar at {_describe(path)}")
            return {"$": "scalar", "k": self._store(np.asarray(obj))}
        if kind in (dict, collections.OrderedDict, list, tuple):
            if id(obj) in self._open:
                raise ValueError(f"cannot save a structure that contains itself (at {_describe(path)})")
            self._open.add(id(obj))
            try:
                if kind in (list, tuple):
                    node = {"$": kind.__name__, "v": [self.encode(v, path + (i,)) for i, v in enumerate(obj)]}
                else:
                    node = {"$": "dict" if kind is dict else "odict",
                            "v": [self._encode_item(k, v, path) for k, v in obj.items()]}
            finally:
                self._open.discard(id(obj))
            return node
        hint = "; save its .state_dict() instead" if hasattr(obj, "state_dict") else ""
        raise TypeError(f"cannot save an object of type {kind.__module__}.{kind.__qualname__} at {_describe(path)}: "
                        "checkpoints hold dicts, lists, tuples, str, int, float, bool, None, numpy scalars and "
                        f"arrays{hint}")

    def _encode_item(self, key, value, path):
        if type(key) is str:
            encoded_key = ["s", key]
        elif type(key) is int:
            encoded_key = ["i", key]
        else:
            raise TypeError(f"cannot save a dict key of type {type(key).__name__} ({key!r}) at {_describe(path)}: "
                            "keys must be str or int (convert numpy integers with int())")
        return [encoded_key, self.encode(value, path + (key,))]


def _write_archive(file, arrays, metadata):
    """The same zip layout np.savez writes, streamed member by member into an open file."""
    with zipfile.ZipFile(file, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in list(arrays.items()) + [(METADATA_KEY, metadata)]:
            with archive.open(name + ".npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def save(obj, path):
    """Write `obj` (nested dicts/lists/tuples of str, int, float, bool, None, numpy scalars and arrays) to `path`.

    The write is atomic (`write_atomically`): a crash at any moment leaves either the previous file or the new
    one, whole.
    """
    encoder = _Encoder()
    structure = encoder.encode(obj)
    document = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "arrays": len(encoder.arrays),
                "structure": structure}
    metadata = np.frombuffer(json.dumps(document, allow_nan=False).encode("utf-8"), dtype=np.uint8)
    write_atomically(path, lambda file: _write_archive(file, encoder.arrays, metadata))


class _Decoder:
    def __init__(self, path, archive):
        self.path = path
        self.archive = archive
        self.used = set()

    def corrupt(self, what):
        return CheckpointError(f"{self.path}: corrupt checkpoint metadata: {what}")

    def array(self, key, where):
        if not isinstance(key, str) or key not in self.archive.files:
            raise self.corrupt(f"array {key!r} (at {_describe(where)}) is not in the archive")
        try:
            array = self.archive[key]
        except ValueError as error:
            if "allow_pickle" in str(error) or "Object arrays" in str(error):
                raise CheckpointError(f"{self.path}: refusing to load object array {key!r} (at {_describe(where)}): "
                                      "it would need pickle, which cnnnumba checkpoints never use") from None
            raise CheckpointError(f"{self.path}: corrupt array {key!r} (at {_describe(where)}): {error}") from None
        except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as error:
            raise CheckpointError(f"{self.path}: truncated or corrupt array {key!r} (at {_describe(where)}): "
                                  f"{error}") from None
        if array.dtype.hasobject:
            raise CheckpointError(f"{self.path}: refusing to load object array {key!r} (at {_describe(where)})")
        return array

    def decode(self, node, where=()):
        if node is None or type(node) in (bool, int, str, float):
            return node
        if type(node) is not dict or "$" not in node:
            raise self.corrupt(f"unexpected node {node!r} at {_describe(where)}")
        tag = node["$"]
        if tag == "ndarray":
            return self.array(node.get("k"), where)
        if tag == "scalar":
            array = self.array(node.get("k"), where)
            if array.ndim != 0:
                raise self.corrupt(f"scalar at {_describe(where)} is stored with shape {array.shape}")
            return array[()]
        if tag == "float":
            if node.get("v") not in ("nan", "inf", "-inf"):
                raise self.corrupt(f"bad float {node.get('v')!r} at {_describe(where)}")
            return float(node["v"])
        values = node.get("v")
        if not isinstance(values, list):
            raise self.corrupt(f"{tag!r} node without a list of values at {_describe(where)}")
        if tag in ("list", "tuple"):
            items = [self.decode(v, where + (i,)) for i, v in enumerate(values)]
            return items if tag == "list" else tuple(items)
        if tag in ("dict", "odict"):
            result = {} if tag == "dict" else collections.OrderedDict()
            for item in values:
                if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], list)
                        and len(item[0]) == 2 and (item[0][0], type(item[0][1])) in (("s", str), ("i", int))):
                    raise self.corrupt(f"bad dict item {item!r} at {_describe(where)}")
                key = item[0][1]
                result[key] = self.decode(item[1], where + (key,))
            return result
        raise self.corrupt(f"unknown node type {tag!r} at {_describe(where)}")


def load(path):
    """Read a checkpoint written by `save`, refusing anything that is not one (never unpickles)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a folder, not a checkpoint file")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as file:
            starts_like_zip = file.read(4) == b"PK\x03\x04"
        if starts_like_zip:
            raise CheckpointError(f"{path}: truncated or corrupt checkpoint (a zip archive without its "
                                  "central directory)")
        raise CheckpointError(f"{path}: not a cnnnumba checkpoint (not an .npz archive)")
    try:
        archive = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint: {error}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise CheckpointError(f"{path}: not a cnnnumba checkpoint (not an .npz archive)")
    with archive:
        if METADATA_KEY not in archive.files:
            raise CheckpointError(f"{path}: not a cnnnumba checkpoint (no {METADATA_KEY!r} entry)")
        decoder = _Decoder(path, archive)
        raw = decoder.array(METADATA_KEY, ("metadata",))
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise CheckpointError(f"{path}: not a cnnnumba checkpoint (metadata entry is {raw.dtype} {raw.shape})")
        try:
            document = json.loads(raw.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{path}: corrupt checkpoint metadata: {error}") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
            raise CheckpointError(f"{path}: not a cnnnumba checkpoint (metadata does not name {FORMAT_NAME!r})")
        version = document.get("format_version")
        if type(version) is not int or version < 1:
            raise CheckpointError(f"{path}: corrupt checkpoint metadata: format_version {version!r}")
        if version > FORMAT_VERSION:
            raise CheckpointError(f"{path}: checkpoint format_version {version} is newer than this cnnnumba reads "
                                  f"(up to {FORMAT_VERSION}); upgrade cnnnumba to load it")
        if "structure" not in document:
            raise CheckpointError(f"{path}: corrupt checkpoint metadata: no structure")
        return decoder.decode(document["structure"])
