"""Batch augmentations on NCHW float arrays, vectorized over the batch and seeded through a generator argument."""
import numbers

import numpy as np

from .. import _config


def _check_batch(name, batch):
    if not isinstance(batch, np.ndarray):
        raise TypeError(f"{name} expected a NumPy array, but got {type(batch).__name__}")
    if batch.ndim != 4:
        raise ValueError(f"{name} expected a 4-D NCHW batch, but got an array of shape {batch.shape}")
    if batch.dtype.kind != "f":
        raise TypeError(f"{name} expected a float batch, but got dtype {batch.dtype}")


def _generator(generator):
    return _config.generator() if generator is None else generator


def _pair(name, value):
    """An int or a pair of ints as (height, width)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value):
        return int(value[0]), int(value[1])
    raise TypeError(f"{name} should be an int or a pair of ints, but got {value!r}")


class Transform:
    """Base class: `transform(batch, generator=None)` returns a new batch; None draws from the global generator."""

    def __call__(self, batch, generator=None):
        raise NotImplementedError


class Compose(Transform):
    """Apply `transforms` in order, all drawing from the same generator."""

    def __init__(self, transforms):
        transforms = list(transforms)
        for position, transform in enumerate(transforms):
            if not callable(transform):
                raise TypeError(f"Compose expected callables, but transform {position} is "
                                f"{type(transform).__name__}")
        self.transforms = transforms

    def __call__(self, batch, generator=None):
        generator = _generator(generator)
        for transform in self.transforms:
            batch = transform(batch, generator=generator)
        return batch

    def __repr__(self):
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"


class Normalize(Transform):
    """(batch - mean[c]) / std[c] per channel; mean and std are a number or one value per channel."""

    def __init__(self, mean, std):
        mean = np.atleast_1d(np.asarray(mean, dtype=np.float64))
        std = np.atleast_1d(np.asarray(std, dtype=np.float64))
        for name, values in (("mean", mean), ("std", std)):
            if values.ndim != 1 or values.size == 0:
                raise ValueError(f"Normalize expected {name} to be a number or a 1-D sequence, "
                                 f"but got shape {values.shape}")
            if not np.all(np.isfinite(values)):
                raise ValueError(f"Normalize expected finite {name}, but got {values.tolist()}")
        if mean.size != std.size and 1 not in (mean.size, std.size):
            raise ValueError(f"Normalize expected mean and std of the same length, but got {mean.size} and {std.size}")
        if np.any(std == 0):
            raise ValueError(f"std evaluated to zero, leading to division by zero (std={std.tolist()})")
        self.mean = mean
        self.std = std

    def __call__(self, batch, generator=None):
        _check_batch("Normalize", batch)
        channels = max(self.mean.size, self.std.size)
        if channels != 1 and batch.shape[1] != channels:
            raise ValueError(f"Normalize expected input to have {channels} channels, "
                             f"but got {batch.shape[1]} channels instead (input of shape {batch.shape})")
        mean = self.mean.astype(batch.dtype).reshape(1, -1, 1, 1)
        std = self.std.astype(batch.dtype).reshape(1, -1, 1, 1)
        return (batch - mean) / std

    def __repr__(self):
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


class RandomCrop(Transform):
    """Pad each image by `padding` (filled with `fill`) then cut a `size` window at a random place per image.

    `padding` follows torchvision: an int pads all sides, (lr, tb) pads left/right and top/bottom,
    (left, top, right, bottom) pads each side.
    """

    def __init__(self, size, padding=None, fill=0.0):
        self.size = _pair("RandomCrop size", size)
        if min(self.size) <= 0:
            raise ValueError(f"RandomCrop size should be positive, but got {size!r}")
        if padding is None:
            padding = (0, 0, 0, 0)
        elif isinstance(padding, numbers.Integral) and not isinstance(padding, bool):
            padding = (int(padding),) * 4
        elif isinstance(padding, (tuple, list)) and len(padding) in (2, 4) and all(
                isinstance(p, numbers.Integral) and not isinstance(p, bool) for p in padding):
            padding = tuple(int(p) for p in padding)
            if len(padding) == 2:
                padding = (padding[0], padding[1], padding[0], padding[1])
        else:
            raise TypeError(f"RandomCrop padding should be an int or a sequence of 2 or 4 ints, but got {padding!r}")
        if min(padding) < 0:
            raise ValueError(f"RandomCrop padding should be non-negative, but got {padding!r}")
        if not isinstance(fill, numbers.Real) or isinstance(fill, bool):
            raise TypeError(f"RandomCrop fill should be a number, but got {fill!r}")
        self.padding = padding  # (left, top, right, bottom)
        self.fill = float(fill)

    def __call__(self, batch, generator=None):
        _check_batch("RandomCrop", batch)
        left, top, right, bottom = self.padding
        if any(self.padding):
            n, channels, height, width = batch.shape
            padded = np.full((n, channels, top + height + bottom, left + width + right), self.fill, batch.dtype)
            padded[:, :, top:top + height, left:left + width] = batch  # twice as fast as np.pad here
            batch = padded
        n, _, height, width = batch.shape
        crop_h, crop_w = self.size
        if crop_h > height or crop_w > width:
            raise ValueError(f"Required crop size {(crop_h, crop_w)} is larger than the padded input image size "
                             f"{(height, width)}")
        generator = _generator(generator)
        rows = generator.integers(0, height - crop_h + 1, size=n)
        cols = generator.integers(0, width - crop_w + 1, size=n)
        windows = np.lib.stride_tricks.sliding_window_view(batch, (crop_h, crop_w), axis=(2, 3))
        # advanced indices on axes 0, 2, 3 around a slice: numpy puts the batch axis first -> (N, C, crop_h, crop_w)
        return np.ascontiguousarray(windows[np.arange(n), :, rows, cols])

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding}, fill={self.fill})"


class RandomHorizontalFlip(Transform):
    """Mirror each image left-right with probability p."""

    def __init__(self, p=0.5):
        if not isinstance(p, numbers.Real) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip probability should be between 0 and 1, but got {p!r}")
        self.p = float(p)

    def __call__(self, batch, generator=None):
        _check_batch("RandomHorizontalFlip", batch)
        flip = _generator(generator).random(batch.shape[0]) < self.p
        out = batch.copy()
        out[flip] = batch[flip, :, :, ::-1]
        return out

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"
