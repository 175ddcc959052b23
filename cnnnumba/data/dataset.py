"""ArrayDataset: images and labels held as two arrays that share their first dimension."""
import numpy as np


class ArrayDataset:
    """A data set held in memory as `images` (N, ...) floats and `labels` (N,) integers or float targets.

    `dataset[i]` returns `(images[i], labels[i])`; integer labels are stored as int64.
    The arrays are kept as given (no copy) so a large data set is not duplicated.
    """

    def __init__(self, images, labels):
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.dtype.kind != "f":
            raise TypeError(
                f"ArrayDataset expected images to be a float array, but got dtype {images.dtype}; "
                "convert and scale them first, e.g. images.astype(np.float32) / 255"
            )
        if labels.dtype.kind in "iu":
            labels = labels.astype(np.int64, copy=False)
        elif labels.dtype.kind != "f":
            raise TypeError(
                f"ArrayDataset expected integer class labels (or float targets), but got dtype {labels.dtype}"
            )
        if images.ndim == 0 or labels.ndim == 0:
            raise ValueError(
                "ArrayDataset expected images and labels with a leading sample dimension, but got "
                f"images of shape {images.shape} and labels of shape {labels.shape}"
            )
        if images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"ArrayDataset expected as many labels as images, but got {images.shape[0]} images "
                f"(shape {images.shape}) and {labels.shape[0]} labels (shape {labels.shape})"
            )
        self.images = images
        self.labels = labels

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, index):
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"ArrayDataset indices must be integers, but got {type(index).__name__}")
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} is out of range for a data set of {n} samples")
        return self.images[index], self.labels[index]

    def __repr__(self):
        return (f"ArrayDataset({len(self)} samples, images {self.images.shape[1:]} {self.images.dtype}, "
                f"labels {self.labels.dtype})")
