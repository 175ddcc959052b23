"""`Tensor`: an ndarray plus what autograd needs (requires_grad, grad, the op that produced it)."""
import numpy as np

from .._config import DEFAULT_DTYPE, FLOAT_DTYPES
from .function import run_backward


class Tensor:
    """An n-dimensional array that can record the ops applied to it and receive gradients.

    ``Tensor(ndarray)`` shares the array's memory (like ``torch.from_numpy``); Python lists and scalars
    become float32 arrays when they hold floats.
    """

    __array_priority__ = 1000  # ndarray (op) Tensor defers to Tensor's reflected operators

    def __init__(self, data, requires_grad=False, dtype=None):
        if isinstance(data, Tensor):
            data = data.data
        if dtype is None and not isinstance(data, np.ndarray):
            array = np.asarray(data)
            if array.dtype.kind == "f":
                array = array.astype(DEFAULT_DTYPE, copy=False)
        else:
            array = np.asarray(data, dtype=dtype)
        if array.dtype == object:
            raise TypeError("Tensor data must be numeric, but got an object array")
        self.data = array
        self.grad = None
        self._op = None
        self.requires_grad = bool(requires_grad)

    @classmethod
    def _wrap(cls, array, requires_grad=False):
        tensor = cls.__new__(cls)
        tensor.data = array if isinstance(array, np.ndarray) else np.asarray(array)
        tensor.grad = None
        tensor._op = None
        tensor._requires_grad = requires_grad
        return tensor

    @property
    def requires_grad(self):
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value):
        if value and self.data.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"only float32 and float64 tensors can require gradients, but got dtype {self.data.dtype}"
            )
        if not value and self._op is not None:
            raise RuntimeError("requires_grad can only be turned off on a leaf tensor; use detach()")
        self._requires_grad = bool(value)

    # ----- array-like properties -----
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    is_leaf = property(lambda self: self._op is None)
    grad_fn = property(lambda self: self._op)

    def numel(self):
        return self.data.size

    def dim(self):
        return self.data.ndim

    def numpy(self):
        return self.data

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"a Tensor with {self.data.size} elements cannot be converted to a Python scalar")
        return self.data.item()

    def detach(self):
        return Tensor._wrap(self.data, False)

    def zero_(self):
        self.data[...] = 0
        return self

    def float(self):
        return arith.cast(self, np.float32)

    def double(self):
        return arith.cast(self, np.float64)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        body = np.array2string(self.data, separator=", ", prefix="Tensor(")
        extra = f", dtype={self.dtype}" if self.dtype != DEFAULT_DTYPE else ""
        if self._op is not None:
            extra += f", grad_fn={self._op!r}"
        elif self.requires_grad:
            extra += ", requires_grad=True"
        return f"Tensor({body}{extra})"

    def backward(self, grad=None):
        """Accumulate d(self)/d(leaf) * grad into the `.grad` of every leaf that requires grad."""
        if not self.requires_grad:
            raise RuntimeError("element 0 of tensors does not require grad and does not have a grad_fn")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"grad can be implicitly created only for scalar outputs, but this tensor has shape {self.shape}"
                )
            grad = np.ones_like(self.data)
        else:
            grad = np.asarray(grad.data if isinstance(grad, Tensor) else grad, dtype=self.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"grad has shape {grad.shape}, but the tensor has shape {self.shape}")
        run_backward(self, grad)

    # ----- arithmetic (differentiable; see arith.py) -----
    def __add__(self, other):
        return arith.add(self, other)

    def __radd__(self, other):
        return arith.add(other, self)

    def __sub__(self, other):
        return arith.sub(self, other)

    def __rsub__(self, other):
        return arith.sub(other, self)

    def __mul__(self, other):
        return arith.mul(self, other)

    def __rmul__(self, other):
        return arith.mul(other, self)

    def __truediv__(self, other):
        return arith.div(self, other)

    def __rtruediv__(self, other):
        return arith.div(other, self)

    def __matmul__(self, other):
        return arith.matmul(self, other)

    def __rmatmul__(self, other):
        return arith.matmul(other, self)

    def __neg__(self):
        return arith.neg(self)

    def __pow__(self, exponent):
        return arith.power(self, exponent)

    def __getitem__(self, index):
        return arith.index(self, index)

    def exp(self):
        return arith.exp(self)

    def log(self):
        return arith.log(self)

    def reshape(self, *shape):
        return arith.reshape(self, *shape)

    view = reshape

    def flatten(self, start_dim=0, end_dim=-1):
        return arith.flatten(self, start_dim, end_dim)

    def transpose(self, dim0, dim1):
        return arith.transpose(self, dim0, dim1)

    def permute(self, *dims):
        return arith.permute(self, *dims)

    @property
    def T(self):
        return arith.permute(self, *reversed(range(self.ndim)))

    def sum(self, dim=None, keepdim=False):
        return arith.sum(self, dim, keepdim)

    def mean(self, dim=None, keepdim=False):
        return arith.mean(self, dim, keepdim)

    def argmax(self, dim=None):
        return Tensor._wrap(np.argmax(self.data, axis=dim))

    # comparisons give boolean tensors without gradient, as in PyTorch
    def __eq__(self, other):
        return Tensor._wrap(self.data == (other.data if isinstance(other, Tensor) else other))

    def __ne__(self, other):
        return Tensor._wrap(self.data != (other.data if isinstance(other, Tensor) else other))

    def __lt__(self, other):
        return Tensor._wrap(self.data < (other.data if isinstance(other, Tensor) else other))

    def __gt__(self, other):
        return Tensor._wrap(self.data > (other.data if isinstance(other, Tensor) else other))

    __hash__ = object.__hash__


from . import arith  # noqa: E402  (arith builds on Tensor)
