"""Residual-block fusions of the lowering (batch norm + add + ReLU, add + ReLU) against the unfused eager ops."""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import functional as F
from cnnnumba import nn, optim


class Residual(nn.Module):
    """relu(bn(conv(x)) + shortcut): `shortcut` is "identity", "bn" (both add inputs are batch norms), "plain"
    (no batch norm next to the add: add + ReLU only), "twice" (the batch norm's output is also used elsewhere, so
    it must not be absorbed) or "self" (relu(h + h))."""

    def __init__(self, shortcut):
        super().__init__()
        self.kind = shortcut
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.project = nn.Conv2d(4, 4, 1, bias=False)
        self.bn_short = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        h = F.relu(self.stem(x))
        if self.kind == "plain":
            return self.fc(F.flatten(F.relu(self.conv(h) + h)))
        main = self.bn(self.conv(h))
        if self.kind == "identity":
            out = F.relu(main + h)
        elif self.kind == "bn":
            out = F.relu(main + self.bn_short(self.project(h)))
        elif self.kind == "twice":
            out = F.relu(main + h) + main
        else:
            out = F.relu(main + main)
        return self.fc(F.flatten(out))


def _run(kind, dtype, captured, steps=3):
    cn.manual_seed(0)
    model = Residual(kind)
    if dtype == np.float64:
        model.double()
    optimizer = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    rng = np.random.default_rng(0)
    step = cn.graph.capture(model, F.cross_entropy, optimizer) if captured else None
    losses = []
    for _ in range(steps):
        x, y = rng.standard_normal((4, 3, 8, 8)).astype(dtype), rng.integers(0, 5, 4)
        if captured:
            losses.append(step(x, y))
        else:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(cn.Tensor(x)), y)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.item()))
    return losses, {k: np.array(v) for k, v in model.state_dict().items()}, step, model


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind, fused_node, absent", [
    ("identity", "batchnorm+add+relu(", "add("),
    ("bn", "batchnorm+add+relu(", "add("),
    ("plain", "add+relu(", "batchnorm+add+relu("),
    ("twice", "add+relu(", "batchnorm+add+relu("),
    ("self", "add+relu(", "batchnorm+add+relu("),
])
def test_residual_fusion_trains_like_the_unfused_eager_ops(kind, fused_node, absent, dtype):
    captured_losses, captured_state, step, _ = _run(kind, dtype, captured=True)
    eager_losses, eager_state, _, _ = _run(kind, dtype, captured=False)
    text = step.describe()
    assert fused_node in text and f"  {absent}" not in text and "\n  relu(" not in text, text
    tolerance = dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(captured_losses, eager_losses, **tolerance)
    assert captured_losses[0] != captured_losses[-1]
    for key in eager_state:  # weights, biases and the batch norms' running statistics
        np.testing.assert_allclose(captured_state[key], eager_state[key], err_msg=key, **tolerance)


@pytest.mark.parametrize("kind", ["identity", "bn"])
def test_inference_fuses_the_add_and_relu_after_folded_batch_norm(kind):
    _, _, _, model = _run(kind, np.float64, captured=False)
    model.eval()
    predict = cn.graph.capture(model)
    x = np.random.default_rng(3).standard_normal((2, 3, 8, 8))
    with cn.no_grad():
        expected = model(cn.Tensor(x)).data
    np.testing.assert_allclose(predict(x), expected, rtol=1e-10, atol=1e-12)
    text = predict.describe()
    assert "add+relu(" in text and "conv+bn(folded)" in text and "\n  relu(" not in text, text


def test_resnet20_schedule_has_one_fused_node_per_block_end():
    cn.manual_seed(0)
    model = cn.models.resnet20(image_size=8, widths=(4, 8, 8))
    step = cn.graph.capture(model, F.cross_entropy, optim.SGD(model.parameters(), lr=0.1))
    x, y = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32), np.array([1, 2])
    step(x, y)
    step(x, y)
    names = [node.name for node in step.last.schedule.forward_nodes]
    assert names.count("batchnorm+add+relu") == 9 and "add" not in names and "relu" not in names


class DeadBranch(nn.Module):
    """A batch norm computed (its running statistics move) but not used on the way to the loss."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        h = F.relu(self.stem(x))
        self.bn(self.conv(h))  # unused: eager gives conv and bn no gradient from it
        return self.fc(F.flatten(F.relu(self.conv(h) + h)))


def test_values_that_do_not_reach_the_loss_get_no_backward():
    cn.manual_seed(0)
    runs = []
    for captured in (True, False):
        cn.manual_seed(0)
        model = DeadBranch().double()
        optimizer = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        step = cn.graph.capture(model, F.cross_entropy, optimizer) if captured else None
        rng = np.random.default_rng(0)
        losses = []
        for _ in range(3):
            x, y = rng.standard_normal((4, 3, 8, 8)), rng.integers(0, 5, 4)
            if captured:
                losses.append(step(x, y))
            else:
                optimizer.zero_grad()
                loss = F.cross_entropy(model(cn.Tensor(x)), y)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.item()))
        runs.append((losses, {k: np.array(v) for k, v in model.state_dict().items()}, step))
    (captured_losses, captured_state, step), (eager_losses, eager_state, _) = runs
    np.testing.assert_allclose(captured_losses, eager_losses, rtol=1e-10, atol=1e-12)
    for key in eager_state:
        np.testing.assert_allclose(captured_state[key], eager_state[key], rtol=1e-10, atol=1e-12, err_msg=key)
    backward_names = [repr(node) for node in step.last.schedule.backward_nodes]
    assert not any(name.startswith("batchnorm(") for name in backward_names), backward_names
