"""Data set readers: the bundled 8x8 digits, MNIST from its IDX files and CIFAR-10 from its binary batches."""
import gzip
import os
import zlib
from importlib import resources

import numpy as np

from .dataset import ArrayDataset

DIGITS_FILE = "digits.csv.gz"
DIGITS_TEST_EVERY = 5  # every 5th sample of each class goes to the test part (20 %)

_IDX_UBYTE = 0x08
_CIFAR_RECORD = 1 + 3 * 32 * 32


def _read_bytes(path):
    """All bytes of `path`, decompressing `.gz`; a damaged archive raises ValueError naming the file."""
    if not path.endswith(".gz"):
        with open(path, "rb") as f:
            return f.read()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as error:  # BadGzipFile is an OSError
        raise ValueError(f"{path}: corrupt or truncated gzip file ({error})") from None


def _scale_bytes(pixels):
    """uint8 pixels as float32 in [0, 1], without a second full-size temporary."""
    images = pixels.astype(np.float32)
    images /= np.float32(255.0)
    return images


def _digits_split(labels):
    """Stratified, RNG-free split: within each class, in file order, every 5th sample is a test sample."""
    test_mask = np.zeros(labels.shape[0], dtype=bool)
    for digit in np.unique(labels):
        members = np.flatnonzero(labels == digit)
        test_mask[members[DIGITS_TEST_EVERY - 1::DIGITS_TEST_EVERY]] = True
    return np.flatnonzero(~test_mask), np.flatnonzero(test_mask)


def load_digits():
    """The UCI optical handwritten digits (1797 images, 1x8x8, 10 classes) bundled with cnnnumba.

    Returns (train, test) ArrayDatasets of float32 images in [0, 1] and int64 labels. The split is fixed and
    stratified: within each class, in file order, every 5th sample is in the test part (355 test, 1442 train).
    Source and licence (CC BY 4.0): cnnnumba/data/DIGITS_LICENSE.txt.
    """
    with resources.files(__package__).joinpath(DIGITS_FILE).open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    if table.shape != (1797, 65):
        raise ValueError(f"{DIGITS_FILE}: expected 1797 rows of 65 values, but got shape {table.shape}")
    pixels, labels = table[:, :64], table[:, 64]
    if pixels.min() < 0 or pixels.max() > 16 or labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{DIGITS_FILE}: pixel counts must be in 0..16 and labels in 0..9")
    images = (pixels.astype(np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    train, test = _digits_split(labels)
    return ArrayDataset(images[train], labels[train]), ArrayDataset(images[test], labels[test])


def _find(root, names, folders):
    """The first existing `folder/name` under root (raw before .gz); FileNotFoundError lists what was tried."""
    tried = []
    for folder in folders:
        for name in names:
            path = os.path.join(root, folder, name) if folder else os.path.join(root, name)
            if os.path.isfile(path):
                return path
            tried.append(path)
    raise FileNotFoundError(f"none of these files exists: {', '.join(tried)}")


def read_idx(path, expected_ndim):
    """An IDX file of unsigned bytes (the MNIST format) as a uint8 array, checking magic, shape and length."""
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: truncated IDX file ({len(data)} bytes, shorter than its 4-byte magic number)")
    zeros, dtype_code, ndim = data[0:2], data[2], data[3]
    expected_magic = (_IDX_UBYTE << 8) | expected_ndim
    magic = int.from_bytes(data[:4], "big")
    if zeros != b"\x00\x00" or dtype_code != _IDX_UBYTE or ndim != expected_ndim:
        raise ValueError(f"{path}: wrong magic number 0x{magic:08X}, expected 0x{expected_magic:08X} "
                         f"(an IDX file of unsigned bytes with {expected_ndim} dimensions)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes, the header needs {header})")
    dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected_bytes = int(np.prod(dims, dtype=np.int64))
    found = len(data) - header
    if found < expected_bytes:
        raise ValueError(f"{path}: truncated: the header announces shape {dims} ({expected_bytes} bytes of data), "
                         f"but only {found} bytes follow")
    if found > expected_bytes:
        raise ValueError(f"{path}: corrupt: the header announces shape {dims} ({expected_bytes} bytes of data), "
                         f"but {found} bytes follow")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _load_mnist_part(root, prefix):
    folders = ("", os.path.join("MNIST", "raw"))
    images_path = _find(root, (f"{prefix}-images-idx3-ubyte", f"{prefix}-images-idx3-ubyte.gz"), folders)
    labels_path = _find(root, (f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels-idx1-ubyte.gz"), folders)
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
                         f"{labels.shape[0]} labels")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{labels_path}: labels must be digits 0..9, but found {int(labels.max())}")
    images = _scale_bytes(images)[:, None, :, :]
    return ArrayDataset(images, labels.astype(np.int64))


def load_mnist(root):
    """MNIST (or a drop-in like Fashion-MNIST) from the four IDX files in `root` or `root/MNIST/raw`.

    Files: train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte,
    each raw or gzipped (`.gz`). Returns (train, test) ArrayDatasets: float32 (N, 1, 28, 28) in [0, 1], int64.
    """
    root = os.fspath(root)
    return _load_mnist_part(root, "train"), _load_mnist_part(root, "t10k")


def read_cifar_batch(path):
    """One CIFAR-10 binary batch (records of 1 label byte + 3x32x32 pixel bytes) as (uint8 images, labels)."""
    data = _read_bytes(path)
    if len(data) == 0 or len(data) % _CIFAR_RECORD:
        raise ValueError(f"{path}: truncated or corrupt: {len(data)} bytes is not a whole, non-zero number of "
                         f"{_CIFAR_RECORD}-byte records (1 label byte + 3072 pixel bytes)")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0]
    if labels.max() > 9:
        raise ValueError(f"{path}: corrupt: record {int(np.argmax(labels > 9))} has label {int(labels.max())}, "
                         "CIFAR-10 labels are 0..9")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def _cifar_dataset(paths):
    parts = [read_cifar_batch(path) for path in paths]
    images = np.concatenate([images for images, _ in parts])
    labels = np.concatenate([labels for _, labels in parts]).astype(np.int64)
    return ArrayDataset(_scale_bytes(images), labels)


def load_cifar10(root):
    """CIFAR-10 from its binary version (never the pickled one): `data_batch_1.bin`..`data_batch_5.bin` and
    `test_batch.bin` in `root` or `root/cifar-10-batches-bin`.

    Returns (train, test) ArrayDatasets: float32 (N, 3, 32, 32) in [0, 1], int64 labels.
    """
    root = os.fspath(root)
    folder = root
    if not os.path.isfile(os.path.join(root, "test_batch.bin")) and \
            os.path.isdir(os.path.join(root, "cifar-10-batches-bin")):
        folder = os.path.join(root, "cifar-10-batches-bin")
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    paths = [os.path.join(folder, name) for name in names]
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"CIFAR-10 binary batches missing: {', '.join(missing)} (download the "
                                f"'CIFAR-10 binary version', cifar-10-binary.tar.gz, and extract it into {root!r})")
    return _cifar_dataset(paths[:5]), _cifar_dataset(paths[5:])
