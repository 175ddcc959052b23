"""Batch-norm kernels against their NumPy twins in cnnnumba/reference."""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba.kernels import norm
from cnnnumba import reference

SHAPES = [(2, 3), (7, 1), (150, 4), (600, 5), (300, 32)]  # rows, channels; the larger ones span several 256-row chunks
DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}


def _arrays(rows, channels, dtype, seed=0, offset=0.0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, channels)) * 2 + offset).astype(dtype)
    weight = rng.standard_normal(channels).astype(dtype)
    bias = rng.standard_normal(channels).astype(dtype)
    grad_y = rng.standard_normal((rows, channels)).astype(dtype)
    return x, weight, bias, grad_y


def _assert_all_close(actual, expected, tol):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.dtype == e.dtype, (a.dtype, e.dtype)
        np.testing.assert_allclose(a, e, **tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_train_matches_reference(shape, dtype):
    x, weight, bias, _ = _arrays(*shape, dtype)
    _assert_all_close(norm.batch_norm_forward_train(x, weight, bias, 1e-5),
                      reference.batch_norm_forward_train(x, weight, bias, 1e-5), TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_eval_matches_reference(shape, dtype):
    x, weight, bias, _ = _arrays(*shape, dtype)
    running_mean, running_var = bias * 0.5, np.abs(weight) + 0.5
    np.testing.assert_allclose(norm.batch_norm_forward_eval(x, running_mean, running_var, weight, bias, 1e-5),
                               reference.batch_norm_forward_eval(x, running_mean, running_var, weight, bias, 1e-5),
                               **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_train_matches_reference(shape, dtype):
    x, weight, bias, grad_y = _arrays(*shape, dtype)
    _, mean, _, invstd = reference.batch_norm_forward_train(x, weight, bias, 1e-5)
    _assert_all_close(norm.batch_norm_backward_train(grad_y, x, mean, invstd, weight),
                      reference.batch_norm_backward_train(grad_y, x, mean, invstd, weight), TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_eval_matches_reference(shape, dtype):
    x, weight, bias, grad_y = _arrays(*shape, dtype)
    running_mean, running_var = bias * 0.5, np.abs(weight) + 0.5
    _assert_all_close(norm.batch_norm_backward_eval(grad_y, x, running_mean, running_var, weight, 1e-5),
                      reference.batch_norm_backward_eval(grad_y, x, running_mean, running_var, weight, 1e-5),
                      TOL[dtype])


def test_float32_statistics_are_accurate_with_a_large_mean():
    # float32 sums of 1e4-sized values lose the variance unless they are accumulated in float64 around the mean
    x, _, _, _ = _arrays(4096, 3, np.float32, offset=1e4)
    mean, variance = norm.channel_statistics(x)
    expected_mean, expected_variance = reference.channel_statistics(x)
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-12)
    np.testing.assert_allclose(variance, expected_variance, rtol=1e-9)


@pytest.mark.parametrize("rows", [1, 255, 256, 257, 1000])
def test_chunking_does_not_change_the_statistics_beyond_rounding(rows):
    x, _, _, _ = _arrays(rows, 4, np.float64)
    mean, variance = norm.channel_statistics(x)
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(variance, x.var(axis=0), rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_results_are_identical_for_one_and_two_threads(dtype):
    x, weight, bias, grad_y = _arrays(2000, 6, dtype, seed=3)  # 8 chunks of 256 rows
    previous = cn.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            cn.set_num_threads(threads)
            y, mean, variance, invstd = norm.batch_norm_forward_train(x, weight, bias, 1e-5)
            grads = norm.batch_norm_backward_train(grad_y, x, mean, invstd, weight)
            eval_grads = norm.batch_norm_backward_eval(grad_y, x, mean, variance, weight, 1e-5)
            results.append((y, mean, variance, invstd) + grads + eval_grads)
    finally:
        cn.set_num_threads(previous)
    for one_thread, two_threads in zip(*results):
        np.testing.assert_array_equal(one_thread, two_threads)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("in_place", [False, True])
def test_fold_batch_norm_rounds_each_value_once_as_its_twin(dtype, in_place):
    """The inference graph's conv + batch norm fold: float64 arithmetic rounded once, bit for bit the twin's, also
    when the folded weight overwrites the weight."""
    rng = np.random.default_rng(4)
    rows, channels = 27, 40
    weight = rng.standard_normal((rows, channels)).astype(dtype)
    conv_bias, mean, gamma, beta = (rng.standard_normal(channels).astype(dtype) for _ in range(4))
    var = (rng.random(channels) + 0.1).astype(dtype)
    expected = [np.empty((rows, channels), dtype), np.empty(channels, dtype), np.empty(channels)]
    reference.fold_batch_norm(weight, conv_bias, mean, var, gamma, beta, 1e-5, *expected)
    got = [weight.copy() if in_place else np.empty((rows, channels), dtype), np.empty(channels, dtype),
           np.empty(channels)]
    norm.fold_batch_norm(got[0] if in_place else weight, conv_bias, mean, var, gamma, beta, 1e-5, *got)
    for a, e in zip(got, expected):
        np.testing.assert_array_equal(a, e)
    assert not np.array_equal(got[0], weight)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_running_coefficients_round_as_numpy_does(dtype):
    """Eval-mode batch norm's coefficients in one compiled call, bit for bit the four NumPy ufuncs they replaced
    (float64 invstd, then batch_norm_act_forward's rounding to the activations' dtype)."""
    rng = np.random.default_rng(3)
    channels = 37
    running_mean = rng.standard_normal(channels).astype(dtype)
    running_var = rng.uniform(1e-4, 3.0, channels).astype(dtype)
    weight, bias = rng.standard_normal(channels).astype(dtype), rng.standard_normal(channels).astype(dtype)
    got = np.empty((3, channels), dtype)
    norm.running_coefficients(running_mean, running_var, 1e-5, weight, bias, got)
    invstd = 1.0 / np.sqrt(np.add(running_var, 1e-5, dtype=np.float64))
    want = np.stack([running_mean, (invstd * weight).astype(dtype), bias])
    np.testing.assert_array_equal(got, want)
