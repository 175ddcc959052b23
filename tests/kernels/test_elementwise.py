"""Elementwise kernels against their NumPy twins, on one-chunk and multi-chunk (parallel) sizes."""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba.kernels import elementwise
from cnnnumba import reference

SIZES = [0, 1, 7, elementwise.CHUNK, 2 * elementwise.CHUNK + 5]
SPECIALS = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-30, -1e-30, 80.0, -80.0, 800.0, -800.0])

# name, forward call, backward call; `saved` is what backward reads (the input or the output)
KERNELS = {
    "relu": (lambda m, x, out: m.relu_forward(x, out), lambda m, g, x, y, out: m.relu_backward(g, y, out)),
    "leaky_relu": (lambda m, x, out: m.leaky_relu_forward(x, x.dtype.type(0.2), out),
                   lambda m, g, x, y, out: m.leaky_relu_backward(g, x, x.dtype.type(0.2), out)),
    "leaky_relu_negative_slope": (lambda m, x, out: m.leaky_relu_forward(x, x.dtype.type(-1.5), out),
                                  lambda m, g, x, y, out: m.leaky_relu_backward(g, x, x.dtype.type(-1.5), out)),
    "relu6": (lambda m, x, out: m.hardtanh_forward(x, x.dtype.type(0), x.dtype.type(6), out),
              lambda m, g, x, y, out: m.hardtanh_backward(g, x, x.dtype.type(0), x.dtype.type(6), out)),
    "hardtanh": (lambda m, x, out: m.hardtanh_forward(x, x.dtype.type(-1.5), x.dtype.type(0.5), out),
                 lambda m, g, x, y, out: m.hardtanh_backward(g, x, x.dtype.type(-1.5), x.dtype.type(0.5), out)),
    "gelu": (lambda m, x, out: m.gelu_forward(x, False, out), lambda m, g, x, y, out: m.gelu_backward(g, x, False, out)),
    "gelu_tanh": (lambda m, x, out: m.gelu_forward(x, True, out),
                  lambda m, g, x, y, out: m.gelu_backward(g, x, True, out)),
    "sigmoid": (lambda m, x, out: m.sigmoid_forward(x, out), lambda m, g, x, y, out: m.sigmoid_backward(g, y, out)),
    "tanh": (lambda m, x, out: m.tanh_forward(x, out), lambda m, g, x, y, out: m.tanh_backward(g, y, out)),
}


def _run(module, name, x, grad):
    forward, backward = KERNELS[name]
    y, grad_in = np.empty_like(x), np.empty_like(x)
    with np.errstate(all="ignore"):  # gelu(-inf) is -inf * 0 = NaN in PyTorch too
        forward(module, x, y)
        backward(module, grad, x, y, grad_in)
    return y, grad_in


def _inputs(size, dtype):
    rng = np.random.default_rng(size)
    x = (rng.standard_normal(size) * 4).astype(dtype)
    x[:min(size, SPECIALS.size)] = SPECIALS[:size]
    return x, rng.standard_normal(size).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_elementwise_kernel_matches_reference(name, size, dtype):
    x, grad = _inputs(size, dtype)
    y, grad_in = _run(elementwise, name, x, grad)
    expected_y, expected_grad = _run(reference, name, x, grad)
    rtol = 2e-6 if dtype == np.float32 else 1e-13
    assert y.dtype == dtype and grad_in.dtype == dtype
    np.testing.assert_allclose(y, expected_y, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(grad_in, expected_grad, rtol=rtol, atol=rtol)


def test_sigmoid_is_finite_and_saturates_for_large_inputs():
    x = np.array([-1000.0, -100.0, 100.0, 1000.0])
    y = np.empty_like(x)
    elementwise.sigmoid_forward(x, y)
    assert np.all(np.isfinite(y))
    np.testing.assert_array_equal(y[[0, 3]], [0.0, 1.0])
    assert 0 < y[1] < 1e-40


def test_relu_keeps_nan():
    x = np.array([np.nan, -1.0, 2.0], dtype=np.float32)
    y = np.empty_like(x)
    elementwise.relu_forward(x, y)
    np.testing.assert_array_equal(y, [np.nan, 0.0, 2.0])


@pytest.mark.parametrize("size", SIZES)
def test_dropout_apply_matches_reference(size):
    x, _ = _inputs(size, np.float32)
    keep = np.random.default_rng(1).random(size) >= 0.3
    scale = np.float32(1 / 0.7)
    out, expected = np.empty_like(x), np.empty_like(x)
    elementwise.dropout_apply(x, keep, scale, out)
    with np.errstate(invalid="ignore"):
        reference.dropout_apply(x, keep, scale, expected)
    np.testing.assert_array_equal(out, expected)


def test_elementwise_results_do_not_depend_on_thread_count():
    x, grad = _inputs(3 * elementwise.CHUNK + 11, np.float32)
    previous = cn.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            cn.set_num_threads(threads)
            results.append([array for name in sorted(KERNELS) for array in _run(elementwise, name, x, grad)])
    finally:
        cn.set_num_threads(previous)
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


def test_relu_serial_and_chunked_paths_share_one_range_signature():
    # the serial path (one chunk) and the chunked path must call the range helpers with the same argument types,
    # or a cold first step compiles each helper twice
    for size in (100, elementwise.CHUNK + 5):
        x = np.linspace(-1, 1, size, dtype=np.float32)
        out = np.empty_like(x)
        elementwise.relu_forward(x, out)
        elementwise.relu_backward(x, out, out)
    float32_signatures = [s for s in elementwise._relu_range.signatures if str(s[0].dtype) == "float32"]
    assert len(float32_signatures) == 1
    float32_signatures = [s for s in elementwise._relu_backward_range.signatures if str(s[0].dtype) == "float32"]
    assert len(float32_signatures) == 1
