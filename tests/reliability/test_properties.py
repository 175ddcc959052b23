"""Property tests: random convolution and pooling configurations through the public ops (Numba kernels, every
fast and general path they choose) against the NumPy twins in cnnnumba/reference/, forward and backward."""
import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cnnnumba as cn
from cnnnumba import functional as F
from cnnnumba import reference

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def _nhwc(array):
    return np.ascontiguousarray(array.transpose(0, 2, 3, 1))


def _nchw(array):
    return np.ascontiguousarray(array.transpose(0, 3, 1, 2))


def _close(actual, expected, dtype, scale=1.0):
    tolerance = dict(rtol=1e-3, atol=1e-3 * scale) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-9 * scale)
    np.testing.assert_allclose(actual, expected, **tolerance)


def _pool_size(size, kernel, stride, pad, dilation, ceil_mode):
    """PyTorch's output-size rule, written out here independently of cnnnumba.shapes."""
    span = (size + 2 * pad - dilation * (kernel - 1) - 1) / stride
    out = (math.ceil(span) if ceil_mode else math.floor(span)) + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@st.composite
def conv_configs(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin = groups * draw(st.sampled_from([1, 2, 3, 8, 16, 32]))
    cout = groups * draw(st.sampled_from([1, 2, 5, 16, 32, 33]))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    reach = [dilation[i] * (kernel[i] - 1) + 1 for i in range(2)]
    height, width = (max(1, reach[i] - 2 * padding[i]) + draw(st.integers(0, 5)) for i in range(2))
    return dict(batch=draw(st.integers(1, 2)), cin=cin, cout=cout, hw=(height, width), kernel=kernel, stride=stride,
                dilation=dilation, padding=padding, groups=groups, bias=draw(st.booleans()),
                dtype=draw(st.sampled_from([np.float32, np.float64])), seed=draw(st.integers(0, 2 ** 16)))


@SETTINGS
@given(conv_configs())
def test_conv2d_matches_the_reference(config):
    dtype, rng = config["dtype"], np.random.default_rng(config["seed"])
    x = rng.standard_normal((config["batch"], config["cin"], *config["hw"])).astype(dtype)
    weight = rng.standard_normal((config["cout"], config["cin"] // config["groups"], *config["kernel"])).astype(dtype)
    bias = rng.standard_normal(config["cout"]).astype(dtype) if config["bias"] else None
    options = dict(stride=config["stride"], padding=config["padding"], dilation=config["dilation"],
                   groups=config["groups"])
    inputs = [cn.Tensor(a, requires_grad=True) for a in (x, weight)]
    inputs.append(cn.Tensor(bias, requires_grad=True) if bias is not None else None)
    out = F.conv2d(*inputs, **options)

    expected_hw = tuple((config["hw"][i] + 2 * config["padding"][i] - config["dilation"][i] *
                         (config["kernel"][i] - 1) - 1) // config["stride"][i] + 1 for i in range(2))
    assert out.shape == (config["batch"], config["cout"], *expected_hw) and out.dtype == dtype
    weight_hwio = np.ascontiguousarray(weight.transpose(2, 3, 1, 0))
    expected = reference.conv2d_forward(_nhwc(x), weight_hwio, bias,
                                        np.empty((config["batch"], *expected_hw, config["cout"]), dtype), **options)
    scale = math.sqrt(weight[0].size)
    _close(out.data, _nchw(expected), dtype, scale)

    grad = rng.standard_normal(out.shape).astype(dtype)
    out.backward(grad)
    grad_x = reference.conv2d_backward_input(_nhwc(grad), weight_hwio, np.empty(_nhwc(x).shape, dtype), **options)
    grad_w = reference.conv2d_backward_weight(_nhwc(x), _nhwc(grad), np.empty(weight_hwio.shape, dtype), **options)
    _close(inputs[0].grad, _nchw(grad_x), dtype, scale)
    _close(inputs[1].grad, grad_w.transpose(3, 2, 0, 1), dtype, math.sqrt(grad.size))
    if bias is not None:
        _close(inputs[2].grad, reference.conv2d_backward_bias(_nhwc(grad), np.empty(config["cout"], dtype)), dtype,
               math.sqrt(grad.size))


@st.composite
def pool_configs(draw, dilations=True):
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if dilations else (1, 1)
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    reach = [dilation[i] * (kernel[i] - 1) + 1 for i in range(2)]
    height, width = (max(1, reach[i] - 2 * padding[i]) + draw(st.integers(0, 6)) for i in range(2))
    return dict(shape=(draw(st.integers(1, 2)), draw(st.integers(1, 5)), height, width), kernel=kernel,
                stride=stride, dilation=dilation, padding=padding, ceil_mode=draw(st.booleans()),
                dtype=draw(st.sampled_from([np.float32, np.float64])), seed=draw(st.integers(0, 2 ** 16)))


def _pool_out_hw(config):
    return tuple(_pool_size(config["shape"][2 + i], config["kernel"][i], config["stride"][i], config["padding"][i],
                            config["dilation"][i], config["ceil_mode"]) for i in range(2))


def _geometry(config):
    return (*config["kernel"], *config["stride"], *config["padding"])


@SETTINGS
@given(pool_configs())
def test_max_pool2d_matches_the_reference(config):
    dtype, rng = config["dtype"], np.random.default_rng(config["seed"])
    x = rng.standard_normal(config["shape"]).astype(dtype)
    if rng.random() < 0.3:
        x[tuple(rng.integers(0, s) for s in x.shape)] = np.nan
    tensor = cn.Tensor(x, requires_grad=True)
    out, indices = F.max_pool2d(tensor, config["kernel"], config["stride"], config["padding"], config["dilation"],
                                config["ceil_mode"], return_indices=True)
    out_shape = (config["shape"][0], *_pool_out_hw(config), config["shape"][1])
    assert out.shape == _nchw(np.empty(out_shape)).shape
    expected, expected_indices = np.empty(out_shape, dtype), np.empty(out_shape, np.int64)
    reference.max_pool2d_forward(_nhwc(x), expected, expected_indices, *_geometry(config), *config["dilation"])
    np.testing.assert_array_equal(out.data, _nchw(expected))  # a max is exact, NaN included
    np.testing.assert_array_equal(np.asarray(getattr(indices, "data", indices)), _nchw(expected_indices))

    grad = rng.standard_normal(out.shape).astype(dtype)
    out.backward(grad)
    grad_in = np.empty(_nhwc(x).shape, dtype)
    reference.max_pool2d_backward(_nhwc(grad), expected_indices, grad_in, *_geometry(config), *config["dilation"])
    _close(tensor.grad, _nchw(grad_in), dtype)


@SETTINGS
@given(pool_configs(dilations=False), st.booleans(), st.sampled_from([None, None, 1, 3]))
def test_avg_pool2d_matches_the_reference(config, count_include_pad, divisor_override):
    dtype, rng = config["dtype"], np.random.default_rng(config["seed"])
    x = rng.standard_normal(config["shape"]).astype(dtype)
    tensor = cn.Tensor(x, requires_grad=True)
    out = F.avg_pool2d(tensor, config["kernel"], config["stride"], config["padding"], config["ceil_mode"],
                       count_include_pad, divisor_override)
    out_shape = (config["shape"][0], *_pool_out_hw(config), config["shape"][1])
    assert out.shape == _nchw(np.empty(out_shape)).shape
    expected = np.empty(out_shape, dtype)
    reference.avg_pool2d_forward(_nhwc(x), expected, *_geometry(config), count_include_pad, divisor_override)
    _close(out.data, _nchw(expected), dtype)

    grad = rng.standard_normal(out.shape).astype(dtype)
    out.backward(grad)
    grad_in = np.empty(_nhwc(x).shape, dtype)
    reference.avg_pool2d_backward(_nhwc(grad), grad_in, *_geometry(config), count_include_pad, divisor_override)
    _close(tensor.grad, _nchw(grad_in), dtype)


@SETTINGS
@given(st.integers(1, 2), st.integers(1, 4), st.integers(1, 9), st.integers(1, 9), st.integers(1, 5),
       st.integers(1, 5), st.sampled_from([np.float32, np.float64]))
def test_adaptive_avg_pool2d_matches_the_reference(batch, channels, height, width, out_h, out_w, dtype):
    x = np.random.default_rng(height * 10 + width).standard_normal((batch, channels, height, width)).astype(dtype)
    tensor = cn.Tensor(x, requires_grad=True)
    out = F.adaptive_avg_pool2d(tensor, (out_h, out_w))
    expected = np.empty((batch, out_h, out_w, channels), dtype)
    reference.adaptive_avg_pool2d_forward(_nhwc(x), expected)
    _close(out.data, _nchw(expected), dtype)
    grad = np.ones(out.shape, dtype)
    out.backward(grad)
    grad_in = np.empty(_nhwc(x).shape, dtype)
    reference.adaptive_avg_pool2d_backward(_nhwc(grad), grad_in)
    _close(tensor.grad, _nchw(grad_in), dtype)
