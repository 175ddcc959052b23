"""`DistributedSampler`: each rank's share of a dataset's indices for one epoch, with PyTorch's rules."""
import math

import numpy as np

from .. import distributed as dist


def _check_int(name, value, minimum):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} should be an integer of at least {minimum}, but got {name}={value!r}")
    return int(value)


class DistributedSampler:
    """The indices of `dataset` that rank `rank` of `num_replicas` visits in an epoch (PyTorch's semantics).

    Every rank gets `len(self)` samples: without `drop_last` the list of indices is padded by repeating its
    beginning until it divides evenly; with it the tail is dropped. With `shuffle` the order is a permutation
    drawn from `seed + epoch`, the same on every rank, so call `set_epoch(epoch)` at the start of each epoch for a
    new order. `num_replicas` and `rank` default to the process group's world size and rank.
    """

    def __init__(self, dataset, num_replicas=None, rank=None, shuffle=True, seed=0, drop_last=False):
        if not hasattr(dataset, "__len__"):
            raise TypeError(f"DistributedSampler expected a dataset with __len__, but got {type(dataset).__name__}")
        if num_replicas is None or rank is None:
            if not dist.is_initialized():
                raise RuntimeError("DistributedSampler needs num_replicas and rank, or an initialized process group "
                                   "(cnnnumba.distributed.init_process_group())")
        num_replicas = dist.get_world_size() if num_replicas is None else _check_int("num_replicas", num_replicas, 1)
        rank = dist.get_rank() if rank is None else rank
        if isinstance(rank, (bool, np.bool_)) or not isinstance(rank, (int, np.integer)) \
                or not 0 <= rank < num_replicas:
            raise ValueError(f"Invalid rank {rank}, rank should be in the interval [0, {num_replicas - 1}]")
        if not isinstance(shuffle, (bool, np.bool_)):
            raise TypeError(f"shuffle should be a boolean value, but got shuffle={shuffle!r}")
        if not isinstance(drop_last, (bool, np.bool_)):
            raise TypeError(f"drop_last should be a boolean value, but got drop_last={drop_last!r}")
        self.dataset = dataset
        self.num_replicas, self.rank = num_replicas, int(rank)
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.seed = _check_int("seed", seed, 0)
        self.epoch = 0
        n = len(dataset)
        if self.drop_last and n % num_replicas != 0:
            self.num_samples = math.ceil((n - num_replicas) / num_replicas)
        else:
            self.num_samples = math.ceil(n / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch):
        """The epoch whose order the next iteration yields (with `shuffle`, a permutation seeded by seed + epoch)."""
        self.epoch = _check_int("epoch", epoch, 0)

    def __iter__(self):
        n = len(self.dataset)
        if self.shuffle:
            indices = np.random.default_rng(self.seed + self.epoch).permutation(n)
        else:
            indices = np.arange(n)
        if self.drop_last:
            indices = indices[:self.total_size]
        elif self.total_size > n:
            indices = np.resize(indices, self.total_size)  # repeats the list from its start: PyTorch's padding
        return iter(indices[self.rank:self.total_size:self.num_replicas].tolist())

    def __len__(self):
        return self.num_samples

    def __repr__(self):
        return (f"DistributedSampler({len(self.dataset)} samples, rank {self.rank} of {self.num_replicas}, "
                f"shuffle={self.shuffle}, seed={self.seed}, drop_last={self.drop_last})")
