"""ArrayDataset and DataLoader: batching, shuffling, drop_last, seeding, transforms and exact resume."""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba.data import ArrayDataset, DataLoader, RandomHorizontalFlip


def _dataset(n=10, dtype=np.float32):
    images = np.arange(n * 2 * 3 * 3, dtype=dtype).reshape(n, 2, 3, 3)
    return ArrayDataset(images, np.arange(n) % 4)


class _ListDataset:
    """A dataset that is not an ArrayDataset, to exercise the per-item path."""

    def __init__(self, array_dataset):
        self.inner = array_dataset

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        image, label = self.inner[i]
        return image.tolist(), int(label)


def _epoch(loader):
    return [(x.copy(), y.copy()) for x, y in loader]


def _assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for (xa, ya), (xb, yb) in zip(batches_a, batches_b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


# ArrayDataset

def test_array_dataset_items_and_len():
    dataset = _dataset(5)
    assert len(dataset) == 5
    image, label = dataset[3]
    np.testing.assert_array_equal(image, dataset.images[3])
    assert label == 3 and dataset.labels.dtype == np.int64
    np.testing.assert_array_equal(dataset[-1][0], dataset.images[4])


@pytest.mark.parametrize("images, labels, error, message", [
    (np.zeros((3, 1, 2, 2), np.float32), np.zeros(4, np.int64), ValueError, "3 images .* and 4 labels"),
    (np.zeros((3, 1, 2, 2), np.uint8), np.zeros(3, np.int64), TypeError, "float array, but got dtype uint8"),
    (np.zeros((3, 1), np.float32), np.array(["a", "b", "c"]), TypeError, "integer class labels"),
    (np.float32(1.0), np.zeros(3, np.int64), ValueError, "leading sample dimension"),
])
def test_array_dataset_validation(images, labels, error, message):
    with pytest.raises(error, match=message):
        ArrayDataset(images, labels)


def test_array_dataset_index_errors():
    dataset = _dataset(3)
    with pytest.raises(IndexError, match="index 3 is out of range for a data set of 3 samples"):
        dataset[3]
    with pytest.raises(TypeError, match="indices must be integers, but got float"):
        dataset[1.0]


# DataLoader batching

@pytest.mark.parametrize("n, batch_size, drop_last, sizes", [
    (10, 3, False, [3, 3, 3, 1]),
    (10, 3, True, [3, 3, 3]),
    (9, 3, False, [3, 3, 3]),
    (2, 5, False, [2]),
    (2, 5, True, []),
    (0, 4, False, []),
    (7, 1, False, [1] * 7),
])
def test_batch_sizes_and_len(n, batch_size, drop_last, sizes):
    loader = DataLoader(_dataset(n), batch_size=batch_size, drop_last=drop_last)
    batches = _epoch(loader)
    assert [len(y) for _, y in batches] == sizes
    assert len(loader) == len(sizes)


def test_sequential_order_dtypes_and_copies():
    dataset = _dataset(10, np.float64)
    batches = _epoch(DataLoader(dataset, batch_size=4))
    np.testing.assert_array_equal(np.concatenate([x for x, _ in batches]), dataset.images)
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), dataset.labels)
    assert batches[0][0].dtype == np.float64 and batches[0][1].dtype == np.int64
    for x, _ in DataLoader(dataset, batch_size=4):
        x[...] = -1  # a batch is a copy: writing to it must not touch the dataset
    assert dataset.images.min() == 0


