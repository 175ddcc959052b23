"""The same small CNN trained in cnnnumba and PyTorch from the same weights and batches agrees to float64 precision."""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import functional as F
from cnnnumba import nn, optim

from .helpers import requires_torch, torch


# No conv bias right before a batch norm: its true gradient is zero, and Adam would amplify the round-off.
def _cnnnumba_model():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding="same"), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(6 * 2 * 2, 8), nn.ReLU(), nn.Linear(8, 5),
    ).double()


def _torch_model():
    tnn = torch.nn
    return tnn.Sequential(
        tnn.Conv2d(3, 4, 3, padding=1, bias=False), tnn.BatchNorm2d(4), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(4, 6, 3, padding="same"), tnn.ReLU(), tnn.AvgPool2d(2),
        tnn.Flatten(), tnn.Linear(6 * 2 * 2, 8), tnn.ReLU(), tnn.Linear(8, 5),
    ).double()


OPTIMIZERS = {
    "sgd": (lambda p: optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True),
            lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True)),
    "adam": (lambda p: optim.Adam(p, lr=1e-2, weight_decay=1e-3),
             lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3)),
    "adamw": (lambda p: optim.AdamW(p, lr=1e-2), lambda p: torch.optim.AdamW(p, lr=1e-2)),
}


@requires_torch
@pytest.mark.parametrize("captured", [False, True], ids=["eager", "captured"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_training_steps_match_pytorch(name, captured):
    cn.manual_seed(0)
    model, twin = _cnnnumba_model(), _torch_model()
    model.load_state_dict({k: v.detach().numpy().copy() for k, v in twin.state_dict().items()})
    make_ours, make_theirs = OPTIMIZERS[name]
    optimizer, twin_optimizer = make_ours(model.parameters()), make_theirs(twin.parameters())
    step = cn.graph.capture(model, F.cross_entropy, optimizer) if captured else None
    rng = np.random.default_rng(1)
    for _ in range(4):
        x = rng.standard_normal((6, 3, 8, 8))
        y = rng.integers(0, 5, 6)
        if captured:
            loss = step(x, y)
        else:
            optimizer.zero_grad()
            loss_tensor = F.cross_entropy(model(cn.Tensor(x)), y)
            loss_tensor.backward()
            optimizer.step()
            loss = loss_tensor.item()
        twin_optimizer.zero_grad()
        twin_loss = torch.nn.functional.cross_entropy(twin(torch.tensor(x)), torch.tensor(y))
        twin_loss.backward()
        twin_optimizer.step()
        assert loss == pytest.approx(twin_loss.item(), rel=1e-10)
    expected = twin.state_dict()
    for key, value in model.state_dict().items():
        np.testing.assert_allclose(value, expected[key].numpy(), rtol=1e-9, atol=1e-11, err_msg=key)
