"""Softmax, log-softmax and the losses (cross-entropy, negative log-likelihood, mean squared error)."""
import numbers

import numpy as np

from .._config import FLOAT_DTYPES
from ..autograd import arith
from ..autograd.function import Function
from ..autograd.tensor import Tensor
from ..kernels import loss as kernels

REDUCTIONS = ("none", "mean", "sum")


def _data(value):
    return value.data if isinstance(value, Tensor) else value


def _size(shape):
    return "[" + ", ".join(str(n) for n in shape) + "]"


def _to_rows(x, axis):
    """x with `axis` moved last, as a contiguous (rows, x.shape[axis]) array, and the moved shape."""
    moved = np.moveaxis(x, axis, -1)
    return np.ascontiguousarray(moved).reshape(-1, x.shape[axis]), moved.shape


def _from_rows(rows, moved_shape, axis):
    return np.ascontiguousarray(np.moveaxis(rows.reshape(moved_shape), -1, axis))


def _check_float_input(name, x):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected input to be a Tensor or an ndarray, but got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a floating-point input (float32 or float64), but got {x.dtype}")


def _check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction; expected 'none', 'mean' or 'sum'")


def _reduce(values, reduction, count, dtype):
    """Reduce float64 per-element losses; the mean divides by `count` (0 / 0 is NaN, as in PyTorch)."""
    if reduction == "none":
        return values.astype(dtype)
    total = values.sum()
    if reduction == "sum":
        return np.asarray(total, dtype=dtype)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(np.float64(total) / count, dtype=dtype)


def _row_scale(grad, reduction, rows, count):
    """d(reduced loss)/d(loss of each row), given the gradient of the reduced loss."""
    if reduction == "none":
        return np.asarray(grad, dtype=np.float64).reshape(rows)
    scale = np.float64(grad)
    if reduction == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = scale / count
    return np.full(rows, scale, dtype=np.float64)


# ---- softmax and log-softmax ----

def _normalize_dim(name, dim, ndim):
    if isinstance(dim, bool) or not isinstance(dim, (numbers.Integral, np.integer)):
        raise TypeError(f"{name}: dim must be an int, but got {dim!r}")
    rank = max(ndim, 1)
    if not -rank <= dim < rank:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-rank}, {rank - 1}], but got {dim})")
    return int(dim) % rank


class _SoftmaxBase(Function):
    forward_kernel = backward_kernel = None

    def forward(self, x, dim):
        self.shape = x.shape
        if x.size == 0:
            self.y_rows = None
            return np.empty_like(x)
        rows, self.moved_shape = _to_rows(x.reshape(x.shape or (1,)), dim)
        self.dim = dim
        self.y_rows = type(self).forward_kernel(rows)
        return _from_rows(self.y_rows, self.moved_shape, dim).reshape(x.shape)

    def backward(self, grad):
        if self.y_rows is None:
            return (np.zeros(self.shape, dtype=grad.dtype), None)
        grad_rows, _ = _to_rows(np.asarray(grad).reshape(self.shape or (1,)), self.dim)
        grad_x = type(self).backward_kernel(grad_rows, self.y_rows)
        return (_from_rows(grad_x, self.moved_shape, self.dim).reshape(self.shape), None)


class Softmax(_SoftmaxBase):
    forward_kernel = staticmethod(kernels.softmax_forward)
    backward_kernel = staticmethod(kernels.softmax_backward)


class LogSoftmax(_SoftmaxBase):
    forward_kernel = staticmethod(kernels.log_softmax_forward)
    backward_kernel = staticmethod(kernels.log_softmax_backward)


def _softmax_like(name, op, input, dim, dtype):
    if dtype is not None:
        if not isinstance(input, Tensor):
            input = Tensor(input)
        input = arith.cast(input, np.dtype(dtype).type)
    x = _data(input)
    _check_float_input(name, x)
    return op.apply(input, _normalize_dim(name, dim, x.ndim))


