"""Data set readers: the bundled digits split, and MNIST IDX / CIFAR-10 binary files written here in their formats."""
import gzip
import os
import struct

import numpy as np
import pytest

from cnnnumba.data import ArrayDataset, load_cifar10, load_digits, load_mnist

# digits

def test_digits_sizes_classes_and_range():
    train, test = load_digits()
    assert isinstance(train, ArrayDataset) and isinstance(test, ArrayDataset)
    assert (len(train), len(test)) == (1442, 355)
    for part in (train, test):
        assert part.images.dtype == np.float32 and part.images.shape[1:] == (1, 8, 8)
        assert part.labels.dtype == np.int64
        assert part.images.min() == 0.0 and part.images.max() == 1.0
        assert set(np.unique(part.labels).tolist()) == set(range(10))
    # stratified: every class keeps about a fifth of its samples for testing
    ratio = np.bincount(test.labels) / (np.bincount(test.labels) + np.bincount(train.labels))
    assert np.all((ratio > 0.18) & (ratio <= 0.2))


def test_digits_split_is_deterministic_and_disjoint():
    train_a, test_a = load_digits()
    train_b, test_b = load_digits()
    np.testing.assert_array_equal(train_a.images, train_b.images)
    np.testing.assert_array_equal(test_a.labels, test_b.labels)
    # the 1797 images of the file are all distinct, so train and test together must hold 1797 distinct images
    together = np.concatenate([train_a.images, test_a.images]).reshape(-1, 64)
    assert len(np.unique(together, axis=0)) == 1797


def test_digits_first_image_is_the_file_zero():
    # the first row of the UCI file is a 0 with pixel counts 0,0,5,13,9,1,0,0 on its top line
    train, _ = load_digits()
    np.testing.assert_allclose(train.images[0, 0, 0], np.array([0, 0, 5, 13, 9, 1, 0, 0]) / 16)
    assert train.labels[0] == 0


def test_digits_attribution_ships_with_the_data():
    import cnnnumba.data

    folder = os.path.dirname(cnnnumba.data.__file__)
    text = open(os.path.join(folder, "DIGITS_LICENSE.txt")).read()
    for needle in ("Alpaydin", "Kaynak", "UCI Machine Learning Repository", "CC BY 4.0"):
        assert needle in text


# MNIST

def _idx_bytes(array, magic=None):
    magic = (0x08 << 8) | array.ndim if magic is None else magic
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def _write(path, payload, gz):
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        with open(path, "wb") as f:
            f.write(payload)


def _write_mnist(root, gz=False, n_train=6, n_test=4, size=28):
    rng = np.random.default_rng(0)
    parts = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        _write(root / f"{prefix}-images-idx3-ubyte", _idx_bytes(images), gz)
        _write(root / f"{prefix}-labels-idx1-ubyte", _idx_bytes(labels), gz)
        parts[prefix] = (images, labels)
    return parts


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_idx_files(tmp_path, gz):
    parts = _write_mnist(tmp_path, gz=gz)
    train, test = load_mnist(tmp_path)
    for dataset, (images, labels) in ((train, parts["train"]), (test, parts["t10k"])):
        assert dataset.images.shape == (len(labels), 1, 28, 28) and dataset.images.dtype == np.float32
        np.testing.assert_allclose(dataset.images[:, 0] * 255, images, atol=1e-4)
        np.testing.assert_array_equal(dataset.labels, labels)
        assert dataset.labels.dtype == np.int64


def test_mnist_torchvision_layout(tmp_path):
    folder = tmp_path / "MNIST" / "raw"
    folder.mkdir(parents=True)
    _write_mnist(folder, gz=True)
    train, test = load_mnist(str(tmp_path))
    assert (len(train), len(test)) == (6, 4)


def test_mnist_missing_file(tmp_path):
    _write_mnist(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.gz"):
        load_mnist(tmp_path)


def _corrupt(tmp_path, name, payload, gz=False):
    _write_mnist(tmp_path)
    os.remove(tmp_path / name)
    _write(tmp_path / name, payload, gz)


def test_mnist_truncated_images(tmp_path):
    full = _idx_bytes(np.zeros((6, 28, 28), np.uint8))
    _corrupt(tmp_path, "train-images-idx3-ubyte", full[:-100])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte: truncated: the header announces shape "
                                         r"\(6, 28, 28\) \(4704 bytes of data\), but only 4604 bytes follow"):
        load_mnist(tmp_path)


def test_mnist_truncated_gzip_header(tmp_path):
    _corrupt(tmp_path, "train-labels-idx1-ubyte", _idx_bytes(np.zeros(6, np.uint8))[:6], gz=True)
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.gz: truncated IDX header"):
        load_mnist(tmp_path)


