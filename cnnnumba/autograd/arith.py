"""Tensor arithmetic with broadcasting (+ - * / @, powers, reshapes, reductions, indexing) and its gradients."""
import builtins

import numpy as np

from .function import Function
from .tensor import Tensor


def _as_operands(a, b):
    """Wrap plain numbers and arrays as constants of the tensor operand's dtype, like PyTorch's scalar promotion."""
    reference = a if isinstance(a, Tensor) else b
    if not isinstance(a, Tensor):
        a = Tensor._wrap(np.asarray(a, dtype=reference.dtype))
    if not isinstance(b, Tensor):
        b = Tensor._wrap(np.asarray(b, dtype=reference.dtype))
    if a.dtype != b.dtype and a.data.ndim and b.data.ndim:
        raise TypeError(f"operands have different dtypes: {a.dtype} and {b.dtype}; convert one with .float() or .double()")
    return a, b


def unbroadcast(grad, shape):
    """Sum `grad` over the axes that broadcasting added or stretched, back to `shape`."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad.reshape(shape)


class Add(Function):
    def forward(self, a, b):
        self.shapes = (a.shape, b.shape)
        return a + b

    def backward(self, grad):
        return tuple(unbroadcast(grad, s) if need else None for s, need in zip(self.shapes, self.needs_input_grad))


class Sub(Function):
    def forward(self, a, b):
        self.shapes = (a.shape, b.shape)
        return a - b

    def backward(self, grad):
        need_a, need_b = self.needs_input_grad
        return (unbroadcast(grad, self.shapes[0]) if need_a else None,
                unbroadcast(-grad, self.shapes[1]) if need_b else None)


class Mul(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, grad):
        need_a, need_b = self.needs_input_grad
        return (unbroadcast(grad * self.b, self.a.shape) if need_a else None,
                unbroadcast(grad * self.a, self.b.shape) if need_b else None)


class Div(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, grad):
        need_a, need_b = self.needs_input_grad
        return (unbroadcast(grad / self.b, self.a.shape) if need_a else None,
                unbroadcast(-grad * self.a / (self.b * self.b), self.b.shape) if need_b else None)


class Neg(Function):
    def forward(self, a):
        return -a

    def backward(self, grad):
        return (-grad,)


class Power(Function):
    def forward(self, a, exponent):
        self.a, self.exponent = a, exponent
        return a ** exponent

    def backward(self, grad):
        return (grad * self.exponent * self.a ** (self.exponent - 1), None)


class Exp(Function):
    def forward(self, a):
        self.out = np.exp(a)
        return self.out

    def backward(self, grad):
        return (grad * self.out,)


class Log(Function):
    def forward(self, a):
        self.a = a
        return np.log(a)

    def backward(self, grad):
        return (grad / self.a,)


class Cast(Function):
    def forward(self, a, dtype):
        self.source = a.dtype
        return a.astype(dtype)

    def backward(self, grad):
        return (grad.astype(self.source), None)


class MatMul(Function):
    """np.matmul semantics: 1-D operands are promoted and the batch dimensions broadcast."""

    def forward(self, a, b):
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError("matmul: both arguments need at least 1 dimension, but got a scalar")
        if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
            raise ValueError(
                f"matmul: shapes {a.shape} and {b.shape} cannot be multiplied "
                f"({a.shape[-1]} != {b.shape[-2 if b.ndim > 1 else 0]})"
            )
        self.a, self.b = a, b
        return np.matmul(a, b)

    def backward(self, grad):
        a, b = self.a, self.b
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        # restore the dropped vector axes, b's (last) first: a 1-D @ 1-D gradient is 0-D
        if b.ndim == 1:
            grad = np.expand_dims(grad, -1)
        if a.ndim == 1:
            grad = np.expand_dims(grad, -2)
        need_a, need_b = self.needs_input_grad
        grad_a = unbroadcast(np.matmul(grad, np.swapaxes(b2, -1, -2)), a2.shape).reshape(a.shape) if need_a else None
        grad_b = unbroadcast(np.matmul(np.swapaxes(a2, -1, -2), grad), b2.shape).reshape(b.shape) if need_b else None
        return grad_a, grad_b


class Reshape(Function):
    def forward(self, a, shape):
        self.shape = a.shape
        try:
            return a.reshape(shape)
        except ValueError:
            raise ValueError(f"shape {tuple(shape)} is invalid for input of size {a.size} (shape {a.shape})") from None

    def backward(self, grad):
        return (grad.reshape(self.shape), None)


class Permute(Function):
    def forward(self, a, dims):
        if sorted(dims) != list(range(a.ndim)):
            raise ValueError(f"permute: dims {dims} are not a permutation of the {a.ndim} dimensions")
        self.inverse = tuple(np.argsort(dims))
        return a.transpose(dims)

    def backward(self, grad):
        return (grad.transpose(self.inverse), None)


class Sum(Function):
    def forward(self, a, axis, keepdim):
        self.shape, self.axis, self.keepdim = a.shape, axis, keepdim
        return np.asarray(a.sum(axis=axis, keepdims=keepdim))

    def backward(self, grad):
        if self.axis is not None and not self.keepdim:
            grad = np.expand_dims(grad, self.axis)
        return (np.broadcast_to(grad, self.shape).copy(), None, None)


class Index(Function):
    def forward(self, a, key):
        self.shape, self.dtype, self.key = a.shape, a.dtype, key
        return np.array(a[key], copy=True)

    def backward(self, grad):
        full = np.zeros(self.shape, dtype=self.dtype)
        np.add.at(full, self.key, grad)
        return (full, None)


def _normalize_dims(dim, ndim):
    if dim is None:
        return None
    dims = (dim,) if isinstance(dim, (int, np.integer)) else tuple(dim)
    result = []
    for d in dims:
        if not -ndim <= d < builtins.max(ndim, 1):
            raise IndexError(f"Dimension out of range (expected to be in range of [{-ndim}, {ndim - 1}], but got {d})")
        result.append(d % builtins.max(ndim, 1))
    return tuple(result)


def add(a, b):
    return Add.apply(*_as_operands(a, b))


def sub(a, b):
    return Sub.apply(*_as_operands(a, b))


def mul(a, b):
    return Mul.apply(*_as_operands(a, b))


def div(a, b):
    return Div.apply(*_as_operands(a, b))


def neg(a):
    return Neg.apply(a)


def power(a, exponent):
    if isinstance(exponent, Tensor) or not np.isscalar(exponent):
        raise TypeError("power: only a Python number is supported as the exponent")
    return Power.apply(a, exponent)


def exp(a):
    return Exp.apply(a)


def log(a):
    return Log.apply(a)


def cast(a, dtype):
    if a.dtype == dtype:
        return a
    return Cast.apply(a, dtype)


def matmul(a, b):
    a, b = _as_operands(a, b)
    return MatMul.apply(a, b)


def reshape(a, *shape):
    if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
        shape = tuple(shape[0])
    return Reshape.apply(a, tuple(int(s) for s in shape))


def flatten(a, start_dim=0, end_dim=-1):
    ndim = builtins.max(a.ndim, 1)
    start, end = _normalize_dims((start_dim, end_dim), ndim)
    if start > end:
        raise ValueError(f"flatten() has invalid args: start_dim ({start_dim}) cannot come after end_dim ({end_dim})")
    shape = a.shape[:start] + (-1,) + a.shape[end + 1:]
    if a.size == 0:
        shape = a.shape[:start] + (int(np.prod(a.shape[start:end + 1])),) + a.shape[end + 1:]
    return Reshape.apply(a, shape)


def transpose(a, dim0, dim0_1):
    dims = list(range(a.ndim))
    i, j = _normalize_dims((dim0, dim0_1), a.ndim)
    dims[i], dims[j] = dims[j], dims[i]
    return Permute.apply(a, tuple(dims))


def permute(a, *dims):
    if len(dims) == 1 and not isinstance(dims[0], (int, np.integer)):
        dims = tuple(dims[0])
    return Permute.apply(a, _normalize_dims(dims, a.ndim))


def sum(a, dim=None, keepdim=False):
    return Sum.apply(a, _normalize_dims(dim, a.ndim), keepdim)


def mean(a, dim=None, keepdim=False):
    dims = _normalize_dims(dim, a.ndim)
    count = a.size if dims is None else int(np.prod([a.shape[d] for d in dims]))
    return Sum.apply(a, dims, keepdim) * (1.0 / builtins.max(count, 1))


def index(a, key):
    if isinstance(key, Tensor):
        key = key.data
    elif isinstance(key, tuple):
        key = tuple(k.data if isinstance(k, Tensor) else k for k in key)
    return Index.apply(a, key)
