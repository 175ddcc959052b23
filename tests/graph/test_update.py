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


def run(make_optimizer, captured):
    model, data = model_and_batches()
    optimizer = make_optimizer(model.parameters())
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