def softmax(input, dim, dtype=None):
    """exp(x) / sum(exp(x)) along `dim`, computed stably; `dtype` casts the input first, as in PyTorch."""
    return _softmax_like("softmax", Softmax, input, dim, dtype)


def log_softmax(input, dim, dtype=None):
    """x - log(sum(exp(x))) along `dim`, computed stably; `dtype` casts the input first, as in PyTorch."""
    return _softmax_like("log_softmax", LogSoftmax, input, dim, dtype)


# ---- class-index losses: cross-entropy and negative log-likelihood ----

def _class_weight(name, weight, classes, dtype):
    if weight is None:
        return np.ones(classes, dtype=np.float64)
    array = _data(weight)
    if not isinstance(array, np.ndarray):
        array = np.asarray(array)
    if array.ndim != 1 or array.shape[0] != classes:
        raise ValueError(f"weight tensor should be defined either for all {classes} classes or no classes but got "
                         f"weight tensor of shape: {_size(array.shape)}")
    if array.dtype != dtype:
        raise TypeError(f"{name}: expected weight to have the input's dtype {dtype}, but got {array.dtype}")
    return array.astype(np.float64)


def _check_class_target(x, target, ignore_index):
    """Check integer class targets against (N, C, d1, ...) or unbatched (C,) input; returns them as int64."""
    if target.dtype.kind not in "iu":
        raise TypeError(f"expected target dtype to be an integer type (class indices), but got {target.dtype}"
                        + ("; class-probability targets must have the input's shape" if target.dtype.kind == "f"
                           else ""))
    expected = x.shape[:1] + x.shape[2:] if x.ndim >= 2 else ()
    if target.shape != expected:
        if x.ndim >= 2 and target.ndim >= 1 and target.shape[0] != x.shape[0]:
            raise ValueError(f"Expected input batch_size ({x.shape[0]}) to match target batch_size "
                             f"({target.shape[0]}).")
        raise ValueError(f"size mismatch (got input: {_size(x.shape)} , target: {_size(target.shape)}); expected a "
                         f"target of size {_size(expected)}")
    classes = x.shape[0 if x.ndim == 1 else 1]
    target = target.astype(np.int64)
    invalid = ((target < 0) | (target >= classes)) & (target != ignore_index)
    if invalid.any():
        raise ValueError(f"Target {target[invalid].flat[0]} is out of bounds.")
    if classes == 0:
        raise ValueError(f"expected input with at least one class, but got input of size {_size(x.shape)}")
    return target


def _check_ignore_index(ignore_index):
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (numbers.Integral, np.integer)):
        raise TypeError(f"ignore_index must be an int, but got {ignore_index!r}")
    return int(ignore_index)


def _batched(x):
    """Unbatched (C,) input as (1, C); the class axis is then 1."""
    return x[None, :] if x.ndim == 1 else x


