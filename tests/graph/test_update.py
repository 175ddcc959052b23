"""The fused optimizer update: which optimizers it fuses, and that the ones it does not still train correctly."""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import functional as F
from cnnnumba import nn, optim


class HalvedStepSGD(optim.SGD):
    """A subclass that changes the update rule: fusing it with SGD's flat update would silently drop the change."""

    def _update(self, param, grad, owner, state, group):
        super()._update(param, grad * 0.5, owner, state, group)


class SignSGD(optim.Optimizer):
    """An optimizer the executor has never heard of."""

    def __init__(self, params, lr=0.01):
        super().__init__(params, dict(lr=lr))

    def _update(self, param, grad, owner, state, group):
        param -= group["lr"] * np.sign(grad)


def model_and_batches():
    cn.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).double()
    rng = np.random.default_rng(0)
    data = [(rng.standard_normal((5, 2, 4, 4)), rng.integers(0, 3, 5)) for _ in range(3)]
    return model, data


def run(make_optimizer, captured, make=model_and_batches):
    """The state dict after three steps, captured or eager, of make()'s model; the optimizer gets the parameters
    that require a gradient."""
    model, data = make()
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad])
    step = cn.graph.capture(model, F.cross_entropy, optimizer) if captured else None
    for x, y in data:
        if captured:
            step(x, y)
        else:
            optimizer.zero_grad()
            F.cross_entropy(model(cn.Tensor(x)), y).backward()
            optimizer.step()
    return model.state_dict(), step


@pytest.mark.parametrize("make_optimizer, fused", [
    (lambda params: optim.SGD(params, lr=0.1, momentum=0.9), True),
    (lambda params: optim.Adam(params, lr=0.01, amsgrad=True), True),
    (lambda params: optim.AdamW(params, lr=0.01), True),
    (lambda params: HalvedStepSGD(params, lr=0.1, momentum=0.9), False),
    (lambda params: SignSGD(params), False),
], ids=["sgd", "adam-amsgrad", "adamw", "sgd-subclass", "unknown"])
def test_fused_only_where_the_rule_is_known_and_always_equal_to_eager(make_optimizer, fused):
    captured, step = run(make_optimizer, captured=True)
    eager, _ = run(make_optimizer, captured=False)
    graph = next(iter(step.graphs.values()))
    assert graph.update.fused is fused
    for key in eager:
        np.testing.assert_allclose(captured[key], eager[key], rtol=1e-10, atol=1e-13, err_msg=key)


def test_conv_weights_live_in_the_kernels_layout_and_stay_the_models_own():
    """A captured step homes each conv weight, its gradient and its momentum as (kH, kW, C_in, C_out) blocks of the
    arenas (no re-layout per step); the model still sees (C_out, C_in, kH, kW) arrays with the same values."""
    model, data = model_and_batches()
    optimizer = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = model[0].weight.data.copy()
    step = cn.graph.capture(model, F.cross_entropy, optimizer)
    step(*data[0])
    weight = model[0].weight
    assert weight.shape == (4, 2, 3, 3)
    assert not weight.data.flags.c_contiguous and weight.data.transpose(2, 3, 1, 0).flags.c_contiguous
    assert weight.grad.transpose(2, 3, 1, 0).flags.c_contiguous
    assert optimizer.state[weight]["momentum_buffer"].transpose(2, 3, 1, 0).flags.c_contiguous
    np.testing.assert_allclose(weight.data, before - 0.1 * weight.grad, rtol=1e-12)
    assert model[3].weight.data.flags.c_contiguous  # a linear layer's weight keeps its own layout


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_arena_block_starts_on_a_cache_line_and_the_gaps_stay_zero(dtype):
    """The register tiles load weights as 64-byte vectors: each parameter, gradient and state block is aligned,
    and the elements between blocks (in every arena alike) stay zero through the updates."""
    cn.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    model = model.double() if dtype == "float64" else model
    optimizer = optim.Adam(model.parameters(), lr=0.01, weight_decay=0.1)
    step = cn.graph.capture(model, F.cross_entropy, optimizer)
    _, data = model_and_batches()
    for x, y in data:
        step(x.astype(dtype), y)
    groups = step.last.update.groups
    assert len(groups) == 1
    _, params, param_arena, grad_arena, states = groups[0]
    arenas = [param_arena, grad_arena, *states.values()]
    for param in params:  # 4 parameters of sizes 54, 3, 240, 5: none a whole number of cache lines
        homes = [param.data, param.grad] + [optimizer.state[param][name] for name in states]
        for home in homes:
            assert home.ctypes.data % 64 == 0, param.shape
    for arena in arenas:
        used = np.zeros(arena.size, bool)
        for param in params:
            start = (param.data.ctypes.data - param_arena.ctypes.data) // param_arena.itemsize
            used[start:start + param.size] = True
        assert (~used).sum() > 0 and not arena[~used].any()


@pytest.mark.parametrize("make_optimizer", [
    lambda params: optim.SGD(params, lr=0.1, momentum=0.9),
    lambda params: optim.Adam(params, lr=0.01),
], ids=["sgd", "adam"])
def test_eager_steps_after_captured_ones_update_the_strided_homes(make_optimizer):
    """Captured steps, then an eager step through optimizer.step() (which updates strided state through contiguous
    copies), equal eager steps throughout; then a captured step again still reads the same arrays."""
    mixed, data = model_and_batches()
    optimizer = make_optimizer(mixed.parameters())
    step = cn.graph.capture(mixed, F.cross_entropy, optimizer)
    step(*data[0])
    optimizer.zero_grad()
    F.cross_entropy(mixed(cn.Tensor(data[1][0])), data[1][1]).backward()
    optimizer.step()
    step(*data[2])
    eager, _ = run(make_optimizer, captured=False)
    for key, value in mixed.state_dict().items():
        np.testing.assert_allclose(value, eager[key], rtol=1e-10, atol=1e-13, err_msg=key)


def test_a_captured_models_weights_save_and_load_in_pytorchs_layout(tmp_path):
    model, data = model_and_batches()
    step = cn.graph.capture(model, F.cross_entropy, optim.SGD(model.parameters(), lr=0.1))
    step(*data[0])
    for name in ("w.safetensors", "w.pt"):
        cn.save(model.state_dict(), tmp_path / name)
        loaded = cn.load(tmp_path / name)
        for key, value in model.state_dict().items():
            np.testing.assert_array_equal(loaded[key], value, err_msg=f"{name} {key}")
    fresh, _ = model_and_batches()
    fresh.load_state_dict(cn.load(tmp_path / "w.safetensors"))
    np.testing.assert_array_equal(fresh[0].weight.data, model[0].weight.data)
    model.load_state_dict(fresh.state_dict())  # loading into the homed (strided) arrays writes through the views
    assert model[0].weight.data.transpose(2, 3, 1, 0).flags.c_contiguous
    step(*data[1])


def test_a_frozen_conv_weight_is_re_laid_out_at_each_step_and_trains_like_eager():
    """A conv weight without a gradient stays out of the update's arenas, so the Conv node re-lays it out itself;
    the conv after it still trains, as eager."""
    def make():
        model, data = model_and_batches()
        model[0].weight.requires_grad = False
        return model, data

    sgd = lambda params: optim.SGD(params, lr=0.1, momentum=0.9)  # noqa: E731
    (captured, _), (eager, _) = (run(sgd, captured, make) for captured in (True, False))
    assert captured["0.weight"].flags.c_contiguous  # not homed
    for key in eager:
        np.testing.assert_allclose(captured[key], eager[key], rtol=1e-10, atol=1e-13, err_msg=key)
