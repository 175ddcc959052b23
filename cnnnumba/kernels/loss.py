"""Softmax, log-softmax and cross-entropy kernels on (rows, classes) arrays.

Every row is shifted by its maximum before exponentiating and its sums are float64, so logits of +-1e4 stay finite.
Softmax and log-softmax run parallel over rows. The cross-entropy pair is serial: a training step's loss has a
batch of rows of a few classes (some microseconds of work), while the two parallel versions took seconds of a
cold first training step to compile, and their prange typed the row index both as
int64 and uint64, compiling the row helpers twice.
"""
import numpy as np
from numba import prange

from ._runtime import jit, parallel_jit


@jit
def _row_max(x, r):
    m = x[r, 0]
    for c in range(1, x.shape[1]):
        if x[r, c] > m:
            m = x[r, c]
    return m


@jit
def _row_logsumexp(x, r):
    """log(sum(exp(x[r]))) in float64, shifted by the row maximum."""
    m = np.float64(_row_max(x, r))
    total = 0.0
    for c in range(x.shape[1]):
        total += np.exp(np.float64(x[r, c]) - m)
    return m + np.log(total)


@parallel_jit
def softmax_forward(x):
    """Softmax over the last axis of x (rows, classes)."""
    rows, classes = x.shape
    y = np.empty_like(x)
    for r in prange(rows):
        m = _row_max(x, r)
        total = 0.0
        for c in range(classes):
            e = np.exp(x[r, c] - m)
            y[r, c] = e
            total += e
        inverse = 1.0 / total
        for c in range(classes):
            y[r, c] = y[r, c] * inverse
    return y


@parallel_jit
def softmax_backward(grad_y, y):
    """grad_x = y * (grad_y - sum(grad_y * y)) per row."""
    rows, classes = y.shape
    grad_x = np.empty_like(y)
    for r in prange(rows):
        dot = 0.0
        for c in range(classes):
            dot += np.float64(grad_y[r, c]) * y[r, c]
        for c in range(classes):
            grad_x[r, c] = y[r, c] * (grad_y[r, c] - dot)
    return grad_x


@parallel_jit
def log_softmax_forward(x):
    """Log-softmax over the last axis of x (rows, classes)."""
    rows, classes = x.shape
    y = np.empty_like(x)
    for r in prange(rows):
        lse = _row_logsumexp(x, r)
        for c in range(classes):
            y[r, c] = np.float64(x[r, c]) - lse
    return y


@parallel_jit
def log_softmax_backward(grad_y, y):
    """grad_x = grad_y - exp(y) * sum(grad_y) per row."""
    rows, classes = y.shape
    grad_x = np.empty_like(y)
    for r in prange(rows):
        total = 0.0
        for c in range(classes):
            total += grad_y[r, c]
        for c in range(classes):
            grad_x[r, c] = grad_y[r, c] - np.exp(np.float64(y[r, c])) * total
    return grad_x


@jit
def cross_entropy_forward_into(logits, target, class_weight, ignore_index, label_smoothing, loss, row_weight,
                               logsumexp):
    """Per-row cross-entropy into float64 buffers: loss[r] (0 where ignored), row_weight[r] = class_weight[target[r]]
    (0 where ignored) and logsumexp[r], which the backward reads. Targets must be in [0, C) or ignore_index."""
    rows, classes = logits.shape
    for r in range(rows):
        lse = _row_logsumexp(logits, r)
        logsumexp[r] = lse
        loss[r] = 0.0
        row_weight[r] = 0.0
        t = target[r]
        if t == ignore_index:
            continue
        nll = class_weight[t] * (lse - np.float64(logits[r, t]))
        smooth = 0.0
        if label_smoothing != 0.0:
            for c in range(classes):
                smooth += class_weight[c] * (lse - np.float64(logits[r, c]))
        loss[r] = (1.0 - label_smoothing) * nll + label_smoothing / classes * smooth
        row_weight[r] = class_weight[t]


@jit
def cross_entropy_backward_into(logits, target, class_weight, logsumexp, row_scale, ignore_index, label_smoothing,
                                grad):
    """Gradient of sum_r row_scale[r] * loss[r] with respect to the logits, written into grad (rows, classes).

    d loss[r] / d x[j] = (1 - s) * w[t] * (p[j] - [j == t]) + s / C * (p[j] * sum_c w[c] - w[j]).
    """
    rows, classes = logits.shape
    weight_total = 0.0
    for c in range(classes):
        weight_total += class_weight[c]
    for r in range(rows):
        t = target[r]
        if t == ignore_index:
            for c in range(classes):
                grad[r, c] = 0.0
            continue
        nll_scale = row_scale[r] * (1.0 - label_smoothing) * class_weight[t]
        smooth_scale = row_scale[r] * label_smoothing / classes
        lse = logsumexp[r]
        for c in range(classes):
            p = np.exp(np.float64(logits[r, c]) - lse)
            one_hot = nll_scale if c == t else 0.0
            grad[r, c] = (nll_scale * p - one_hot) + smooth_scale * (p * weight_total - class_weight[c])


def cross_entropy_forward(logits, target, class_weight, ignore_index, label_smoothing):
    """(loss, row_weight, logsumexp), each float64 (rows,), from cross_entropy_forward_into."""
    rows = logits.shape[0]
    loss, row_weight, logsumexp = (np.empty(rows, dtype=np.float64) for _ in range(3))
    cross_entropy_forward_into(logits, target, class_weight, ignore_index, label_smoothing, loss, row_weight,
                               logsumexp)
    return loss, row_weight, logsumexp


def cross_entropy_backward(logits, target, class_weight, logsumexp, row_scale, ignore_index, label_smoothing):
    """The logits' gradient (rows, classes) in their dtype, from cross_entropy_backward_into."""
    grad = np.empty_like(logits)
    cross_entropy_backward_into(logits, target, class_weight, logsumexp, row_scale, ignore_index, label_smoothing,
                                grad)
    return grad
