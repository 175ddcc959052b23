"""nn.init distributions, default layer initialisation bounds, reproducibility with manual_seed, and
nn.utils.clip_grad_norm_ / clip_grad_value_ against PyTorch."""
import math

import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import nn
from tests.helpers import requires_torch, torch


@pytest.mark.parametrize("make,fan_in", [
    (lambda: nn.Conv2d(8, 16, 3), 8 * 9),
    (lambda: nn.Conv2d(8, 16, (1, 5), groups=4), 2 * 5),
    (lambda: nn.Linear(300, 40), 300),
])
def test_default_init_is_kaiming_uniform_with_bias_bounds(make, fan_in):
    layer = make()
    bound = 1 / math.sqrt(fan_in)
    weight, bias = layer.weight.data, layer.bias.data
    assert weight.dtype == np.float32
    assert np.abs(weight).max() <= bound * (1 + 1e-6) and np.abs(bias).max() <= bound * (1 + 1e-6)
    # uniform on [-b, b]: mean 0, standard deviation b / sqrt(3)
    assert abs(weight.mean()) < 0.1 * bound
    assert abs(weight.std() - bound / math.sqrt(3)) < 0.1 * bound
    assert np.abs(weight).max() > 0.9 * bound


def test_manual_seed_makes_initialisation_reproducible():
    cn.manual_seed(3)
    first = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(4, 2)).state_dict()
    cn.manual_seed(3)
    second = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(4, 2)).state_dict()
    cn.manual_seed(4)
    third = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(4, 2)).state_dict()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    assert not np.array_equal(first["0.weight"], third["0.weight"])


def test_layer_dtype_argument():
    assert nn.Conv2d(2, 2, 1, dtype=np.float64).weight.dtype == np.float64
    assert nn.BatchNorm2d(2, dtype="float64").running_mean.dtype == np.float64


@pytest.mark.parametrize("fill,std", [
    (lambda t: nn.init.kaiming_normal_(t), math.sqrt(2 / 500)),
    (lambda t: nn.init.kaiming_normal_(t, mode="fan_out", nonlinearity="relu"), math.sqrt(2 / 200)),
    (lambda t: nn.init.kaiming_uniform_(t, a=0.1), math.sqrt(2 / (1 + 0.01)) / math.sqrt(500)),
    (lambda t: nn.init.xavier_uniform_(t, gain=2.0), 2.0 * math.sqrt(2 / 700)),
    (lambda t: nn.init.xavier_normal_(t), math.sqrt(2 / 700)),
])
def test_init_standard_deviations(fill, std):
    tensor = cn.Tensor(np.zeros((20, 50, 10), dtype=np.float64))  # fan_in 50 * 10 = 500, fan_out 20 * 10 = 200
    assert fill(tensor) is tensor
    assert abs(tensor.data.std() - std) < 0.05 * std
    assert abs(tensor.data.mean()) < 0.1 * std


def test_init_uniform_bounds_and_constants():
    array = np.zeros((30, 40))
    nn.init.xavier_uniform_(array)
    bound = math.sqrt(6 / 70)
    assert np.abs(array).max() <= bound and np.abs(array).max() > 0.9 * bound
    np.testing.assert_array_equal(nn.init.ones_(np.zeros(3)), 1)
    np.testing.assert_array_equal(nn.init.zeros_(cn.Tensor(np.ones(3))).data, 0)
    np.testing.assert_array_equal(nn.init.constant_(np.zeros(2), 0.5), 0.5)
    first = nn.init.uniform_(np.zeros(5), generator=np.random.default_rng(1))
    np.testing.assert_array_equal(first, nn.init.uniform_(np.zeros(5), generator=np.random.default_rng(1)))


@pytest.mark.parametrize("call,message", [
    (lambda: nn.init.kaiming_uniform_(np.zeros(3)), "fewer than 2 dimensions"),
    (lambda: nn.init.kaiming_normal_(np.zeros((2, 2)), mode="fan_avg"), "Mode fan_avg not supported"),
    (lambda: nn.init.kaiming_normal_(np.zeros((2, 2)), nonlinearity="swish"), "Unsupported nonlinearity swish"),
    (lambda: nn.init.calculate_gain("leaky_relu", "x"), "negative_slope x not a valid number"),
])
def test_init_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@requires_torch
def test_calculate_gain_matches_torch():
    for name, param in [("linear", None), ("conv2d", None), ("sigmoid", None), ("tanh", None), ("relu", None),
                        ("leaky_relu", None), ("leaky_relu", 0.2), ("selu", None)]:
        assert nn.init.calculate_gain(name, param) == pytest.approx(torch.nn.init.calculate_gain(name, param))


def _grads(dtype, scale=1.0):
    rng = np.random.default_rng(0)
    return [(rng.standard_normal(shape) * scale).astype(dtype) for shape in [(3, 4), (5,), (2, 2, 3)]]


@requires_torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("max_norm,norm_type", [(1.0, 2.0), (100.0, 2.0), (0.5, 1), (2.0, float("inf")),
                                                (0.3, "inf"), (1.0, 3.0)])
def test_clip_grad_norm_matches_torch(dtype, max_norm, norm_type):
    ours, theirs = [], []
    for g in _grads(dtype):
        p = nn.Parameter(np.zeros(g.shape, dtype))
        p.grad = g.copy()
        ours.append(p)
        t = torch.nn.Parameter(torch.zeros(g.shape, dtype=torch.float64 if dtype == np.float64 else torch.float32))
        t.grad = torch.tensor(g.copy())
        theirs.append(t)
    no_grad = nn.Parameter(np.zeros(2, dtype))  # parameters without a gradient are skipped
    total = nn.utils.clip_grad_norm_(ours + [no_grad], max_norm, norm_type)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    tolerance = 1e-12 if dtype == np.float64 else 1e-6
    assert isinstance(total, cn.Tensor) and total.shape == () and total.dtype == dtype
    np.testing.assert_allclose(total.data, expected.numpy(), rtol=tolerance)
    for p, t in zip(ours, theirs):
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=tolerance, atol=tolerance)
    assert no_grad.grad is None


def test_clip_grad_norm_edge_cases():
    assert nn.utils.clip_grad_norm_([nn.Parameter(np.zeros(2))], 1.0).item() == 0.0
    single = nn.Parameter(np.zeros(2))
    single.grad = np.array([3.0, 4.0])
    assert nn.utils.clip_grad_norm_(single, 1.0).item() == 5.0  # a lone Tensor is accepted
    np.testing.assert_allclose(single.grad, [0.6, 0.8], rtol=1e-6)
    single.grad = np.array([np.inf, 1.0])
    with pytest.raises(RuntimeError, match="The total norm of order 2.0 for gradients from `parameters` is non-finite"):
        nn.utils.clip_grad_norm_([single], 1.0, error_if_nonfinite=True)


def test_clip_grad_value_():
    param = nn.Parameter(np.zeros(4))
    param.grad = np.array([-3.0, -0.5, 0.2, 9.0])
    nn.utils.clip_grad_value_([param], 1.0)
    np.testing.assert_array_equal(param.grad, [-1.0, -0.5, 0.2, 1.0])
