"""Checkpoints: exact round trips, refusals of unsafe or damaged files, and atomic writes under failure and SIGKILL."""
import collections
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba.io import FORMAT_VERSION, CheckpointError, load, save
from cnnnumba.io.checkpoint import METADATA_KEY


def assert_identical(loaded, original, where="top"):
    """Equal values AND equal types all the way down: int keys stay int, tuples stay tuples, dtypes stay."""
    assert type(loaded) is type(original), f"{where}: {type(loaded).__name__} != {type(original).__name__}"
    if isinstance(original, dict):
        assert list(loaded) == list(original), f"{where}: keys {list(loaded)} != {list(original)}"
        for (key, value), loaded_key in zip(original.items(), loaded):
            assert type(loaded_key) is type(key), f"{where}: key {key!r} changed type"
            assert_identical(loaded[key], value, f"{where}[{key!r}]")
    elif isinstance(original, (list, tuple)):
        assert len(loaded) == len(original), where
        for i, (a, b) in enumerate(zip(loaded, original)):
            assert_identical(a, b, f"{where}[{i}]")
    elif isinstance(original, (np.ndarray, np.generic)):
        assert loaded.dtype == original.dtype and loaded.shape == original.shape, where
        np.testing.assert_array_equal(loaded, original, err_msg=where)
    elif isinstance(original, float) and original != original:
        assert loaded != loaded, where
    else:
        assert loaded == original, where
        if isinstance(original, float):
            assert np.copysign(1.0, loaded) == np.copysign(1.0, original), where


def _training_state():
    rng = np.random.default_rng(0)
    model = collections.OrderedDict([
        ("0.weight", rng.standard_normal((4, 1, 3, 3)).astype(np.float32)),
        ("0.bias", np.zeros(4, np.float32)),
        ("1.running_mean", np.zeros(4, np.float32)),
        ("1.num_batches_tracked", np.array(7, dtype=np.int64)),
    ])
    optimizer = {
        "state": {0: {"step": np.float32(12.0), "exp_avg": np.ones((4, 1, 3, 3), np.float32)},
                  1: {"step": np.float32(12.0), "exp_avg": np.full(4, 0.5, np.float32)}},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0,
                          "amsgrad": False, "foreach": None, "params": [0, 1]}],
    }
    generator = np.random.default_rng(123)
    generator.random(3)
    return {
        "kind": "cnnnumba.training_state",
        "epoch": 3,
        "model": model,
        "optimizer": optimizer,
        "scheduler": {"last_epoch": 3, "base_lrs": [0.1], "_step_count": 4},
        "loader": {"generator_state": generator.bit_generator.state, "batches_yielded": 2},
        "rng": np.random.default_rng(9).bit_generator.state,  # holds 128-bit ints
        "history": [{"epoch": 1, "train_loss": 2.25, "test_accuracy": 0.5}],
    }


def test_training_state_round_trip(tmp_path):
    state = _training_state()
    save(state, tmp_path / "state.ckpt")
    loaded = load(tmp_path / "state.ckpt")
    assert_identical(loaded, state)
    resumed = np.random.default_rng()
    resumed.bit_generator.state = loaded["loader"]["generator_state"]
    original = np.random.default_rng()
    original.bit_generator.state = state["loader"]["generator_state"]
    assert resumed.random() == original.random()


@pytest.mark.parametrize("value", [
    None, True, False, 0, -5, 2**100, -(2**70), 1.5, -0.0, float("nan"), float("inf"), float("-inf"), "", "ü ✓",
    np.float32(1.25), np.float64(-2.5), np.int8(-3), np.uint64(2**64 - 1), np.bool_(True), np.complex64(1 + 2j),
    np.str_("text"), np.float16(0.1),
    np.array(3.5), np.zeros((0, 3), np.float32), np.arange(6, dtype=np.int16).reshape(2, 3),
    np.asfortranarray(np.arange(6.0).reshape(2, 3)), np.arange(10.0)[::3], np.array([True, False]),
    np.array(["ab", "c"]), np.array([b"x", b"yz"]), np.array([1 + 1j], np.complex128),
    np.array(["2024-01-01"], dtype="datetime64[D]"),
    [], (), {}, [1, (2, [3, {}])], (np.ones(2),), {1: "a", "1": "b", -2: None},
    collections.OrderedDict([("b", 1), ("a", 2)]), {"nested": {"deeper": {"deepest": [np.int32(1)]}}},
])
def test_value_round_trip(tmp_path, value):
    save({"value": value}, tmp_path / "value.ckpt")
    assert_identical(load(tmp_path / "value.ckpt"), {"value": value})


