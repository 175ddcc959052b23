"""Softmax, log-softmax and cross-entropy kernels against their NumPy twins in cnnnumba/reference."""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba.kernels import loss
from cnnnumba import reference

SHAPES = [(1, 1), (1, 5), (4, 3), (33, 10)]  # rows, classes
DTYPES = [np.float32, np.float64]
SCALES = [1.0, 100.0, 1e4]  # logits of +-100 and +-1e4 must stay finite
TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}


def _logits(rows, classes, dtype, scale=1.0, seed=0):
    return (np.random.default_rng(seed).standard_normal((rows, classes)) * scale).astype(dtype)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_forward_and_backward_match_reference(name, shape, dtype, scale):
    x = _logits(*shape, dtype, scale)
    grad_y = _logits(*shape, dtype, seed=1)
    forward, backward = getattr(loss, f"{name}_forward"), getattr(loss, f"{name}_backward")
    y = forward(x)
    assert y.dtype == dtype and np.isfinite(y).all()
    np.testing.assert_allclose(y, getattr(reference, f"{name}_forward")(x), **TOL[dtype])
    grad_x = backward(grad_y, y)
    assert grad_x.dtype == dtype
    np.testing.assert_allclose(grad_x, getattr(reference, f"{name}_backward")(grad_y, y), **TOL[dtype])


CROSS_ENTROPY_CASES = [
    # (rows, classes, weighted, ignore_index, label_smoothing)
    (4, 3, False, -100, 0.0),
    (4, 3, True, -100, 0.0),
    (6, 5, True, 2, 0.0),
    (6, 5, False, -1, 0.3),
    (6, 5, True, -1, 0.3),
    (8, 1, False, -100, 1.0),
]


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, classes, weighted, ignore_index, label_smoothing", CROSS_ENTROPY_CASES)
def test_cross_entropy_matches_reference(rows, classes, weighted, ignore_index, label_smoothing, dtype, scale):
    rng = np.random.default_rng(2)
    logits = _logits(rows, classes, dtype, scale)
    target = rng.integers(0, classes, rows)
    if ignore_index >= 0 or ignore_index == -1:
        target[::3] = ignore_index
    class_weight = rng.uniform(0.5, 2.0, classes) if weighted else np.ones(classes)
    row_scale = rng.standard_normal(rows)
    args = (class_weight, ignore_index, label_smoothing)
    actual = loss.cross_entropy_forward(logits, target, *args)
    expected = reference.cross_entropy_forward(logits, target, *args)
    for a, e in zip(actual, expected):
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12 * scale)
    logsumexp = actual[2]
    backward_args = (class_weight, logsumexp, row_scale, ignore_index, label_smoothing)
    grad = loss.cross_entropy_backward(logits, target, *backward_args)
    assert grad.dtype == dtype
    np.testing.assert_allclose(grad, reference.cross_entropy_backward(logits, target, *backward_args), **TOL[dtype])
    assert not grad[target == ignore_index].any()


def test_rows_are_independent_of_the_thread_count():
    logits = _logits(300, 7, np.float32, 10.0)
    target = np.random.default_rng(0).integers(0, 7, 300)
    previous = cn.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            cn.set_num_threads(threads)
            forward = loss.cross_entropy_forward(logits, target, np.ones(7), -100, 0.1)
            results.append(forward + (loss.cross_entropy_backward(logits, target, np.ones(7), forward[2],
                                                                  np.ones(300), -100, 0.1),
                                      loss.log_softmax_forward(logits), loss.softmax_forward(logits)))
    finally:
        cn.set_num_threads(previous)
    for one_thread, two_threads in zip(*results):
        np.testing.assert_array_equal(one_thread, two_threads)
