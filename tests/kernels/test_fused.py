"""Fused kernels against their NumPy twins and against the unfused kernels they replace, and thread determinism."""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba.kernels import elementwise, norm
from cnnnumba import reference
from cnnnumba.kernels import fused

SHAPES = [(1, 3), (7, 5), (600, 4)]  # 600 rows span three statistics chunks
# multiples of 16 channels take the register-accumulator sums: an odd row count in each chunk, a partial last one
BLOCK_SHAPES = [(515, 16), (37, 32), (3, 64)]


def _inputs(rows, channels, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, channels)) * 3 + 1).astype(dtype)
    weight = rng.standard_normal(channels).astype(dtype)
    bias = rng.standard_normal(channels).astype(dtype)
    grad_y = rng.standard_normal((rows, channels)).astype(dtype)
    return x, weight, bias, grad_y


# no activation, ReLU, ReLU6 and a Hardtanh whose bounds are not exact in float32
CLAMPS = [fused.NO_CLAMP, fused.RELU, (0.0, 6.0), (-1.0, 0.1)]


def _fused_forward(x, weight, bias, clamp, eps=1e-5):
    rows, channels = x.shape
    partials = np.full((2, fused.chunk_count(rows), channels), np.nan)  # read only where written first
    stats = np.empty((3, channels))
    out = np.empty_like(x)
    fused.batch_norm_statistics(x, eps, partials, stats[0], stats[1], stats[2])
    fused.batch_norm_act_forward(x, stats[0], stats[2], weight, bias, clamp, np.empty((3, channels), x.dtype), out)
    return out, stats


def _fused_backward(grad_y, x, stats, weight, bias, clamp):
    rows, channels = x.shape
    chunks = fused.chunk_count(rows)
    grad_x, grad_weight, grad_bias = np.empty_like(x), np.empty(channels, x.dtype), np.empty(channels, x.dtype)
    fused.batch_norm_act_backward(grad_y, x, stats[0], stats[2], weight, bias, clamp, np.full((chunks, channels), 7.0),
                                  np.full((chunks, channels), 7.0), np.empty((2, channels)),
                                  np.full((7, channels), 7, x.dtype), grad_x, grad_weight, grad_bias)
    return grad_x, grad_weight, grad_bias


def _fused_add_act_backward(grad_y, y, x, stats, weight, clamp=fused.RELU):
    rows, channels = x.shape
    chunks = fused.chunk_count(rows)
    grad_shortcut, grad_x = np.full_like(x, 7), np.full_like(x, 7)
    grad_weight, grad_bias = np.empty(channels, x.dtype), np.empty(channels, x.dtype)
    fused.batch_norm_add_act_backward(grad_y, y, x, stats[0], stats[2], weight, clamp,
                                      np.full((chunks, channels), 7.0), np.full((chunks, channels), 7.0),
                                      np.empty((2, channels)), np.full((7, channels), 7, x.dtype), grad_shortcut,
                                      grad_x, grad_weight, grad_bias)
    return grad_shortcut, grad_x, grad_weight, grad_bias


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES + BLOCK_SHAPES)
@pytest.mark.parametrize("clamp", CLAMPS)
@pytest.mark.parametrize("threads", ["parallel", "serial"])
def test_batch_norm_act_matches_reference(shape, dtype, clamp, threads, monkeypatch):
    # these shapes are all short enough for the serial normalizing pass: force the parallel one too
    monkeypatch.setattr(fused, "NORMALIZE_SERIAL_ELEMENTS", 0 if threads == "parallel" else 1 << 30)
    x, weight, bias, grad_y = _inputs(*shape, dtype)
    if shape[0] == 1:
        x = np.concatenate([x, x + 1])  # training batch norm needs two rows
        grad_y = np.concatenate([grad_y, -grad_y])
    y, stats = _fused_forward(x, weight, bias, clamp)
    mean, variance, invstd = reference.batch_norm_statistics(x, 1e-5)
    np.testing.assert_allclose(stats, np.stack([mean, variance, invstd]), rtol=1e-12)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    expected_y = reference.batch_norm_act_forward(x, mean, invstd, weight, bias, clamp)
    np.testing.assert_allclose(y, expected_y, rtol=rtol, atol=rtol)
    got = _fused_backward(grad_y, x, stats, weight, bias, clamp)
    expected = reference.batch_norm_act_backward(grad_y, x, mean, invstd, weight, bias, clamp)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=20 * rtol, atol=20 * rtol)


def _unfused_activation(values, clamp):
    """The elementwise kernel an unfused graph runs for `clamp`: relu, hardtanh or none."""
    out = values.copy()
    if clamp == fused.RELU:
        elementwise.relu_forward(values.reshape(-1), out.reshape(-1))
    elif clamp != fused.NO_CLAMP:
        lower, upper = (values.dtype.type(bound) for bound in clamp)
        elementwise.hardtanh_forward(values.reshape(-1), lower, upper, out.reshape(-1))
    return out