def test_top_level_array_and_string_paths(tmp_path):
    array = np.arange(5, dtype=np.uint8)
    save(array, str(tmp_path / "plain"))
    assert os.path.exists(tmp_path / "plain") and not os.path.exists(tmp_path / "plain.npz")
    assert_identical(load(str(tmp_path / "plain")), array)


def test_cn_save_and_load_are_the_io_functions():
    assert cn.save is save and cn.load is load


def test_loaded_arrays_are_writable_copies(tmp_path):
    save({"w": np.ones(3)}, tmp_path / "w.ckpt")
    loaded = load(tmp_path / "w.ckpt")["w"]
    loaded += 1
    assert_identical(load(tmp_path / "w.ckpt"), {"w": np.ones(3)})


# what save refuses; the refusal happens before anything touches the disk

class _Model:
    def state_dict(self):
        return {}


@pytest.mark.parametrize("obj, error, message", [
    ({"w": np.array([{}, 1], dtype=object)}, TypeError, r"cannot save an object array \(dtype object\) at \['w'\]"),
    ([np.array([1], dtype=object)[0:1]], TypeError, r"object array .* at \[0\]"),
    ({"s": {1, 2}}, TypeError, r"cannot save an object of type builtins.set at \['s'\]"),
    ({"m": _Model()}, TypeError, r"save its .state_dict\(\) instead"),
    ({1.5: 0}, TypeError, r"dict key of type float \(1.5\)"),
    ({(1, 2): 0}, TypeError, "dict key of type tuple"),
    ({True: 0}, TypeError, "dict key of type bool"),
    ({np.int64(1): 0}, TypeError, r"dict key of type int64 .*convert numpy integers with int\(\)"),
    ({"x": collections.namedtuple("Pair", "a b")(1, 2)}, TypeError, "type .*Pair"),
    ({"x": np.ma.array([1.0])}, TypeError, r"array subclass numpy.ma.MaskedArray .*np.asarray\(\)"),
])
def test_save_refuses(tmp_path, obj, error, message):
    target = tmp_path / "refused.ckpt"
    save({"previous": 1}, target)
    with pytest.raises(error, match=message):
        save(obj, target)
    assert load(target) == {"previous": 1}
    assert sorted(os.listdir(tmp_path)) == ["refused.ckpt"]


def test_save_refuses_cycles(tmp_path):
    loop = []
    loop.append(loop)
    with pytest.raises(ValueError, match="contains itself"):
        save({"loop": loop}, tmp_path / "cycle.ckpt")
    assert os.listdir(tmp_path) == []


def test_shared_subobjects_are_not_cycles(tmp_path):
    shared = [1, 2]
    save({"a": shared, "b": shared}, tmp_path / "shared.ckpt")
    assert load(tmp_path / "shared.ckpt") == {"a": [1, 2], "b": [1, 2]}


# what load refuses

