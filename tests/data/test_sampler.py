"""DistributedSampler (PyTorch's padding and sharding rules) and DataLoader(sampler=...)."""
import numpy as np
import pytest

from cnnnumba.data import ArrayDataset, DataLoader, DistributedSampler


def _dataset(n):
    return ArrayDataset(np.arange(n, dtype=np.float32).reshape(n, 1), np.arange(n))


@pytest.mark.parametrize("n, replicas", [(10, 3), (9, 3), (2, 4), (7, 1)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_shards_cover_the_dataset_with_equal_lengths(n, replicas, drop_last):
    samplers = [DistributedSampler(_dataset(n), replicas, rank, shuffle=True, seed=3, drop_last=drop_last)
                for rank in range(replicas)]
    shards = [list(s) for s in samplers]
    assert len({len(s) for s in samplers}) == 1 and all(len(shard) == len(samplers[0]) for shard in shards)
    seen = [i for shard in shards for i in shard]
    if drop_last:
        assert len(seen) == len(set(seen)) == n // replicas * replicas
    else:
        assert set(seen) == set(range(n)) and len(seen) == -(-n // replicas) * replicas


@pytest.mark.parametrize("n, replicas, drop_last", [(10, 3, False), (10, 3, True), (2, 5, False), (12, 4, False)])
def test_the_unshuffled_shards_are_pytorchs(n, replicas, drop_last):
    torch_data = pytest.importorskip("torch.utils.data")
    for rank in range(replicas):
        ours = list(DistributedSampler(_dataset(n), replicas, rank, shuffle=False, drop_last=drop_last))
        theirs = list(torch_data.DistributedSampler(range(n), replicas, rank, shuffle=False, drop_last=drop_last))
        assert ours == theirs


def test_set_epoch_draws_a_new_order_shared_by_all_ranks():
    dataset = _dataset(20)
    first = [list(DistributedSampler(dataset, 2, rank, seed=1)) for rank in range(2)]
    again = [list(DistributedSampler(dataset, 2, rank, seed=1)) for rank in range(2)]
    assert first == again
    assert sorted(first[0] + first[1]) == list(range(20))
    sampler = DistributedSampler(dataset, 2, 0, seed=1)
    sampler.set_epoch(1)
    assert list(sampler) != first[0]


def test_the_loader_yields_the_samplers_indices_in_its_order():
    dataset = _dataset(11)
    sampler = DistributedSampler(dataset, 2, 1, shuffle=True, seed=5)
    loader = DataLoader(dataset, batch_size=4, sampler=sampler)
    assert len(loader) == 2
    labels = np.concatenate([y for _, y in loader])
    assert labels.tolist() == list(sampler)
    assert list(DataLoader(dataset, batch_size=4, sampler=range(3, 11, 4)))[0][1].tolist() == [3, 7]


@pytest.mark.parametrize("kwargs, error, words", [
    ({"num_replicas": 2, "rank": 2}, ValueError, "Invalid rank 2, rank should be in the interval [0, 1]"),
    ({"num_replicas": 0, "rank": 0}, ValueError, "num_replicas should be an integer of at least 1"),
    ({"num_replicas": 2, "rank": 0, "seed": -1}, ValueError, "seed should be an integer of at least 0"),
    ({"num_replicas": 2, "rank": 0, "shuffle": "yes"}, TypeError, "shuffle should be a boolean"),
    ({}, RuntimeError, "init_process_group"),
])
def test_bad_sampler_arguments(kwargs, error, words):
    with pytest.raises(error, match=__import__("re").escape(words)):
        DistributedSampler(_dataset(4), **kwargs)


def test_a_sampler_and_shuffle_together_are_refused():
    with pytest.raises(ValueError, match="sampler option is mutually exclusive with shuffle"):
        DataLoader(_dataset(4), sampler=range(4), shuffle=True)
    with pytest.raises(TypeError, match="sampler should be an iterable of indices with a length"):
        DataLoader(_dataset(4), sampler=iter(range(4)))
