"""Pool kernels (NHWC) against their NumPy twins in cnnnumba/reference."""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import shapes
from cnnnumba.kernels import pool2d
from cnnnumba import reference

# (N, H, W, C), kernel, stride, padding, dilation, ceil_mode
WINDOW_CASES = [
    ((2, 6, 6, 3), (2, 2), (2, 2), (0, 0), (1, 1), False),
    ((1, 7, 5, 4), (3, 3), (2, 2), (1, 1), (1, 1), False),
    ((2, 7, 5, 4), (3, 3), (2, 2), (1, 1), (1, 1), True),
    ((1, 5, 5, 2), (2, 2), (3, 3), (0, 0), (1, 1), False),   # stride > kernel
    ((1, 5, 5, 2), (2, 2), (3, 3), (1, 1), (1, 1), True),    # stride > kernel, ceil clips the last window
    ((2, 8, 9, 3), (3, 2), (1, 2), (1, 1), (2, 1), False),   # non-square, dilation
    ((1, 9, 9, 1), (3, 3), (2, 3), (1, 0), (2, 3), True),
    ((3, 1, 4, 5), (1, 3), (1, 1), (0, 1), (1, 1), False),   # a single row
    ((1, 1, 1, 2), (2, 2), (1, 1), (1, 1), (2, 2), False),   # dilation steps over the whole input
    ((0, 4, 4, 2), (2, 2), (2, 2), (0, 0), (1, 1), False),   # empty batch
    ((2, 7, 9, 5), (2, 3), (2, 3), (0, 0), (1, 1), False),   # windows tile the input, leftover row and columns
    ((2, 7, 5, 3), (2, 2), (2, 2), (0, 0), (1, 1), True),    # windows tile the input, ceil: clipped last windows
    ((2, 9, 7, 6), (2, 2), (2, 2), (0, 0), (1, 1), False),   # few channels, 2x2: leftover row and column
    ((1, 8, 9, 5), (3, 3), (2, 2), (0, 0), (1, 1), False),   # few channels, overlapping windows inside x
    ((2, 5, 8, 7), (2, 2), (1, 2), (0, 0), (1, 1), False),   # few channels, 2x2 overlapping along the height
    ((1, 6, 6, 20), (2, 2), (2, 2), (0, 0), (1, 1), False),  # 2x2: one full 16-channel vector and 4 lanes
    ((2, 6, 8, 16), (2, 2), (2, 2), (0, 0), (1, 1), False),  # 2x2: exactly one 16-channel vector
    ((2, 9, 9, 33), (2, 2), (2, 2), (0, 0), (1, 1), False),  # 2x2: two vectors and one lane, leftover row/column
    ((1, 7, 7, 17), (2, 2), (1, 1), (0, 0), (1, 1), False),  # 2x2 overlapping windows, 17 channels
    ((2, 4, 6, 5), (2, 2), (2, 2), (1, 1), (1, 1), False),   # 2x2 with padding: the general loop
    ((1, 5, 5, 3), (2, 2), (2, 2), (0, 0), (2, 2), False),   # 2x2 with dilation: the general loop
    ((1, 3, 3, 4), (2, 2), (2, 2), (0, 0), (1, 1), True),    # 2x2, ceil_mode clips the last windows: general
]


def _output_shape(shape, kernel, stride, padding, dilation, ceil_mode):
    out_h = shapes.pool_output_size(shape[1], kernel[0], stride[0], padding[0], dilation[0], ceil_mode)
    out_w = shapes.pool_output_size(shape[2], kernel[1], stride[1], padding[1], dilation[1], ceil_mode)
    return (shape[0], out_h, out_w, shape[3])


def _max_pool(module, x, grad_out_seed, kernel, stride, padding, dilation, ceil_mode):
    out_shape = _output_shape(x.shape, kernel, stride, padding, dilation, ceil_mode)
    out = np.empty(out_shape, dtype=x.dtype)
    indices = np.empty(out_shape, dtype=np.int64)
    args = (*kernel, *stride, *padding, *dilation)
    module.max_pool2d_forward(x, out, indices, *args)
    grad_out = np.random.default_rng(grad_out_seed).standard_normal(out_shape).astype(x.dtype)
    grad_in = np.empty_like(x)
    module.max_pool2d_backward(grad_out, indices, grad_in, *args)
    return out, indices, grad_in