def _raw_archive(path, members):
    """A zip laid out like np.savez's, with arbitrary members (allow_pickle=True lets us plant object arrays)."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in members.items():
            with archive.open(name + ".npy", "w") as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=True)


def _metadata(document):
    return np.frombuffer(json.dumps(document).encode(), dtype=np.uint8)


def test_save_to_a_missing_folder_or_a_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="the folder .*nowhere does not exist"):
        save({}, tmp_path / "nowhere" / "x.ckpt")
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        save({}, tmp_path)
    with pytest.raises(IsADirectoryError, match="is a folder, not a checkpoint file"):
        load(tmp_path)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*absent.ckpt"):
        load(tmp_path / "absent.ckpt")


@pytest.mark.parametrize("payload", [
    pickle.dumps({"w": [1, 2]}),
    b"",
    b"hello, not a checkpoint",
])
def test_load_refuses_non_archives(tmp_path, payload):
    path = tmp_path / "other.ckpt"
    path.write_bytes(payload)
    with pytest.raises(CheckpointError, match=r"not a cnnnumba checkpoint \(not an .npz archive\)"):
        load(path)


def test_load_refuses_a_bare_npy(tmp_path):
    np.save(tmp_path / "array.npy", np.ones(3))
    with pytest.raises(CheckpointError, match="not a cnnnumba checkpoint"):
        load(tmp_path / "array.npy")


def test_load_refuses_npz_without_metadata(tmp_path):
    np.savez(tmp_path / "plain.npz", weights=np.ones(3))
    with pytest.raises(CheckpointError, match=r"not a cnnnumba checkpoint \(no '__cnnnumba_metadata__' entry\)"):
        load(tmp_path / "plain.npz")


def test_load_refuses_other_zip_files(tmp_path):
    with zipfile.ZipFile(tmp_path / "archive.zip", "w") as archive:  # e.g. what torch.save writes
        archive.writestr("archive/data.pkl", pickle.dumps({"w": 1}))
    with pytest.raises(CheckpointError, match="not a cnnnumba checkpoint"):
        load(tmp_path / "archive.zip")


def test_load_refuses_foreign_metadata(tmp_path):
    _raw_archive(tmp_path / "f.npz", {METADATA_KEY: _metadata({"format": "something-else", "format_version": 1})})
    with pytest.raises(CheckpointError, match="metadata does not name 'cnnnumba-checkpoint'"):
        load(tmp_path / "f.npz")


def test_load_refuses_a_newer_format_version(tmp_path):
    document = {"format": "cnnnumba-checkpoint", "format_version": FORMAT_VERSION + 1, "arrays": 0,
                "structure": {"$": "dict", "v": []}}
    _raw_archive(tmp_path / "new.npz", {METADATA_KEY: _metadata(document)})
    with pytest.raises(CheckpointError, match=rf"format_version {FORMAT_VERSION + 1} is newer than this cnnnumba "
                                              rf"reads \(up to {FORMAT_VERSION}\)"):
        load(tmp_path / "new.npz")


def test_load_refuses_object_arrays(tmp_path):
    document = {"format": "cnnnumba-checkpoint", "format_version": FORMAT_VERSION, "arrays": 1,
                "structure": {"$": "dict", "v": [[["s", "w"], {"$": "ndarray", "k": "a0"}]]}}
    _raw_archive(tmp_path / "obj.npz", {"a0": np.array([{"x": 1}, None], dtype=object),
                                        METADATA_KEY: _metadata(document)})
    with pytest.raises(CheckpointError, match=r"refusing to load object array 'a0' \(at \['w'\]\).*pickle"):
        load(tmp_path / "obj.npz")


@pytest.mark.parametrize("structure, message", [
    ({"$": "ndarray", "k": "a7"}, r"array 'a7' \(at the top level\) is not in the archive"),
    ({"$": "mystery", "v": []}, "unknown node type 'mystery'"),
    ({"$": "dict", "v": [[["f", 1.5], 0]]}, "bad dict item"),
    ({"$": "float", "v": "1e400"}, "bad float"),
    ([1, 2], "unexpected node"),
])
def test_load_refuses_corrupt_metadata(tmp_path, structure, message):
    document = {"format": "cnnnumba-checkpoint", "format_version": FORMAT_VERSION, "arrays": 0,
                "structure": structure}
    _raw_archive(tmp_path / "bad.npz", {METADATA_KEY: _metadata(document)})
    with pytest.raises(CheckpointError, match=message):
        load(tmp_path / "bad.npz")


def test_load_refuses_unparseable_metadata(tmp_path):
    _raw_archive(tmp_path / "bad.npz", {METADATA_KEY: np.frombuffer(b"{not json", dtype=np.uint8)})
    with pytest.raises(CheckpointError, match="corrupt checkpoint metadata"):
        load(tmp_path / "bad.npz")


@pytest.mark.parametrize("keep", [0, 10, 0.5, -1, -30])
def test_load_refuses_truncated_files(tmp_path, keep):
    path = tmp_path / "cut.ckpt"
    save({"w": np.arange(20000, dtype=np.float64), "epoch": 1}, path)
    data = path.read_bytes()
    end = int(len(data) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(data) + keep)
    path.write_bytes(data[:end])
    with pytest.raises(CheckpointError, match="truncated or corrupt|not a cnnnumba checkpoint"):
        load(path)


def test_load_refuses_flipped_bytes(tmp_path):
    path = tmp_path / "flipped.ckpt"
    save({"w": np.arange(20000, dtype=np.float64)}, path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the array's data: only the zip CRC can notice
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="truncated or corrupt array 'a0'.*CRC"):
        load(path)


# atomic writes

def test_failure_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "model.ckpt"
    previous = {"w": np.arange(1000, dtype=np.float32), "epoch": 1}
    save(previous, target)
    real_write_array = np.lib.format.write_array
    calls = []

    def write_half_then_fail(fp, array, *args, **kwargs):
        calls.append(array.shape)
        buffer = io.BytesIO()
        real_write_array(buffer, array, *args, **kwargs)
        fp.write(buffer.getvalue()[:len(buffer.getvalue()) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np.lib.format, "write_array", write_half_then_fail)
    with pytest.raises(OSError, match="No space left on device"):
        save({"w": np.zeros(5000, np.float32), "epoch": 2}, target)
    assert calls, "the failure was never injected"
    monkeypatch.undo()
    assert_identical(load(target), previous)
    assert os.listdir(tmp_path) == ["model.ckpt"]


@pytest.mark.parametrize("failure", [OSError(5, "Input/output error"), KeyboardInterrupt()])
def test_failure_at_fsync_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failure):
    target = tmp_path / "model.ckpt"
    save({"epoch": 1}, target)

    def failing_fsync(fd):
        raise failure

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(type(failure)):
        save({"epoch": 2}, target)
    monkeypatch.undo()
    assert load(target) == {"epoch": 1}
    assert os.listdir(tmp_path) == ["model.ckpt"]


def test_successful_save_leaves_no_temporary_and_keeps_permissions(tmp_path):
    target = tmp_path / "model.ckpt"
    save({"epoch": 1}, target)
    os.chmod(target, 0o640)
    save({"epoch": 2}, target)
    assert os.listdir(tmp_path) == ["model.ckpt"]
    assert os.stat(target).st_mode & 0o777 == 0o640
    assert load(target) == {"epoch": 2}


_SAVER = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from cnnnumba.io import save

    path, mode = sys.argv[1], sys.argv[2]
    weights = np.empty(1_000_000, dtype=np.float64)  # 8 MB: a save takes long enough to be caught mid-way
    if mode == "pause-at-fsync":
        real_fsync = os.fsync
        def announcing_fsync(fd):
            print("fsync", flush=True)
            time.sleep(60)
        os.fsync = announcing_fsync
    if mode == "pause-mid-array":
        real_write_array = np.lib.format.write_array
        def partial_write(fp, array, *args, **kwargs):
            if array.size == weights.size:
                fp.write(b"\\x93NUMPY" + bytes(1000))
                print("partial", flush=True)
                time.sleep(60)
            real_write_array(fp, array, *args, **kwargs)
        np.lib.format.write_array = partial_write
    step = 1
    while True:
        weights.fill(step)
        save({"step": step, "weights": weights}, path)
        print(step, flush=True)
        step += 1
""")