class CrossEntropy(Function):
    """Cross-entropy of logits (N, C, d1, ...) against int class indices (N, d1, ...)."""

    def forward(self, x, target=None, class_weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        self.shape, self.dtype = x.shape, x.dtype
        self.options = (class_weight, ignore_index, label_smoothing)
        self.reduction = reduction
        self.logits, self.moved_shape = _to_rows(_batched(x), 1)
        self.target = np.ascontiguousarray(target.reshape(-1))
        loss, row_weight, self.logsumexp = kernels.cross_entropy_forward(self.logits, self.target, *self.options)
        self.total_weight = row_weight.sum()
        return _reduce(loss, reduction, self.total_weight, x.dtype).reshape(target.shape if reduction == "none"
                                                                             else ())

    def backward(self, grad):
        class_weight, ignore_index, label_smoothing = self.options
        row_scale = _row_scale(grad, self.reduction, self.target.shape[0], self.total_weight)
        grad_rows = kernels.cross_entropy_backward(self.logits, self.target, class_weight, self.logsumexp, row_scale,
                                                   ignore_index, label_smoothing)
        return (_from_rows(grad_rows, self.moved_shape, 1).reshape(self.shape),)


class ProbabilityCrossEntropy(Function):
    """Cross-entropy of logits (N, C, d1, ...) against class probabilities of the same shape."""

    def forward(self, x, target, class_weight=None, reduction="mean", label_smoothing=0.0):
        self.shape, self.dtype, self.reduction = x.shape, x.dtype, reduction
        classes = _batched(x).shape[1]
        logits, self.moved_shape = _to_rows(_batched(x), 1)
        target_rows, _ = _to_rows(_batched(target), 1)
        self.smoothing = label_smoothing
        smoothed = target_rows * (1.0 - label_smoothing) + label_smoothing / classes
        self.log_probs = kernels.log_softmax_forward(logits)
        self.weighted_log_probs = self.log_probs * class_weight
        self.weighted_target = smoothed * class_weight
        loss = -(self.log_probs.astype(np.float64) * self.weighted_target).sum(axis=1)
        self.rows = loss.shape[0]
        batch_shape = self.moved_shape[:-1] if x.ndim > 1 else ()
        return _reduce(loss, reduction, self.rows, x.dtype).reshape(batch_shape if reduction == "none" else ())

    def backward(self, grad):
        need_x, need_target = self.needs_input_grad
        row_scale = _row_scale(grad, self.reduction, self.rows, self.rows)[:, None]
        grad_x = grad_target = None
        if need_x:
            grad_log_probs = (-row_scale * self.weighted_target).astype(self.dtype)
            grad_rows = kernels.log_softmax_backward(grad_log_probs, self.log_probs)
            grad_x = _from_rows(grad_rows, self.moved_shape, 1).reshape(self.shape)
        if need_target:
            grad_rows = (-row_scale * (1.0 - self.smoothing) * self.weighted_log_probs).astype(self.dtype)
            grad_target = _from_rows(grad_rows, self.moved_shape, 1).reshape(self.shape)
        return grad_x, grad_target


class NllLoss(Function):
    """Negative log-likelihood of log-probabilities (N, C, d1, ...) at int class indices (N, d1, ...)."""

    def forward(self, x, target=None, class_weight=None, ignore_index=-100, reduction="mean"):
        self.shape, self.dtype, self.reduction = x.shape, x.dtype, reduction
        rows, self.moved_shape = _to_rows(_batched(x), 1)
        flat_target = target.reshape(-1)
        kept = flat_target != ignore_index
        self.picked = (np.arange(rows.shape[0]), np.where(kept, flat_target, 0))
        self.row_weight = np.where(kept, class_weight[self.picked[1]], 0.0)
        self.total_weight = self.row_weight.sum()
        # ignored rows pick class 0, whose log-probability may be -inf; 0 * -inf would be NaN
        loss = np.where(kept, -self.row_weight * rows[self.picked], 0.0)
        return _reduce(loss, reduction, self.total_weight, x.dtype).reshape(target.shape if reduction == "none"
                                                                             else ())

    def backward(self, grad):
        row_scale = _row_scale(grad, self.reduction, self.row_weight.shape[0], self.total_weight)
        grad_rows = np.zeros(self.moved_shape, dtype=self.dtype).reshape(-1, self.moved_shape[-1])
        with np.errstate(invalid="ignore"):
            # an all-ignored mean has scale 1/0; ignored rows still get exactly 0, as in PyTorch
            grad_rows[self.picked] = np.where(self.row_weight != 0, -self.row_weight * row_scale, 0.0)
        return (_from_rows(grad_rows, self.moved_shape, 1).reshape(self.shape),)


def _check_class_loss_arguments(name, x, weight, ignore_index, reduction):
    _check_float_input(name, x)
    if x.ndim == 0:
        raise ValueError(f"{name}: expected input of size (C,), (N, C) or (N, C, d1, ...), but got a 0-d input")
    _check_reduction(reduction)
    classes = x.shape[0 if x.ndim == 1 else 1]
    return _class_weight(name, weight, classes, x.dtype), _check_ignore_index(ignore_index)


def _target_array(name, target):
    array = _data(target)
    if not isinstance(array, np.ndarray):
        if isinstance(target, (list, tuple, numbers.Number)):
            return np.asarray(target)
        raise TypeError(f"{name}: expected target to be a Tensor or an ndarray, but got {type(target).__name__}")
    return array


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Cross-entropy between logits and class indices (or class probabilities), like F.cross_entropy.

    input is (N, C), (N, C, d1, ...) or unbatched (C,); target holds int class indices of shape (N, d1, ...),
    or float class probabilities of the input's shape. weight rescales each class; targets equal to
    ignore_index contribute nothing (and the mean excludes them); label_smoothing mixes the target with the
    uniform distribution.
    """
    x = _data(input)
    class_weight, ignore_index = _check_class_loss_arguments("cross_entropy", x, weight, ignore_index, reduction)
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real) \
            or not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
    target_array = _target_array("cross_entropy", target)
    if target_array.shape == x.shape and target_array.dtype.kind == "f":
        if target_array.dtype != x.dtype:
            raise TypeError(f"cross_entropy: expected class-probability target of the input's dtype {x.dtype}, but "
                            f"got {target_array.dtype}")
        if ignore_index >= 0:
            raise ValueError("ignore_index is not supported for floating point target")
        target = target if isinstance(target, Tensor) else target_array
        return ProbabilityCrossEntropy.apply(input, target, class_weight=class_weight.astype(x.dtype),
                                             reduction=reduction, label_smoothing=float(label_smoothing))
    target_array = _check_class_target(x, target_array, ignore_index)
    return CrossEntropy.apply(input, target=target_array, class_weight=class_weight, ignore_index=ignore_index,
                              reduction=reduction, label_smoothing=float(label_smoothing))


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean"):
    """Negative log-likelihood loss of log-probabilities at class indices, like F.nll_loss."""
    x = _data(input)
    class_weight, ignore_index = _check_class_loss_arguments("nll_loss", x, weight, ignore_index, reduction)
    target_array = _check_class_target(x, _target_array("nll_loss", target), ignore_index)
    return NllLoss.apply(input, target=target_array, class_weight=class_weight, ignore_index=ignore_index,
                         reduction=reduction)


# ---- mean squared error ----

class MseLoss(Function):
    def forward(self, x, target, reduction="mean"):
        self.difference, self.reduction = x - target, reduction
        return _reduce(self.difference.astype(np.float64) ** 2, reduction, x.size, x.dtype)

    def backward(self, grad):
        need_x, need_target = self.needs_input_grad
        scale = np.asarray(grad, dtype=np.float64)
        if self.reduction == "mean":
            with np.errstate(invalid="ignore", divide="ignore"):
                scale = scale / self.difference.size
        grad_x = (2.0 * scale * self.difference).astype(self.difference.dtype)
        return (grad_x if need_x else None, -grad_x if need_target else None)


def mse_loss(input, target, reduction="mean"):
    """Mean squared error between input and a target of the same shape, like F.mse_loss."""
    x = _data(input)
    _check_float_input("mse_loss", x)
    _check_reduction(reduction)
    target_array = _target_array("mse_loss", target)
    if target_array.shape != x.shape:
        raise ValueError(f"Using a target size ({_size(target_array.shape)}) that is different to the input size "
                         f"({_size(x.shape)}) is not supported: PyTorch would broadcast them (with a warning), which "
                         "is likely to give incorrect results, so cnnnumba raises instead. Please ensure they have "
                         "the same size.")
    if target_array.dtype != x.dtype:
        raise TypeError(f"mse_loss: expected target to have the input's dtype {x.dtype}, but got {target_array.dtype}")
    return MseLoss.apply(input, target if isinstance(target, Tensor) else target_array, reduction=reduction)
