"""DataLoader: batches of NumPy arrays, reshuffled each epoch from its own generator, resumable mid-epoch."""
import inspect
import math

import numpy as np

from .. import _config
from .dataset import ArrayDataset

_STATE_KEYS = {"generator_state", "batches_yielded"}


def _takes_generator(transform):
    """Whether `transform` accepts a `generator=` keyword (the cnnnumba transforms all do)."""
    try:
        parameters = inspect.signature(transform).parameters
    except (TypeError, ValueError):  # builtins without a signature are called with the batch alone
        return False
    return "generator" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


class DataLoader:
    """Iterate over `dataset` in batches `(x, y)`: x a float array (N, ...), y an int64 array (N,).

    With `shuffle=True` each epoch visits the samples in a new order drawn from the loader's own generator,
    seeded by `seed`, or by a draw from the global generator (so `cn.manual_seed` governs it) when `seed` is
    None. `transform(x, generator=...)` is applied to each batch of images; its generator is derived from the
    epoch and the batch index, so a run resumed from `state_dict()` sees exactly the same batches, even when
    the state was taken in the middle of an epoch.

    A `sampler` (an iterable of dataset indices with a length, such as `DistributedSampler`) decides the samples
    and their order instead of `shuffle`; its order is read at the start of each epoch.
    """

    def __init__(self, dataset, batch_size=1, shuffle=False, drop_last=False, seed=None, transform=None,
                 sampler=None):
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise TypeError(
                f"DataLoader expected a dataset with __len__ and __getitem__, but got {type(dataset).__name__}"
            )
        if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size <= 0:
            raise ValueError(f"batch_size should be a positive integer value, but got batch_size={batch_size!r}")
        if not isinstance(shuffle, (bool, np.bool_)):
            raise TypeError(f"shuffle should be a boolean value, but got shuffle={shuffle!r}")
        if not isinstance(drop_last, (bool, np.bool_)):
            raise TypeError(f"drop_last should be a boolean value, but got drop_last={drop_last!r}")
        if seed is not None:
            if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
                raise TypeError(f"seed should be None or an integer, but got seed={seed!r}")
            if seed < 0:
                raise ValueError(f"seed should be a non-negative integer, but got seed={seed}")
        if sampler is not None:
            if shuffle:
                raise ValueError("sampler option is mutually exclusive with shuffle")
            if not (hasattr(sampler, "__iter__") and hasattr(sampler, "__len__")):
                raise TypeError(f"sampler should be an iterable of indices with a length, but got "
                                f"{type(sampler).__name__}")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform should be callable, but got {type(transform).__name__}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = seed
        self.transform = transform
        self.sampler = sampler
        self._transform_takes_generator = transform is not None and _takes_generator(transform)
        if seed is None:
            seed = int(_config.generator().integers(2**63))
        self._generator = np.random.default_rng(int(seed))
        self._epoch_start_state = None  # generator state when the epoch in progress began; None between epochs
        self._batches_yielded = 0
        self._active_epoch = None
        self._resume = None

    def _sample_count(self):
        return len(self.dataset) if self.sampler is None else len(self.sampler)

    def __len__(self):
        if self.drop_last:
            return self._sample_count() // self.batch_size
        return math.ceil(self._sample_count() / self.batch_size)

    def state_dict(self):
        """Where the loader stands: the generator state at the start of the current epoch and the batches
        already yielded from it (or, between epochs, the state the next epoch starts from and 0)."""
        if self._resume is not None:
            start_state, yielded = self._resume
        elif self._epoch_start_state is not None:
            start_state, yielded = self._epoch_start_state, self._batches_yielded
        else:
            start_state, yielded = self._generator.bit_generator.state, 0
        return {"generator_state": start_state, "batches_yielded": yielded}

    def load_state_dict(self, state_dict):
        """Resume from `state_dict()`: the next iteration yields the batches that were still to come."""
        if not isinstance(state_dict, dict) or set(state_dict) != _STATE_KEYS:
            got = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"DataLoader state_dict expected keys {sorted(_STATE_KEYS)}, but got {got}")
        yielded = state_dict["batches_yielded"]
        if isinstance(yielded, (bool, np.bool_)) or not isinstance(yielded, (int, np.integer)) \
                or not 0 <= yielded <= len(self):
            raise ValueError(
                f"DataLoader state_dict has batches_yielded={yielded!r}, but this loader has {len(self)} batches"
            )
        state = state_dict["generator_state"]
        expected_kind = type(self._generator.bit_generator).__name__
        if not isinstance(state, dict) or state.get("bit_generator") != expected_kind:
            raise ValueError(f"DataLoader state_dict expected a {expected_kind} generator state, but got {state!r}")
        probe = np.random.Generator(type(self._generator.bit_generator)())
        try:
            probe.bit_generator.state = state
        except (TypeError, ValueError, KeyError) as error:
            raise ValueError(f"DataLoader state_dict holds an invalid generator state: {error}") from None
        self._generator.bit_generator.state = probe.bit_generator.state
        self._epoch_start_state = None
        self._active_epoch = None
        self._resume = (probe.bit_generator.state, int(yielded)) if yielded else None

    def __iter__(self):
        return self._epoch()

    def _epoch(self):
        if self._resume is not None:
            start_state, skip = self._resume
            self._resume = None
        else:
            start_state, skip = self._generator.bit_generator.state, 0
        self._generator.bit_generator.state = start_state
        if self.sampler is not None:
            order = np.fromiter(iter(self.sampler), dtype=np.int64)
            if order.size != len(self.sampler):
                raise ValueError(f"the sampler yielded {order.size} indices, but its length is {len(self.sampler)}")
            n = order.size
        else:
            n = len(self.dataset)
            order = self._generator.permutation(n) if self.shuffle else None
        epoch_key = int(self._generator.integers(2**63)) if self.transform is not None else None
        n_batches = len(self)
        token = object()
        self._active_epoch = token
        self._epoch_start_state = start_state if skip < n_batches else None
        self._batches_yielded = skip
        for b in range(skip, n_batches):
            start, stop = b * self.batch_size, min((b + 1) * self.batch_size, n)
            indices = order[start:stop] if order is not None else np.arange(start, stop)
            x, y = self._gather(indices)
            if self.transform is not None:
                if self._transform_takes_generator:
                    x = self.transform(x, generator=np.random.default_rng([epoch_key, b]))
                else:
                    x = self.transform(x)
            if self._active_epoch is token:
                self._batches_yielded = b + 1
                if b + 1 == n_batches:
                    # every draw of this epoch is made: the generator already holds the next epoch's start
                    self._epoch_start_state = None
                    self._batches_yielded = 0
                    self._active_epoch = None
            yield x, y

    def _gather(self, indices):
        dataset = self.dataset
        if isinstance(dataset, ArrayDataset):
            return np.take(dataset.images, indices, axis=0), np.take(dataset.labels, indices, axis=0)
        items = [dataset[int(i)] for i in indices]
        x = np.stack([np.asarray(image) for image, _ in items])
        y = np.asarray([label for _, label in items])
        if x.dtype.kind != "f":
            raise TypeError(f"DataLoader expected the dataset to return float images, but got dtype {x.dtype}")
        if y.dtype.kind in "iu":
            y = y.astype(np.int64)
        elif y.dtype.kind != "f":
            raise TypeError(f"DataLoader expected integer labels (or float targets), but got dtype {y.dtype}")
        return x, y

    def __repr__(self):
        return (f"DataLoader({len(self.dataset)} samples, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last}, seed={self.seed})")