def test_mnist_truncated_gzip_stream(tmp_path):
    _write_mnist(tmp_path, gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz: corrupt or truncated gzip file"):
        load_mnist(tmp_path)


def test_mnist_trailing_bytes(tmp_path):
    _corrupt(tmp_path, "train-labels-idx1-ubyte", _idx_bytes(np.zeros(6, np.uint8)) + b"\x00")
    with pytest.raises(ValueError, match=r"corrupt: the header announces shape \(6,\) .* but 7 bytes follow"):
        load_mnist(tmp_path)


@pytest.mark.parametrize("name, magic", [
    ("train-images-idx3-ubyte", 0x00000801),  # a labels file where images belong
    ("train-images-idx3-ubyte", 0x00000D03),  # float data
    ("train-images-idx3-ubyte", 0x12340803),  # garbage in the leading zero bytes
])
def test_mnist_wrong_magic(tmp_path, name, magic):
    _corrupt(tmp_path, name, _idx_bytes(np.zeros((6, 28, 28), np.uint8), magic=magic))
    with pytest.raises(ValueError, match=rf"{name}: wrong magic number 0x{magic:08X}, expected 0x00000803"):
        load_mnist(tmp_path)


def test_mnist_count_mismatch(tmp_path):
    _corrupt(tmp_path, "train-labels-idx1-ubyte", _idx_bytes(np.zeros(5, np.uint8)))
    with pytest.raises(ValueError, match="holds 6 images but .*train-labels-idx1-ubyte holds 5 labels"):
        load_mnist(tmp_path)


def test_mnist_label_out_of_range(tmp_path):
    _corrupt(tmp_path, "t10k-labels-idx1-ubyte", _idx_bytes(np.full(4, 12, np.uint8)))
    with pytest.raises(ValueError, match="labels must be digits 0..9, but found 12"):
        load_mnist(tmp_path)


# CIFAR-10

def _cifar_records(n, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    return images, labels, np.concatenate([labels[:, None], images.reshape(n, -1)], axis=1).tobytes()


def _write_cifar(folder, sizes=(3, 2, 2, 1, 2, 4)):
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    written = {}
    for seed, (name, n) in enumerate(zip(names, sizes)):
        images, labels, payload = _cifar_records(n, seed)
        (folder / name).write_bytes(payload)
        written[name] = (images, labels)
    return written


@pytest.mark.parametrize("subfolder", ["", "cifar-10-batches-bin"])
def test_cifar10_reads_binary_batches(tmp_path, subfolder):
    written = _write_cifar(tmp_path / subfolder if subfolder else tmp_path)
    train, test = load_cifar10(tmp_path)
    train_images = np.concatenate([written[f"data_batch_{i}.bin"][0] for i in range(1, 6)])
    train_labels = np.concatenate([written[f"data_batch_{i}.bin"][1] for i in range(1, 6)])
    assert train.images.shape == (10, 3, 32, 32) and train.images.dtype == np.float32
    np.testing.assert_allclose(train.images * 255, train_images, atol=1e-4)
    np.testing.assert_array_equal(train.labels, train_labels)
    np.testing.assert_allclose(test.images * 255, written["test_batch.bin"][0], atol=1e-4)
    np.testing.assert_array_equal(test.labels, written["test_batch.bin"][1])
    assert test.labels.dtype == np.int64 and test.images.max() <= 1.0


def test_cifar10_missing_batch(tmp_path):
    _write_cifar(tmp_path)
    os.remove(tmp_path / "data_batch_3.bin")
    with pytest.raises(FileNotFoundError, match="CIFAR-10 binary batches missing: .*data_batch_3.bin"):
        load_cifar10(tmp_path)


@pytest.mark.parametrize("cut", [1, 3072, 3073 + 100])
def test_cifar10_truncated_batch(tmp_path, cut):
    _write_cifar(tmp_path)
    path = tmp_path / "data_batch_1.bin"
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - cut])
    with pytest.raises(ValueError, match=rf"data_batch_1.bin: truncated or corrupt: {len(data) - cut} bytes is not "
                                         r"a whole, non-zero number of 3073-byte records"):
        load_cifar10(tmp_path)


def test_cifar10_empty_batch(tmp_path):
    _write_cifar(tmp_path)
    (tmp_path / "test_batch.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="test_batch.bin: truncated or corrupt: 0 bytes"):
        load_cifar10(tmp_path)


def test_cifar10_bad_label(tmp_path):
    _write_cifar(tmp_path)
    path = tmp_path / "data_batch_2.bin"
    data = bytearray(path.read_bytes())
    data[3073] = 200  # the label byte of the second record
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="data_batch_2.bin: corrupt: record 1 has label 200"):
        load_cifar10(tmp_path)
