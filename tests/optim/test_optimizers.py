"""SGD, Adam and AdamW against torch.optim step by step, state_dict round trips, and hyperparameter validation."""
import copy

import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import nn, optim
from cnnnumba.optim.optimizer import PARALLEL_MIN_SIZE
from tests.helpers import requires_torch, torch

SHAPES = [(3, 4), (5,), (2, 3, 2, 2), ()]


def _initial_arrays(dtype, shapes=SHAPES, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for shape in shapes]


def _gradients(arrays, step):
    """A gradient that depends on the current values and the step, identical in both frameworks."""
    rng = np.random.default_rng(100 + step)
    return [np.sin(3 * a) + a * a + rng.standard_normal(a.shape).astype(a.dtype) for a in arrays]


def _run_cn(make_optimizer, arrays, steps, scheduler=None, start=0, optimizer=None, params=None):
    params = params or [nn.Parameter(a.copy()) for a in arrays]
    optimizer = optimizer or make_optimizer(optim, params)
    for step in range(start, start + steps):
        optimizer.zero_grad()
        for p, g in zip(params, _gradients([p.data for p in params], step)):
            p.grad = g
        optimizer.step()
    return params, optimizer


def _run_torch(make_optimizer, arrays, steps):
    params = [torch.nn.Parameter(torch.tensor(a.copy())) for a in arrays]
    optimizer = make_optimizer(torch.optim, params)
    for step in range(steps):
        optimizer.zero_grad()
        for p, g in zip(params, _gradients([p.detach().numpy() for p in params], step)):
            p.grad = torch.tensor(g)
        optimizer.step()
    return params, optimizer


OPTIMIZERS = {
    "sgd": lambda o, p: o.SGD(p, lr=0.1),
    "sgd_momentum": lambda o, p: o.SGD(p, lr=0.05, momentum=0.9),
    "sgd_dampening_decay": lambda o, p: o.SGD(p, lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01),
    "sgd_nesterov": lambda o, p: o.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "sgd_maximize": lambda o, p: o.SGD(p, lr=0.01, momentum=0.5, maximize=True),
    "adam": lambda o, p: o.Adam(p, lr=0.01),
    "adam_decay": lambda o, p: o.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
    "adam_amsgrad": lambda o, p: o.Adam(p, lr=0.02, amsgrad=True),
    "adam_small_beta1": lambda o, p: o.Adam(p, lr=0.02, betas=(0.3, 0.9), maximize=True),
    "adamw": lambda o, p: o.AdamW(p, lr=0.01),
    "adamw_amsgrad": lambda o, p: o.AdamW(p, lr=0.01, weight_decay=0.5, amsgrad=True),
    "param_groups": lambda o, p: o.SGD([{"params": p[:2]}, {"params": p[2:], "lr": 0.01, "momentum": 0.5}],
                                       lr=0.1, momentum=0.9),
}