def _unfused_activation_backward(grad_y, y, clamp):
    grad = grad_y.copy()
    if clamp == fused.RELU:
        elementwise.relu_backward(grad_y.reshape(-1), y.reshape(-1), grad.reshape(-1))
    elif clamp != fused.NO_CLAMP:
        lower, upper = (y.dtype.type(bound) for bound in clamp)
        elementwise.hardtanh_backward(grad_y.reshape(-1), y.reshape(-1), lower, upper, grad.reshape(-1))
    return grad


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES[1:] + BLOCK_SHAPES)
@pytest.mark.parametrize("clamp", CLAMPS[1:])
def test_batch_norm_clamp_fusion_equals_unfused_kernels(shape, dtype, clamp):
    """Fused batch norm + ReLU (or ReLU6, Hardtanh) gives the numbers of kernels/norm.py followed by the
    elementwise activation kernels."""
    x, weight, bias, grad_y = _inputs(*shape, dtype)
    y, stats = _fused_forward(x, weight, bias, clamp)
    normalized, mean, variance, invstd = norm.batch_norm_forward_train(x, weight, bias, 1e-5)
    unfused_y = _unfused_activation(normalized, clamp)
    np.testing.assert_array_equal(y, unfused_y)
    np.testing.assert_array_equal(stats, np.stack([mean, variance, invstd]))
    masked = _unfused_activation_backward(grad_y, unfused_y, clamp)
    unfused = norm.batch_norm_backward_train(masked, x, mean, invstd, weight)
    got = _fused_backward(grad_y, x, stats, weight, bias, clamp)
    tolerance = 1e-6 if dtype == np.float32 else 1e-13
    for g, e in zip(got, unfused):
        np.testing.assert_allclose(g, e.astype(dtype), rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_relu_backward_bias_grad_equals_unfused(shape, dtype):
    _, _, _, grad_y = _inputs(*shape, dtype)
    y = np.maximum(_inputs(*shape, dtype, seed=1)[0], 0)
    grad_x, grad_bias = np.empty_like(grad_y), np.empty(shape[1], dtype)
    fused.relu_backward_bias_grad(grad_y, y, grad_x, np.empty((fused.chunk_count(shape[0]), shape[1])), grad_bias)
    expected_x, expected_bias = reference.relu_backward_bias_grad(grad_y, y)
    unfused_x = np.empty_like(grad_y)
    elementwise.relu_backward(grad_y.reshape(-1), y.reshape(-1), unfused_x.reshape(-1))
    np.testing.assert_array_equal(grad_x, unfused_x)
    np.testing.assert_array_equal(grad_x, expected_x)
    np.testing.assert_allclose(grad_bias, expected_bias, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


@pytest.mark.parametrize("channels", [6, 32])
def test_fused_reductions_identical_for_any_thread_count(channels):
    x, weight, bias, grad_y = _inputs(1500, channels, np.float32)
    results = []
    previous = cn.get_num_threads()
    try:
        for threads in (1, 2):
            cn.set_num_threads(threads)
            y, stats = _fused_forward(x, weight, bias, clamp=fused.RELU)
            grads = _fused_backward(grad_y, x, stats, weight, bias, clamp=fused.RELU)
            add_relu_grads = _fused_add_act_backward(grad_y, y, x, stats, weight)
            grad_x, grad_bias = np.empty_like(grad_y), np.empty(channels, np.float32)
            fused.relu_backward_bias_grad(grad_y, y, grad_x, np.empty((fused.chunk_count(1500), channels)), grad_bias)
            results.append((y, stats, *grads, *add_relu_grads, grad_bias))
    finally:
        cn.set_num_threads(previous)
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES[1:] + BLOCK_SHAPES)
@pytest.mark.parametrize("clamp", CLAMPS[:3])
@pytest.mark.parametrize("threads", ["parallel", "serial"])
def test_batch_norm_add_act_equals_reference_and_unfused_kernels(shape, dtype, clamp, threads, monkeypatch):
    """Batch norm + shortcut add (+ ReLU or ReLU6) in one pass gives the bits of batch norm, np.add and the
    activation kernel, in the parallel and the serial normalizing pass."""
    monkeypatch.setattr(fused, "NORMALIZE_SERIAL_ELEMENTS", 0 if threads == "parallel" else 1 << 30)
    x, weight, bias, _ = _inputs(*shape, dtype)
    shortcut = _inputs(*shape, dtype, seed=2)[0] - 1
    shortcut[0, 0] = np.nan  # NaN survives the activation, as in PyTorch
    rows, channels = shape
    partials, stats = np.empty((2, fused.chunk_count(rows), channels)), np.empty((3, channels))
    fused.batch_norm_statistics(x, 1e-5, partials, stats[0], stats[1], stats[2])
    out = np.empty_like(x)
    fused.batch_norm_add_act_forward(x, shortcut, stats[0], stats[2], weight, bias, clamp,
                                     np.empty((3, channels), dtype), out)
    normalized = norm.batch_norm_forward_train(x, weight, bias, 1e-5)[0]
    unfused = _unfused_activation(np.add(normalized, shortcut), clamp)
    np.testing.assert_array_equal(out, unfused)
    assert np.isnan(out[0, 0]) and (np.nan_to_num(out) >= (-np.inf if clamp == fused.NO_CLAMP else 0)).all()
    expected = reference.batch_norm_add_act_forward(x, shortcut, stats[0], stats[2], weight, bias, clamp)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 37, elementwise.CHUNK + 5, 3 * elementwise.CHUNK])  # serial and chunked
