"""Optimizer update kernels: in-place SGD and Adam/AdamW steps over flat (1-D, contiguous) parameter arrays.

Scalars arrive already cast to the parameters' dtype (float32 or float64), so float32 updates run in float32
arithmetic as PyTorch's do. Every element is independent, so the parallel versions are a plain prange over
elements with no reduction: results do not depend on the thread count. They compile without contraction, as every
parallel kernel does (_runtime/jit.py), and so do the serial ones: both give the same bits. The parallel loop body
is written out rather than calling a shared element function: a prange calling an inlined helper (or a range
function per chunk) ran slower than the serial loop, while a plain prange runs faster. The test against
cnnnumba/reference covers both copies.
"""
import numba
import numpy as np

from ._runtime import EXACT_FASTMATH, jit, parallel_jit


@jit(fastmath=EXACT_FASTMATH)
def sgd_update(param, grad, momentum_buffer, lr, momentum, one_minus_dampening, weight_decay, nesterov, maximize,
               first_step):
    """One SGD step in place on param (and momentum_buffer when momentum != 0; it is ignored otherwise).

    first_step: the momentum buffer does not exist yet and becomes the (decayed) gradient, as in PyTorch.
    """
    for i in range(param.shape[0]):
        g = -grad[i] if maximize else grad[i]
        if weight_decay != 0:
            g = g + weight_decay * param[i]
        if momentum != 0:
            if first_step:
                b = g
            else:
                b = momentum * momentum_buffer[i] + one_minus_dampening * g
            momentum_buffer[i] = b
            if nesterov:
                g = g + momentum * b
            else:
                g = b
        param[i] = param[i] - lr * g


@parallel_jit
def sgd_update_parallel(param, grad, momentum_buffer, lr, momentum, one_minus_dampening, weight_decay, nesterov,
                        maximize, first_step):
    """`sgd_update` over parallel threads (same body)."""
    for i in numba.prange(param.shape[0]):
        g = -grad[i] if maximize else grad[i]
        if weight_decay != 0:
            g = g + weight_decay * param[i]
        if momentum != 0:
            if first_step:
                b = g
            else:
                b = momentum * momentum_buffer[i] + one_minus_dampening * g
            momentum_buffer[i] = b
            if nesterov:
                g = g + momentum * b
            else:
                g = b
        param[i] = param[i] - lr * g


@jit(fastmath=EXACT_FASTMATH)
def adam_update(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, beta1, one_minus_beta1, beta2, one_minus_beta2, eps,
                weight_decay, decay_factor, step_size, bias_correction2_sqrt, amsgrad, maximize):
    """One Adam/AdamW step in place on param, exp_avg, exp_avg_sq (and max_exp_avg_sq when amsgrad).

    weight_decay is Adam's (added to the gradient; 0 for AdamW); decay_factor is AdamW's decoupled
    1 - lr * weight_decay (1 for Adam). step_size = lr / (1 - beta1**step), bias_correction2_sqrt =
    sqrt(1 - beta2**step), computed by the caller in double precision as PyTorch does.
    """
    for i in range(param.shape[0]):
        p = param[i]
        if decay_factor != 1:
            p = p * decay_factor
        g = -grad[i] if maximize else grad[i]
        if weight_decay != 0:
            g = g + weight_decay * p
        m = exp_avg[i]
        # torch.lerp's two formulas, chosen by weight, keep the result exact at both ends
        if one_minus_beta1 < 0.5:
            m = m + one_minus_beta1 * (g - m)
        else:
            m = g - (g - m) * beta1
        exp_avg[i] = m
        v = exp_avg_sq[i] * beta2 + one_minus_beta2 * g * g
        exp_avg_sq[i] = v
        if amsgrad:
            v = np.maximum(max_exp_avg_sq[i], v)
            max_exp_avg_sq[i] = v
        denom = np.sqrt(v) / bias_correction2_sqrt + eps
        param[i] = p - step_size * (m / denom)


@parallel_jit
def adam_update_parallel(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, beta1, one_minus_beta1, beta2,
                         one_minus_beta2, eps, weight_decay, decay_factor, step_size, bias_correction2_sqrt, amsgrad,
                         maximize):
    """`adam_update` over parallel threads (same body)."""
    for i in numba.prange(param.shape[0]):
        p = param[i]
        if decay_factor != 1:
            p = p * decay_factor
        g = -grad[i] if maximize else grad[i]
        if weight_decay != 0:
            g = g + weight_decay * p
        m = exp_avg[i]
        # torch.lerp's two formulas, chosen by weight, keep the result exact at both ends
        if one_minus_beta1 < 0.5:
            m = m + one_minus_beta1 * (g - m)
        else:
            m = g - (g - m) * beta1
        exp_avg[i] = m
        v = exp_avg_sq[i] * beta2 + one_minus_beta2 * g * g
        exp_avg_sq[i] = v
        if amsgrad:
            v = np.maximum(max_exp_avg_sq[i], v)
            max_exp_avg_sq[i] = v
        denom = np.sqrt(v) / bias_correction2_sqrt + eps
        param[i] = p - step_size * (m / denom)