@requires_torch
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("dtype,tolerance", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_matches_torch_over_several_steps(name, dtype, tolerance):
    arrays = _initial_arrays(dtype)
    cn_params, _ = _run_cn(OPTIMIZERS[name], arrays, steps=6)
    torch_params, _ = _run_torch(OPTIMIZERS[name], arrays, steps=6)
    for c, t in zip(cn_params, torch_params):
        assert c.dtype == dtype
        np.testing.assert_allclose(c.data, t.detach().numpy(), rtol=tolerance, atol=tolerance)


@requires_torch
@pytest.mark.parametrize("name", ["sgd_nesterov", "adamw_amsgrad"])
def test_large_parameters_use_the_parallel_kernel_and_match_torch(name):
    arrays = _initial_arrays(np.float64, shapes=[(PARALLEL_MIN_SIZE + 3,), (4,)])
    cn_params, _ = _run_cn(OPTIMIZERS[name], arrays, steps=3)
    torch_params, _ = _run_torch(OPTIMIZERS[name], arrays, steps=3)
    for c, t in zip(cn_params, torch_params):
        np.testing.assert_allclose(c.data, t.detach().numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_state_dict_round_trip_mid_run_continues_identically(name):
    arrays = _initial_arrays(np.float64)
    straight, _ = _run_cn(OPTIMIZERS[name], arrays, steps=7)
    params, optimizer = _run_cn(OPTIMIZERS[name], arrays, steps=3)
    saved_params = [p.data.copy() for p in params]
    saved_state = copy.deepcopy(optimizer.state_dict())
    _run_cn(OPTIMIZERS[name], arrays, steps=2, start=3, optimizer=optimizer, params=params)  # diverge, then restore
    resumed_params = [nn.Parameter(a) for a in saved_params]
    resumed = OPTIMIZERS[name](optim, resumed_params)
    resumed.load_state_dict(saved_state)
    _run_cn(None, arrays, steps=4, start=3, optimizer=resumed, params=resumed_params)
    for a, b in zip(straight, resumed_params):
        np.testing.assert_array_equal(a.data, b.data)


def test_state_dict_has_pytorch_shape():
    params = [nn.Parameter(a) for a in _initial_arrays(np.float64)]
    optimizer = optim.Adam([{"params": params[:1]}, {"params": params[1:], "lr": 0.1}], amsgrad=True)
    for p in params:
        p.grad = np.ones_like(p.data)
    optimizer.step()
    state = optimizer.state_dict()
    assert [g["params"] for g in state["param_groups"]] == [[0], [1, 2, 3]]
    assert state["param_groups"][1]["lr"] == 0.1 and state["param_groups"][0]["betas"] == (0.9, 0.999)
    assert sorted(state["state"]) == [0, 1, 2, 3]
    assert sorted(state["state"][2]) == ["exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"]
    assert state["state"][2]["step"] == 1 and state["state"][2]["exp_avg"].shape == params[2].shape


@requires_torch
@pytest.mark.parametrize("name", ["sgd_momentum", "adam_amsgrad", "adamw"])
def test_loads_a_torch_optimizer_state_and_continues_like_torch(name):
    arrays = _initial_arrays(np.float64)
    torch_params, torch_optimizer = _run_torch(OPTIMIZERS[name], arrays, steps=3)
    torch_state = torch_optimizer.state_dict()
    numpy_state = {
        "state": {k: {n: v.numpy().copy() for n, v in s.items()} for k, s in torch_state["state"].items()},
        "param_groups": copy.deepcopy(torch_state["param_groups"]),
    }
    params = [nn.Parameter(p.detach().numpy().copy()) for p in torch_params]
    optimizer = OPTIMIZERS[name](optim, params)
    optimizer.load_state_dict(numpy_state)
    for step in range(3, 6):
        for p, g in zip(params, _gradients([p.data for p in params], step)):
            p.grad = g
        optimizer.step()
        for p, g in zip(torch_params, _gradients([p.detach().numpy() for p in torch_params], step)):
            p.grad = torch.tensor(g)
        torch_optimizer.step()
    for c, t in zip(params, torch_params):
        np.testing.assert_allclose(c.data, t.detach().numpy(), rtol=1e-12, atol=1e-12)


def test_non_contiguous_parameter_is_updated_in_place():
    base = np.arange(12, dtype=np.float64).reshape(3, 4)
    param = nn.Parameter(base.T)
    param.grad = np.ones((4, 3))
    optim.SGD([param], lr=0.5).step()
    np.testing.assert_array_equal(base, np.arange(12).reshape(3, 4) - 0.5)


def test_parameters_without_gradient_are_left_alone_and_zero_grad():
    a, b = nn.Parameter(np.ones(3)), nn.Parameter(np.ones(2))
    optimizer = optim.SGD([a, b], lr=1.0, momentum=0.9)
    a.grad = np.ones(3)
    optimizer.step()
    np.testing.assert_array_equal(b.data, np.ones(2))
    assert b not in optimizer.state and "momentum_buffer" in optimizer.state[a]
    optimizer.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(a.grad, np.zeros(3))
    optimizer.zero_grad()
    assert a.grad is None


def test_step_calls_the_closure_and_returns_its_loss():
    param = nn.Parameter(np.ones(2))

    def closure():
        param.grad = np.full(2, 2.0)
        return 7.0

    assert optim.SGD([param], lr=0.25).step(closure) == 7.0
    np.testing.assert_array_equal(param.data, [0.5, 0.5])


def _param():
    return [nn.Parameter(np.zeros(2))]


@pytest.mark.parametrize("make,message", [
    (lambda: optim.SGD(_param(), lr=-0.1), "Invalid learning rate: -0.1"),
    (lambda: optim.SGD(_param(), lr=0.1, momentum=-1), "Invalid momentum value: -1"),
    (lambda: optim.SGD(_param(), lr=0.1, weight_decay=-1e-4), "Invalid weight_decay value: -0.0001"),
    (lambda: optim.SGD(_param(), lr=0.1, nesterov=True), "Nesterov momentum requires a momentum and zero dampening"),
    (lambda: optim.SGD(_param(), lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),
     "Nesterov momentum requires a momentum and zero dampening"),
    (lambda: optim.SGD([], lr=0.1), "optimizer got an empty parameter list"),
    (lambda: optim.Adam(_param(), lr=-1e-3), "Invalid learning rate: -0.001"),
    (lambda: optim.Adam(_param(), eps=-1.0), "Invalid epsilon value: -1.0"),
    (lambda: optim.Adam(_param(), betas=(1.0, 0.999)), r"Invalid beta parameter at index 0: 1.0"),
    (lambda: optim.Adam(_param(), betas=(0.9, -0.1)), r"Invalid beta parameter at index 1: -0.1"),
    (lambda: optim.AdamW(_param(), weight_decay=-0.01), "Invalid weight_decay value: -0.01"),
    (lambda: optim.Adam([{"params": _param(), "lr": -2.0}]), "Invalid learning rate: -2.0"),
    (lambda: optim.SGD([{"params": _param()}, {"params": _param()[:0] + _param()}], lr=0.1), None),
])
def test_bad_hyperparameters_raise_value_error(make, message):
    if message is None:
        make()  # two groups of distinct parameters are fine
        return
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_params_argument():
    param = nn.Parameter(np.zeros(2))
    with pytest.raises(TypeError, match="iterable of Tensors or dicts, but got Parameter"):
        optim.SGD(param, lr=0.1)
    with pytest.raises(TypeError, match="can only optimize Tensors, but one of the params is ndarray"):
        optim.SGD([np.zeros(2)], lr=0.1)
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        optim.SGD([{"params": [param]}, {"params": [param]}], lr=0.1)
    with pytest.raises(TypeError, match="ordered collections"):
        optim.SGD([{"params": {param}}], lr=0.1)
    with pytest.raises(ValueError, match="can't optimize a non-leaf Tensor"):
        optim.SGD([param * 2], lr=0.1)


def test_bad_gradient_and_bad_loaded_state_are_reported():
    param = nn.Parameter(np.zeros((2, 3)))
    optimizer = optim.Adam([param])
    param.grad = np.zeros(6)
    with pytest.raises(ValueError, match=r"parameter of shape \(2, 3\) has a gradient of shape \(6,\)"):
        optimizer.step()
    param.grad = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(TypeError, match="float64 parameter has a float32 gradient"):
        optimizer.step()
    state = {"state": {0: {"step": 1.0, "exp_avg": np.zeros(5), "exp_avg_sq": np.zeros((2, 3))}},
             "param_groups": [dict(optimizer.param_groups[0], params=[0])]}
    with pytest.raises(ValueError, match=r"'exp_avg' of parameter 0 has shape \(5,\), but the parameter has shape"):
        optimizer.load_state_dict(state)
    with pytest.raises(ValueError, match="different number of parameter groups"):
        optimizer.load_state_dict({"state": {}, "param_groups": []})
    with pytest.raises(ValueError, match="doesn't match the size of optimizer's group"):
        optimizer.load_state_dict({"state": {}, "param_groups": [dict(optimizer.param_groups[0], params=[0, 1])]})