@pytest.mark.parametrize("serial_elements", [1 << 62, -1], ids=["serial", "parallel"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, kernel, stride, padding, dilation, ceil_mode", WINDOW_CASES)
def test_max_pool2d_matches_reference(shape, kernel, stride, padding, dilation, ceil_mode, dtype, serial_elements,
                                      monkeypatch):
    monkeypatch.setattr(pool2d, "SERIAL_ELEMENTS", serial_elements)  # both sides of the size threshold
    x = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    got = _max_pool(pool2d, x, 2, kernel, stride, padding, dilation, ceil_mode)
    expected = _max_pool(reference, x, 2, kernel, stride, padding, dilation, ceil_mode)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


def test_max_pool2d_nan_wins_and_last_nan_gives_the_index():
    x = np.array([1.0, np.nan, 5.0, np.nan, 2.0, -np.inf], dtype=np.float32).reshape(1, 1, 6, 1)
    x = np.concatenate([x, -x], axis=3)  # a second channel with other values around the same NaNs
    got = _max_pool(pool2d, x, 0, (1, 6), (1, 1), (0, 0), (1, 1), False)
    expected = _max_pool(reference, x, 0, (1, 6), (1, 1), (0, 0), (1, 1), False)
    assert np.isnan(got[0]).all()
    np.testing.assert_array_equal(got[1].ravel(), [3, 3])
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


def test_max_pool2d_2x2_few_channels_nan_wins_and_last_nan_gives_the_index():
    x = np.array([[1.0, np.nan], [np.nan, 7.0]], dtype=np.float32).reshape(1, 2, 2, 1)
    x = np.concatenate([x, -x, np.full_like(x, -np.inf)], axis=3)
    got = _max_pool(pool2d, x, 0, (2, 2), (2, 2), (0, 0), (1, 1), False)
    expected = _max_pool(reference, x, 0, (2, 2), (2, 2), (0, 0), (1, 1), False)
    assert np.isnan(got[0][..., :2]).all() and got[0][..., 2] == -np.inf
    np.testing.assert_array_equal(got[1].ravel(), [2, 2, 0])
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("channels", [6, 16, 19])
def test_max_pool2d_2x2_nan_inf_and_ties_follow_the_scan_order(channels):
    # every pattern of NaN, +-inf, ties and ordinary values over the four taps, one window per pattern and channel
    values = np.array([np.nan, np.inf, -np.inf, 1.0, 1.0, 0.0, -2.0], dtype=np.float32)
    patterns = np.stack(np.meshgrid(*[np.arange(values.size)] * 4, indexing="ij"), -1).reshape(-1, 4)
    count = patterns.shape[0]
    shifted = (np.arange(count) + 37 * np.arange(channels)[:, None]) % count  # another pattern per channel
    windows = values[patterns[shifted]].reshape(channels, count, 2, 2)
    x = windows.reshape(channels, 1, count, 2, 2).transpose(1, 3, 2, 4, 0).reshape(1, 2, 2 * count, channels)
    got = _max_pool(pool2d, x, 0, (2, 2), (2, 2), (0, 0), (1, 1), False)
    expected = _max_pool(reference, x, 0, (2, 2), (2, 2), (0, 0), (1, 1), False)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("serial_elements", [1 << 62, -1], ids=["serial", "parallel"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, kernel, stride, padding, dilation, ceil_mode", WINDOW_CASES)
def test_max_pool2d_values_alone_match_the_indexed_pass(shape, kernel, stride, padding, dilation, ceil_mode, dtype,
                                                       serial_elements, monkeypatch):
    """indices=None (a forward no backward follows) gives the same values, NaN and ties included, wherever
    max_pool2d_values_only allows it, and a clear error elsewhere."""
    monkeypatch.setattr(pool2d, "SERIAL_ELEMENTS", serial_elements)
    x = np.random.default_rng(3).standard_normal(shape).astype(dtype)
    x.reshape(-1)[::5] = np.nan
    x.reshape(-1)[1::7] = np.inf
    out_shape = _output_shape(shape, kernel, stride, padding, dilation, ceil_mode)
    window = (*kernel, *stride, *padding, *dilation)
    expected = _max_pool(pool2d, x, 0, kernel, stride, padding, dilation, ceil_mode)[0]
    got = np.full(out_shape, -7.0, dtype=dtype)
    if pool2d.max_pool2d_values_only(shape, out_shape, *window):
        pool2d.max_pool2d_forward(x, got, None, *window)
        np.testing.assert_array_equal(got, expected)
    else:
        assert kernel != (2, 2) or padding != (0, 0) or dilation != (1, 1) or ceil_mode
        with pytest.raises(ValueError, match="indices=None needs a 2x2 window inside x"):
            pool2d.max_pool2d_forward(x, got, None, *window)


def test_max_pool2d_values_alone_need_contiguous_arrays():
    x = np.random.default_rng(4).standard_normal((2, 8, 8, 12)).astype(np.float32)[..., ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        pool2d.max_pool2d_forward(x, np.empty((2, 4, 4, 6), np.float32), None, 2, 2, 2, 2, 0, 0, 1, 1)


@pytest.mark.parametrize("channels", [6, 16])
def test_max_pool2d_2x2_takes_the_vector_path_for_lenet_sized_layers(channels, monkeypatch):
    def general(*args):
        raise AssertionError("the general loop ran")

    for name in ("_max_pool2d_forward_general", "_max_pool2d_backward_general", "_max_pool2d_backward_tiled",
                 "_max_pool2d_forward_few"):
        monkeypatch.setattr(pool2d, name, general)
    x = np.random.default_rng(5).standard_normal((3, 10, 10, channels)).astype(np.float32)
    got = _max_pool(pool2d, x, 6, (2, 2), (2, 2), (0, 0), (1, 1), False)
    expected = _max_pool(reference, x, 6, (2, 2), (2, 2), (0, 0), (1, 1), False)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


def test_max_pool2d_2x2_on_strided_views_takes_the_general_loop():
    base = np.random.default_rng(7).standard_normal((2, 8, 8, 12)).astype(np.float32)
    x = base[..., ::2]  # not C-contiguous: the flat-offset vector path must not run on it
    got = _max_pool(pool2d, x, 1, (2, 2), (2, 2), (0, 0), (1, 1), False)
    expected = _max_pool(reference, np.ascontiguousarray(x), 1, (2, 2), (2, 2), (0, 0), (1, 1), False)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


def test_max_pool2d_all_negative_infinity_window_keeps_the_first_index():
    x = np.full((1, 2, 2, 1), -np.inf)
    out, indices, _ = _max_pool(pool2d, x, 0, (2, 2), (2, 2), (0, 0), (1, 1), False)
    assert out.ravel()[0] == -np.inf and indices.ravel()[0] == 0


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("divisor_override", [0, 3])
@pytest.mark.parametrize("shape, kernel, stride, padding, dilation, ceil_mode",
                         [case for case in WINDOW_CASES if case[4] == (1, 1)])
def test_avg_pool2d_matches_reference(shape, kernel, stride, padding, dilation, ceil_mode, count_include_pad,
                                      divisor_override):
    x = np.random.default_rng(1).standard_normal(shape)
    out_shape = _output_shape(shape, kernel, stride, padding, dilation, ceil_mode)
    grad_out = np.random.default_rng(2).standard_normal(out_shape)
    args = (*kernel, *stride, *padding, count_include_pad, divisor_override)
    results = []
    for module in (pool2d, reference):
        out, grad_in = np.empty(out_shape), np.empty(shape)
        module.avg_pool2d_forward(x, out, *args)
        module.avg_pool2d_backward(grad_out, grad_in, *args)
        results.append((out, grad_in))
    for g, e in zip(*results):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, out_hw", [
    ((2, 5, 7, 3), (3, 4)),
    ((1, 4, 4, 2), (1, 1)),     # global average pooling
    ((1, 3, 5, 1), (5, 7)),     # output larger than input: windows overlap and repeat
    ((2, 6, 6, 4), (6, 6)),     # identity
    ((1, 10, 3, 2), (4, 2)),
])
def test_adaptive_avg_pool2d_matches_reference(shape, out_hw, dtype):
    x = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    out_shape = (shape[0], *out_hw, shape[3])
    grad_out = np.random.default_rng(2).standard_normal(out_shape).astype(dtype)
    results = []
    for module in (pool2d, reference):
        out, grad_in = np.empty(out_shape, dtype=dtype), np.empty(shape, dtype=dtype)
        module.adaptive_avg_pool2d_forward(x, out)
        module.adaptive_avg_pool2d_backward(grad_out, grad_in)
        results.append((out, grad_in))
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for g, e in zip(*results):
        np.testing.assert_allclose(g, e, rtol=rtol, atol=rtol)


def test_pool_kernels_give_identical_results_on_one_and_two_threads():
    x = np.random.default_rng(3).standard_normal((4, 9, 8, 5)).astype(np.float32)
    previous = cn.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            cn.set_num_threads(threads)
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(pool2d, "SERIAL_ELEMENTS", -1)  # the parallel 2x2 kernels, split over the threads
                max_2x2 = _max_pool(pool2d, x, 4, (2, 2), (2, 2), (0, 0), (1, 1), False)
            max_out = _max_pool(pool2d, x, 4, (3, 3), (2, 2), (1, 1), (1, 1), True) + max_2x2
            avg_out, avg_grad = np.empty((4, 5, 4, 5), np.float32), np.empty_like(x)
            pool2d.avg_pool2d_forward(x, avg_out, 3, 3, 2, 2, 1, 1, True, 0)
            pool2d.avg_pool2d_backward(avg_out, avg_grad, 3, 3, 2, 2, 1, 1, True, 0)
            ada_out, ada_grad = np.empty((4, 3, 5, 5), np.float32), np.empty_like(x)
            pool2d.adaptive_avg_pool2d_forward(x, ada_out)
            pool2d.adaptive_avg_pool2d_backward(ada_out, ada_grad)
            results.append((*max_out, avg_out, avg_grad, ada_out, ada_grad))
    finally:
        cn.set_num_threads(previous)
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)
