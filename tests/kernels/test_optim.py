"""Optimizer update kernels against their NumPy twins in cnnnumba/reference, serial and parallel."""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba.kernels import optim as kernels
from cnnnumba import reference

TOLERANCE = {np.float32: dict(rtol=2e-6, atol=1e-7), np.float64: dict(rtol=1e-13, atol=1e-15)}


def _arrays(n, dtype, count, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(dtype) for _ in range(count)]


def _scalars(dtype, **values):
    return {name: dtype(value) for name, value in values.items()}


SGD_CASES = [
    # momentum, dampening, weight_decay, nesterov, maximize, first_step
    (0.0, 0.0, 0.0, False, False, False),
    (0.9, 0.0, 0.0, False, False, True),
    (0.9, 0.1, 0.01, False, False, False),
    (0.9, 0.0, 0.01, True, False, False),
    (0.5, 0.0, 0.0, True, True, True),
    (0.0, 0.0, 0.1, False, True, False),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel", [kernels.sgd_update, kernels.sgd_update_parallel])
@pytest.mark.parametrize("n", [1, 7, 40_003])
@pytest.mark.parametrize("momentum,dampening,weight_decay,nesterov,maximize,first_step", SGD_CASES)
def test_sgd_update_matches_reference(dtype, kernel, n, momentum, dampening, weight_decay, nesterov, maximize,
                                      first_step):
    param, grad, buffer = _arrays(n, dtype, 3)
    expected = [param.copy(), grad.copy(), buffer.copy()]
    scalars = _scalars(dtype, lr=0.05, momentum=momentum, one_minus_dampening=1 - dampening,
                       weight_decay=weight_decay)
    kernel(param, grad, buffer, nesterov=nesterov, maximize=maximize, first_step=first_step, **scalars)
    reference.sgd_update(*expected, nesterov=nesterov, maximize=maximize, first_step=first_step, **scalars)
    np.testing.assert_allclose(param, expected[0], **TOLERANCE[dtype])
    np.testing.assert_allclose(buffer, expected[2], **TOLERANCE[dtype])
    assert param.dtype == dtype


ADAM_CASES = [
    # beta1, weight_decay, decay_factor, amsgrad, maximize
    (0.9, 0.0, 1.0, False, False),
    (0.9, 0.01, 1.0, False, False),
    (0.9, 0.0, 1 - 1e-3 * 0.01, True, False),
    (0.3, 0.0, 1.0, True, True),  # beta1 < 0.5 takes lerp's other formula
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel", [kernels.adam_update, kernels.adam_update_parallel])
@pytest.mark.parametrize("n", [1, 7, 40_003])
@pytest.mark.parametrize("beta1,weight_decay,decay_factor,amsgrad,maximize", ADAM_CASES)
def test_adam_update_matches_reference(dtype, kernel, n, beta1, weight_decay, decay_factor, amsgrad, maximize):
    param, grad, exp_avg = _arrays(n, dtype, 3)
    exp_avg_sq, max_exp_avg_sq = (np.abs(a) for a in _arrays(n, dtype, 2, seed=1))
    arrays = [param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq]
    expected = [a.copy() for a in arrays]
    step = 3
    scalars = _scalars(dtype, beta1=beta1, one_minus_beta1=1 - beta1, beta2=0.999, one_minus_beta2=1 - 0.999,
                       eps=1e-8, weight_decay=weight_decay, decay_factor=decay_factor,
                       step_size=1e-3 / (1 - beta1 ** step), bias_correction2_sqrt=(1 - 0.999 ** step) ** 0.5)
    kernel(*arrays, amsgrad=amsgrad, maximize=maximize, **scalars)
    reference.adam_update(*expected, amsgrad=amsgrad, maximize=maximize, **scalars)
    for name, got, want in zip(["param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"], arrays, expected):
        np.testing.assert_allclose(got, want, err_msg=name, **TOLERANCE[dtype])


def test_parallel_updates_do_not_depend_on_thread_count():
    n = 50_003
    results = []
    previous = cn.get_num_threads()
    try:
        for threads in (1, 2):
            cn.set_num_threads(threads)
            param, grad, exp_avg = _arrays(n, np.float32, 3)
            exp_avg_sq = np.abs(_arrays(n, np.float32, 1, seed=1)[0])
            scalars = _scalars(np.float32, beta1=0.9, one_minus_beta1=0.1, beta2=0.999, one_minus_beta2=0.001,
                               eps=1e-8, weight_decay=0.0, decay_factor=0.99, step_size=0.01,
                               bias_correction2_sqrt=0.05)
            kernels.adam_update_parallel(param, grad, exp_avg, exp_avg_sq, exp_avg_sq[:0], amsgrad=False,
                                         maximize=False, **scalars)
            results.append(param)
    finally:
        cn.set_num_threads(previous)
    np.testing.assert_array_equal(results[0], results[1])
