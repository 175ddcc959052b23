"""Gradient utilities: `clip_grad_norm_` and `clip_grad_value_` with PyTorch's semantics."""
import math

import numpy as np

from ..autograd.tensor import Tensor


def _grads(parameters):
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    return [p.grad for p in parameters if p.grad is not None]


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """Scale all gradients together so that their joint norm is at most max_norm; return that norm (before
    clipping) as a 0-d Tensor. The scale is max_norm / (norm + 1e-6), applied only when below 1."""
    grads = _grads(parameters)
    norm_type = float(norm_type)
    if not grads:
        return Tensor(np.array(0.0, dtype=np.float32))
    dtype = np.result_type(*grads)
    if math.isinf(norm_type):
        norms = [np.abs(g).max(initial=0).astype(dtype) for g in grads]
        total_norm = np.max(norms).astype(dtype) if norm_type > 0 else np.min(norms).astype(dtype)
    else:
        norms = [np.linalg.norm(g.ravel(), ord=norm_type).astype(dtype) for g in grads]
        total_norm = np.linalg.norm(np.array(norms, dtype=dtype), ord=norm_type).astype(dtype)
    if error_if_nonfinite and not np.isfinite(total_norm):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients from `parameters` is non-finite, so it cannot be "
            "clipped. To disable this error and scale the gradients by the non-finite norm anyway, set "
            "`error_if_nonfinite=False`")
    clip_coef = min(dtype.type(max_norm) / (total_norm + dtype.type(1e-6)), dtype.type(1.0))
    for g in grads:
        g *= clip_coef.astype(g.dtype)
    return Tensor(np.asarray(total_norm))


def clip_grad_value_(parameters, clip_value, foreach=None):
    """Clamp every gradient element into [-clip_value, clip_value] in place."""
    clip_value = float(clip_value)
    for g in _grads(parameters):
        np.clip(g, -clip_value, clip_value, out=g)