def test_add_relu_equals_reference_and_unfused(size, dtype):
    rng = np.random.default_rng(size)
    a, b = rng.standard_normal(size).astype(dtype), rng.standard_normal(size).astype(dtype)
    a[-1] = np.nan
    out = np.empty_like(a)
    fused.add_relu_forward(a, b, out)
    unfused = np.empty_like(a)
    elementwise.relu_forward(a + b, unfused)
    np.testing.assert_array_equal(out, unfused)
    np.testing.assert_array_equal(out, reference.add_relu_forward(a, b))
    assert np.isnan(out[-1])
    in_place = a.copy()
    fused.add_relu_forward(in_place, b, in_place)  # out may alias an input
    np.testing.assert_array_equal(in_place, unfused)


# few channels (column sums) and >= 16 channels (row sums), chunk remainders of 1-3 rows and a partial last chunk
RELU_BIAS_SHAPES = [(1, 1), (5, 6), (515, 6), (258, 15), (300, 16), (700, 33)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", RELU_BIAS_SHAPES)
@pytest.mark.parametrize("variant", ["_relu_backward_bias_grad_serial", "_relu_backward_bias_grad_parallel"])
def test_relu_backward_bias_grad_variants_match_reference(variant, shape, dtype):
    grad_y = _inputs(*shape, dtype)[3]
    y = np.maximum(_inputs(*shape, dtype, seed=1)[0], 0)
    y[0, 0] = np.nan  # NaN > 0 is False: masked, as in the reference
    grad_x, grad_bias = np.full_like(grad_y, 7), np.empty(shape[1], dtype)
    getattr(fused, variant)(grad_y, y, grad_x, np.full((fused.chunk_count(shape[0]), shape[1]), 7.0), grad_bias)
    expected_x, expected_bias = reference.relu_backward_bias_grad(grad_y, y)
    np.testing.assert_array_equal(grad_x, expected_x)
    np.testing.assert_allclose(grad_bias, expected_bias, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


@pytest.mark.parametrize("shape", [(1000, 6), (1000, 20)])
def test_relu_backward_bias_grad_same_bits_serial_parallel_and_any_thread_count(shape):
    grad_y = _inputs(*shape, np.float32)[3]
    y = np.maximum(_inputs(*shape, np.float32, seed=1)[0], 0)
    results = []
    previous = cn.get_num_threads()
    try:
        for threads in (1, 2):
            cn.set_num_threads(threads)
            for variant in (fused._relu_backward_bias_grad_serial, fused._relu_backward_bias_grad_parallel):
                grad_x, grad_bias = np.empty_like(grad_y), np.empty(shape[1], np.float32)
                variant(grad_y, y, grad_x, np.empty((fused.chunk_count(shape[0]), shape[1])), grad_bias)
                results.append((grad_x, grad_bias))
    finally:
        cn.set_num_threads(previous)
    for grad_x, grad_bias in results[1:]:
        np.testing.assert_array_equal(grad_x, results[0][0])
        np.testing.assert_array_equal(grad_bias, results[0][1])


def _mask_edge_inputs(dtype, channels, bound=0.0):
    """x whose pre-activation is exactly `bound` in many places (channel 0: x in {1, 2, 3}, mean exactly 2, bias
    bound), within a tiny step of it on either side (channel 1), and NaN (channel 2: one NaN makes the whole
    channel NaN)."""
    rows = 3 * 300  # several statistics chunks, and a multiple of 3 so channel 0's mean is exactly 2
    x, weight, bias, grad_y = _inputs(rows, channels, dtype, seed=5)
    x[:, 0] = np.tile(np.array([1, 2, 3], dtype), rows // 3)
    bias[:2] = bound
    x[:, 1] = np.tile(np.array([-1, 1], dtype), rows // 2) * np.finfo(dtype).tiny
    x[rows // 2, 2] = np.nan
    return x, weight, bias, grad_y


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channels", [4, 16])
@pytest.mark.parametrize("clamp, bound", [(fused.RELU, 0.0), ((0.0, 6.0), 0.0), ((0.0, 6.0), 6.0),
                                          ((-1.0, 0.1), -1.0), ((-1.0, 0.1), 0.1)])
def test_backward_recomputes_the_forwards_mask_bit_for_bit(dtype, channels, clamp, bound):
    """The clamp's mask recomputed from x is the forward's lower < y < upper exactly: the fused backward equals
    batch norm's backward without activation on grad_y masked by the forward's output, bit for bit, where y is
    exactly at a bound and NaN."""
    x, weight, bias, grad_y = _mask_edge_inputs(dtype, channels, bound)
    y, stats = _fused_forward(x, weight, bias, clamp)
    at_bound = dtype(bound)
    assert (y[:, 0] == at_bound).sum() >= x.shape[0] // 3 and np.isnan(y[:, 2]).all()
    lower, upper = (dtype(b) for b in clamp)
    masked = np.where((y > lower) & (y < upper), grad_y, 0).astype(dtype)
    got = _fused_backward(grad_y, x, stats, weight, bias, clamp)
    expected = _fused_backward(masked, x, stats, weight, bias, clamp=fused.NO_CLAMP)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)
    reference_grads = reference.batch_norm_act_backward(grad_y, x, stats[0], stats[2], weight, bias, clamp)
    for g, e in zip(got, reference_grads):
        finite = np.isfinite(e)
        np.testing.assert_array_equal(np.isfinite(g), finite)
        np.testing.assert_allclose(g[finite], e[finite], rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES[1:] + BLOCK_SHAPES)
@pytest.mark.parametrize("clamp", CLAMPS[:3])
def test_batch_norm_add_act_backward_equals_unfused_kernels_and_reference(shape, dtype, clamp):
    """The shortcut's gradient is the activation backward kernel's output and the rest is batch norm's backward
    without activation given it, bit for bit."""
    x, weight, bias, grad_y = _inputs(*shape, dtype)
    shortcut = _inputs(*shape, dtype, seed=2)[0] - 1
    rows, channels = shape
    stats = np.empty((3, channels))
    fused.batch_norm_statistics(x, 1e-5, np.empty((2, fused.chunk_count(rows), channels)), *stats)
    y = np.empty_like(x)
    fused.batch_norm_add_act_forward(x, shortcut, stats[0], stats[2], weight, bias, clamp,
                                     np.empty((3, channels), dtype), y)
    y[0, 0] = np.nan  # masked by an activation, as NaN > 0 is False
    if clamp != fused.NO_CLAMP:
        y[-1, -1] = clamp[1] if clamp[1] < np.inf else 0  # exactly at a bound: masked
    got = _fused_add_act_backward(grad_y, y, x, stats, weight, clamp)
    masked = _unfused_activation_backward(grad_y, y, clamp)
    unfused = (masked,) + _fused_backward(masked, x, stats, weight, bias, clamp=fused.NO_CLAMP)
    for g, e in zip(got, unfused):
        np.testing.assert_array_equal(g, e)
    assert (got[0][0, 0] == 0) == (clamp != fused.NO_CLAMP)
    expected = reference.batch_norm_add_act_backward(grad_y, y, x, stats[0], stats[2], weight, clamp)
    rtol = 1e-4 if dtype == np.float32 else 1e-12
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dtype, offset, spread", [(np.float32, 1e4, 1e-2), (np.float64, 1e8, 1.0)])
@pytest.mark.parametrize("channels", [3, 16])
def test_one_pass_statistics_are_as_accurate_as_two_passes_with_a_large_mean(dtype, offset, spread, channels):
    # A sum of squares minus the squared sum would lose every digit of these variances (offset^2 / variance is
    # 1e12-1e16); the chunks' deviations from their own means and Chan's combination lose none.
    rng = np.random.default_rng(0)
    rows = 5 * 256 + 17  # a short last chunk
    x = (offset + spread * rng.standard_normal((rows, channels))).astype(dtype)
    partials, stats = np.empty((2, fused.chunk_count(rows), channels)), np.empty((3, channels))
    fused.batch_norm_statistics(x, 0.0, partials, *stats)
    mean, variance, _ = reference.batch_norm_statistics(x, 0.0)
    np.testing.assert_allclose(stats[0], mean, rtol=1e-13)
    np.testing.assert_allclose(stats[1], variance, rtol=1e-9)
    assert (variance > 0).all()  # the data kept a spread after rounding to its dtype
