"""safetensors weights: both ways with PyTorch, format chosen by content, atomic writes, and bad files refused."""
import os
import struct

import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import models, nn
from cnnnumba.io import CheckpointError

safetensors_numpy = pytest.importorskip("safetensors.numpy")


def _small_model():
    cn.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU6(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 5))


def _state_of(model):
    return {key: value.copy() for key, value in model.state_dict().items()}


def test_round_trip_keeps_names_shapes_dtypes_and_values(tmp_path):
    model = _small_model()
    model[1].num_batches_tracked[...] = 7
    path = tmp_path / "w.safetensors"
    cn.save(model.state_dict(), path)
    loaded = cn.load(path)
    assert set(loaded) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert loaded[key].dtype == value.dtype and loaded[key].shape == value.shape, key
        np.testing.assert_array_equal(loaded[key], value)
        assert loaded[key].flags.writeable
    assert loaded["1.num_batches_tracked"].shape == () and loaded["1.num_batches_tracked"] == 7
    other = _small_model()
    other.load_state_dict(loaded)
    x = cn.Tensor(np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32))
    model.eval(), other.eval()
    np.testing.assert_array_equal(model(x).data, other(x).data)


def test_format_is_chosen_by_content_not_by_name(tmp_path):
    state = _small_model().state_dict()
    weights, checkpoint = tmp_path / "w.safetensors", tmp_path / "c.ckpt"
    cn.save(state, weights)
    cn.save({"model": state, "epoch": 3}, checkpoint)
    with open(weights, "rb") as file:
        head = file.read(9)
    (length,) = struct.unpack("<Q", head[:8])
    assert head[8:9] == b"{" and 8 + length < os.path.getsize(weights)
    with open(checkpoint, "rb") as file:
        assert file.read(4) == b"PK\x03\x04"
    os.rename(weights, tmp_path / "renamed.bin")
    os.rename(checkpoint, tmp_path / "renamed.safetensors")
    assert set(cn.load(tmp_path / "renamed.bin")) == set(state)
    assert cn.load(tmp_path / "renamed.safetensors")["epoch"] == 3


def test_a_file_written_by_pytorch_loads_into_the_cnnnumba_model(tmp_path):
    torch = pytest.importorskip("torch")
    twins = pytest.importorskip("cnnnumba.bench.torch_twins")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    twin = twins.resnet18(num_classes=10).eval()
    save_file(twin.state_dict(), str(tmp_path / "resnet18.safetensors"))
    model = models.resnet18(num_classes=10).eval()
    result = model.load_state_dict(cn.load(tmp_path / "resnet18.safetensors"))
    assert result.missing_keys == [] and result.unexpected_keys == []
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = twin(torch.from_numpy(x)).numpy()
    got = model(cn.Tensor(x)).data
    assert np.abs(got - expected).max() <= 1e-3 * np.abs(expected).max()


def test_a_file_cnnnumba_writes_loads_into_pytorch_strictly(tmp_path):
    torch = pytest.importorskip("torch")
    twins = pytest.importorskip("cnnnumba.bench.torch_twins")
    from safetensors.torch import load_file

    model = models.mobilenet_v2(num_classes=4, width_mult=0.5)
    cn.save(model.state_dict(), tmp_path / "m.safetensors")
    twin = twins.mobilenet_v2(num_classes=4, width_mult=0.5)
    twin.load_state_dict(load_file(str(tmp_path / "m.safetensors")), strict=True)
    for key, value in twin.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), model.state_dict()[key], err_msg=key)


@pytest.mark.parametrize("damage, message", [
    (lambda data: data[:5], "truncated safetensors file \\(5 bytes"),
    (lambda data: data[:40], "truncated safetensors file: its header needs"),
    (lambda data: data[:-3], "truncated or corrupt safetensors file"),
    (lambda data: data[:8] + b"{" + b"\xff" * (len(data) - 9), "corrupt safetensors header"),
])
def test_damaged_files_are_refused_and_the_model_is_unchanged(tmp_path, damage, message):
    model = _small_model()
    path = tmp_path / "w.safetensors"
    cn.save(model.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(damage(data))
    before = _state_of(model)
    with pytest.raises(CheckpointError, match=message):
        model.load_state_dict(cn.load(path))
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_a_dtype_numpy_cannot_hold_is_named(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2, dtype=torch.bfloat16)}, str(tmp_path / "bf16.safetensors"))
    with pytest.raises(CheckpointError, match="tensor 'weight' has dtype 'BF16', which NumPy cannot hold"):
        cn.load(tmp_path / "bf16.safetensors")


def test_wrong_shapes_and_missing_or_unexpected_keys_are_listed_by_name(tmp_path):
    model = _small_model()
    state = {key: value.copy() for key, value in model.state_dict().items()}
    state["4.weight"] = np.zeros((5, 3), np.float32)
    del state["0.weight"]
    state["extra.bias"] = np.zeros(2, np.float32)
    cn.save(state, tmp_path / "w.safetensors")
    before = _state_of(model)
    with pytest.raises(RuntimeError) as error:
        model.load_state_dict(cn.load(tmp_path / "w.safetensors"))
    text = str(error.value)
    assert 'Missing key(s) in state_dict: "0.weight"' in text
    assert 'Unexpected key(s) in state_dict: "extra.bias"' in text
    assert "size mismatch for 4.weight: copying a param with shape (5, 3)" in text
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_what_a_safetensors_file_cannot_hold_is_refused_before_writing(tmp_path):
    path = tmp_path / "w.safetensors"
    with pytest.raises(TypeError, match="holds a flat dict of name -> array"):
        cn.save([np.zeros(2)], path)
    with pytest.raises(TypeError, match="cannot save 'model' to a safetensors file: expected an array, but got dict"):
        cn.save({"model": {"w": np.zeros(2)}}, path)
    with pytest.raises(TypeError, match="dtype complex128 is not one of"):
        cn.save({"w": np.zeros(2, complex)}, path)
    with pytest.raises(TypeError, match="safetensors keys must be str"):
        cn.save({1: np.zeros(2)}, path)
    assert not path.exists() and os.listdir(tmp_path) == []


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    cn.save({"w": np.ones(3, np.float32)}, path)

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        cn.save({"w": np.zeros(3, np.float32)}, path)
    monkeypatch.undo()
    np.testing.assert_array_equal(cn.load(path)["w"], np.ones(3, np.float32))
    assert os.listdir(tmp_path) == ["w.safetensors"]


def test_tensors_and_non_contiguous_arrays_are_saved_by_value(tmp_path):
    base = np.arange(12, dtype=np.float64).reshape(3, 4)
    cn.save({"t": cn.Tensor(base[:, ::2]), "s": np.float32(2.5)}, tmp_path / "w.safetensors")
    loaded = cn.load(tmp_path / "w.safetensors")
    np.testing.assert_array_equal(loaded["t"], base[:, ::2])
    assert loaded["s"].shape == () and loaded["s"] == np.float32(2.5)
