"""Merging branches: channel concatenation `cat(tensors, dim=1)` with its gradient (add is Tensor `+`)."""
import numbers

import numpy as np

from .._config import FLOAT_DTYPES
from ..autograd import Function
from ..autograd.tensor import Tensor


class Cat(Function):
    """Concatenation of its positional inputs along `dim`; backward hands each input its slice of the gradient."""

    def forward(self, *arrays, dim=1):
        self.dim = dim
        self.bounds = np.cumsum([0] + [a.shape[dim] for a in arrays]).tolist()
        return np.concatenate(arrays, axis=dim)

    def backward(self, grad):
        index = [slice(None)] * grad.ndim
        grads = []
        for position, need in enumerate(self.needs_input_grad):
            if not need:
                grads.append(None)
                continue
            index[self.dim] = slice(self.bounds[position], self.bounds[position + 1])
            grads.append(np.ascontiguousarray(grad[tuple(index)]))
        return tuple(grads)


def cat(tensors, dim=1):
    """torch.cat: join tensors of equal shape except along `dim` (default 1, the channels of NCHW)."""
    if isinstance(tensors, Tensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError("cat(): argument 'tensors' must be a tuple or list of Tensors, but got "
                        f"{type(tensors).__name__}")
    if len(tensors) == 0:
        raise ValueError("cat(): expected a non-empty list of Tensors")
    for position, tensor in enumerate(tensors):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"cat(): expected Tensor as element {position} in argument 0, but got "
                            f"{type(tensor).__name__}")
        if tensor.dtype not in FLOAT_DTYPES:
            raise TypeError(f"cat(): expected float32 or float64 tensors, but got {tensor.dtype} at element {position}")
    first = tensors[0]
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"cat(): argument 'dim' must be int, not {type(dim).__name__}")
    if first.ndim == 0:
        raise ValueError("zero-dimensional tensor (at position 0) cannot be concatenated")
    if not -first.ndim <= dim < first.ndim:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-first.ndim}, {first.ndim - 1}], "
                         f"but got {dim})")
    dim = int(dim) % first.ndim
    for position, tensor in enumerate(tensors[1:], start=1):
        if tensor.dtype != first.dtype:
            raise TypeError(f"cat(): expected all tensors to have dtype {first.dtype}, but got {tensor.dtype} at "
                            f"position {position}")
        if tensor.ndim != first.ndim:
            raise ValueError(f"Tensors must have same number of dimensions: got {first.ndim} and {tensor.ndim}")
        for axis in range(first.ndim):
            if axis != dim and tensor.shape[axis] != first.shape[axis]:
                raise ValueError(f"Sizes of tensors must match except in dimension {dim}. Expected size "
                                 f"{first.shape[axis]} but got size {tensor.shape[axis]} for tensor number {position} "
                                 "in the list.")
    return Cat.apply(*tensors, dim=dim)