def _start_saver(tmp_path, mode):
    script = tmp_path / "saver.py"
    script.write_text(_SAVER)
    return subprocess.Popen([sys.executable, str(script), str(tmp_path / "run.ckpt"), mode],
                            stdout=subprocess.PIPE, text=True, cwd=str(tmp_path))


def _kill(process):
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL


def _assert_whole(path, at_least):
    state = load(path)
    assert state["step"] >= at_least
    assert state["weights"].shape == (1_000_000,) and np.all(state["weights"] == state["step"])
    return state["step"]


@pytest.mark.parametrize("mode, announcement", [("pause-at-fsync", "fsync"), ("pause-mid-array", "partial")])
def test_sigkill_at_a_known_point_keeps_the_previous_checkpoint(tmp_path, mode, announcement):
    target = tmp_path / "run.ckpt"
    save({"step": 0, "weights": np.zeros(1_000_000)}, target)
    process = _start_saver(tmp_path, mode)
    try:
        assert process.stdout.readline().strip() == announcement
    finally:
        _kill(process)
    temporaries = [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
    assert len(temporaries) == 1, "the kill should have landed inside a save"
    assert _assert_whole(target, 0) == 0


def test_sigkill_of_a_saving_loop_leaves_a_whole_checkpoint(tmp_path):
    target = tmp_path / "run.ckpt"
    save({"step": 0, "weights": np.zeros(1_000_000)}, target)
    rng = np.random.default_rng(0)
    completed = 0
    for _ in range(3):
        process = _start_saver(tmp_path, "loop")
        try:
            completed = int(process.stdout.readline())  # one save finished; the next is under way
            time.sleep(rng.uniform(0.0, 0.05))
        finally:
            _kill(process)
        _assert_whole(target, completed)