def test_shuffle_is_a_permutation_and_changes_every_epoch():
    dataset = _dataset(10)
    loader = DataLoader(dataset, batch_size=3, shuffle=True, seed=5)
    first, second = _epoch(loader), _epoch(loader)
    for epoch in (first, second):
        labels_seen = np.concatenate([x[:, 0, 0, 0] for x, _ in epoch]) // 18
        assert sorted(labels_seen.astype(int).tolist()) == list(range(10))
        for x, y in epoch:  # each image still travels with its own label
            np.testing.assert_array_equal(y, (x[:, 0, 0, 0] // 18).astype(np.int64) % 4)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, second))


def test_same_seed_same_order_different_seed_different_order():
    dataset = _dataset(12)
    a = _epoch(DataLoader(dataset, batch_size=4, shuffle=True, seed=1))
    b = _epoch(DataLoader(dataset, batch_size=4, shuffle=True, seed=1))
    c = _epoch(DataLoader(dataset, batch_size=4, shuffle=True, seed=2))
    _assert_same(a, b)
    assert not all(np.array_equal(p[0], q[0]) for p, q in zip(a, c))


def test_manual_seed_governs_loaders_without_seed():
    dataset = _dataset(12)
    cn.manual_seed(3)
    a = _epoch(DataLoader(dataset, batch_size=4, shuffle=True))
    cn.manual_seed(3)
    b = _epoch(DataLoader(dataset, batch_size=4, shuffle=True))
    cn.manual_seed(4)
    c = _epoch(DataLoader(dataset, batch_size=4, shuffle=True))
    _assert_same(a, b)
    assert not all(np.array_equal(p[0], q[0]) for p, q in zip(a, c))


def test_generic_dataset_matches_array_fast_path():
    dataset = _dataset(11)
    fast = _epoch(DataLoader(dataset, batch_size=4, shuffle=True, seed=9))
    slow = _epoch(DataLoader(_ListDataset(dataset), batch_size=4, shuffle=True, seed=9))
    for (xf, yf), (xs, ys) in zip(fast, slow):
        np.testing.assert_array_equal(xf, xs)
        np.testing.assert_array_equal(yf, ys)
        assert ys.dtype == np.int64


def test_array_dataset_batches_never_go_item_by_item(monkeypatch):
    dataset = _dataset(9)

    def item_by_item(self, index):
        raise AssertionError("the ArrayDataset fast path must gather a batch with one fancy index")

    monkeypatch.setattr(ArrayDataset, "__getitem__", item_by_item)
    batches = _epoch(DataLoader(dataset, batch_size=4, shuffle=True, seed=0))
    assert sum(len(y) for _, y in batches) == 9


def test_transform_receives_a_generator_and_plain_callables_work():
    dataset = _dataset(8)
    flipped = _epoch(DataLoader(dataset, batch_size=4, transform=RandomHorizontalFlip(p=1.0)))
    np.testing.assert_array_equal(flipped[0][0], dataset.images[:4, :, :, ::-1])
    doubled = _epoch(DataLoader(dataset, batch_size=4, transform=lambda x: 2 * x))
    np.testing.assert_array_equal(doubled[1][0], 2 * dataset.images[4:])


@pytest.mark.parametrize("kwargs, error, message", [
    ({"batch_size": 0}, ValueError, "batch_size should be a positive integer value, but got batch_size=0"),
    ({"batch_size": 2.0}, ValueError, "batch_size should be a positive integer value, but got batch_size=2.0"),
    ({"batch_size": True}, ValueError, "batch_size should be a positive integer value"),
    ({"shuffle": 1}, TypeError, "shuffle should be a boolean value, but got shuffle=1"),
    ({"drop_last": "yes"}, TypeError, "drop_last should be a boolean value"),
    ({"seed": -1}, ValueError, "seed should be a non-negative integer, but got seed=-1"),
    ({"seed": 1.5}, TypeError, "seed should be None or an integer"),
    ({"transform": 3}, TypeError, "transform should be callable, but got int"),
])
def test_loader_validation(kwargs, error, message):
    with pytest.raises(error, match=message):
        DataLoader(_dataset(4), **kwargs)


def test_loader_refuses_non_datasets():
    with pytest.raises(TypeError, match="dataset with __len__ and __getitem__, but got int"):
        DataLoader(5)


# resume

def _augmented_loader(seed=11):
    return DataLoader(_dataset(10), batch_size=3, shuffle=True, seed=seed, transform=RandomHorizontalFlip())


@pytest.mark.parametrize("taken", [0, 1, 2, 3, 4])
def test_resume_mid_epoch_gives_the_same_batches(taken):
    reference = _augmented_loader()
    expected = _epoch(reference) + _epoch(reference) + _epoch(reference)

    interrupted = _augmented_loader()
    iterator = iter(interrupted)
    seen = [tuple(a.copy() for a in next(iterator)) for _ in range(taken)]
    state = interrupted.state_dict()
    assert state["batches_yielded"] == taken % 4  # after the last batch the state points at the next epoch

    resumed = _augmented_loader(seed=999)  # a different seed: everything must come from the state
    resumed.load_state_dict(state)
    batches = seen + _epoch(resumed) + _epoch(resumed)
    _assert_same(batches, expected[:len(batches)])
    assert len(batches) == (8 if taken < 4 else 12)


def test_state_between_epochs_resumes_the_next_epoch():
    reference = _augmented_loader()
    _epoch(reference)
    state = reference.state_dict()
    assert state["batches_yielded"] == 0
    second = _epoch(reference)
    resumed = _augmented_loader(seed=0)
    resumed.load_state_dict(state)
    _assert_same(_epoch(resumed), second)


def test_state_survives_a_checkpoint_round_trip(tmp_path):
    loader = _augmented_loader()
    iterator = iter(loader)
    next(iterator)
    cn.save({"loader": loader.state_dict()}, tmp_path / "state.ckpt")
    rest = [(x.copy(), y.copy()) for x, y in iterator]
    resumed = _augmented_loader(seed=3)
    resumed.load_state_dict(cn.load(tmp_path / "state.ckpt")["loader"])
    _assert_same(_epoch(resumed), rest)


@pytest.mark.parametrize("state, message", [
    ({"generator_state": {}}, "expected keys"),
    ({"generator_state": {"bit_generator": "MT19937"}, "batches_yielded": 0}, "expected a PCG64 generator state"),
    ({"generator_state": {"bit_generator": "PCG64", "state": "x"}, "batches_yielded": 0}, "invalid generator state"),
])
def test_load_state_dict_validation(state, message):
    with pytest.raises(ValueError, match=message):
        _augmented_loader().load_state_dict(state)


def test_load_state_dict_refuses_positions_past_the_end():
    state = _augmented_loader().state_dict()
    state["batches_yielded"] = 5
    with pytest.raises(ValueError, match="batches_yielded=5, but this loader has 4 batches"):
        _augmented_loader().load_state_dict(state)
