"""ReLU6 and Hardtanh in captured graphs (their own node, fused into the conv or batch norm before them) and batch
norm + add without ReLU, against the unfused eager ops: losses, logits, every parameter's gradient and the running
statistics; MobileNetV2 end to end."""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import functional as F
from cnnnumba import nn, optim

TOLERANCE = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=2e-5, atol=2e-6)}


class Clamped(nn.Module):
    """Convs, batch norms and clamps in the arrangements the fusions take (or must refuse):

    "bn": batch norm + ReLU6 and batch norm + Hardtanh(-1, 2); "conv": conv (with bias) + ReLU6 and conv +
    Hardtanh(-0.5, 0.5); "alone": ReLU6 after max pooling and Hardtanh with an infinite bound after a batch norm,
    neither fusable; "shared": a batch norm's output read by ReLU6 and by the add after it, so not absorbed.
    """

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        bias = kind == "conv"
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, 5)
        # wide enough that ReLU6 meets its upper bound in a few places
        self.bn1.weight.data[...] = 4.0
        self.conv1.weight.data[...] *= 4.0

    def forward(self, x):
        if self.kind == "bn":
            h = F.relu6(self.bn1(self.conv1(x)))
            h = F.hardtanh(self.bn2(self.conv2(h)), -1.0, 2.0)
        elif self.kind == "conv":
            h = F.relu6(self.conv1(x))
            h = F.hardtanh(self.conv2(h), -0.5, 0.5)
        elif self.kind == "alone":
            h = F.relu6(F.max_pool2d(self.bn1(self.conv1(x)), 1))
            h = F.hardtanh(self.bn2(self.conv2(h)), -float("inf"), 1.0)
        else:
            normalized = self.bn1(self.conv1(x))
            h = F.relu6(normalized) + normalized
            h = self.bn2(self.conv2(h))
        return self.fc(F.flatten(h))


class Residual(nn.Module):
    """h + bn(conv(h)) without a ReLU after the add, as MobileNetV2's inverted residual ends ("left": the batch
    norm is the add's first input, "twice": its output is also concatenated to the sum, so the add stays plain)."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(4, 4, 1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear((8 if kind == "twice" else 4) * 8 * 8, 5)

    def forward(self, x):
        h = F.relu6(self.stem_bn(self.stem(x)))
        main = self.bn(self.conv(h))
        if self.kind == "right":
            out = h + main
        elif self.kind == "left":
            out = main + h
        else:
            out = cn.cat([h + main, main], dim=1)
        return self.fc(F.flatten(out))


def _train(make_model, dtype, captured, steps=3, shape=(4, 3, 8, 8), classes=5):
    """(per step: loss, logits, {name: gradient}), the final state dict, the captured step."""
    cn.manual_seed(0)
    model = make_model()
    if dtype == np.float64:
        model.double()
    optimizer = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    step = cn.graph.capture(model, F.cross_entropy, optimizer) if captured else None
    rng = np.random.default_rng(0)
    records = []
    for _ in range(steps):
        x, y = rng.standard_normal(shape).astype(dtype), rng.integers(0, classes, shape[0])
        if captured:
            loss = step(x, y)
            logits = step.logits.copy()
        else:
            optimizer.zero_grad()
            out = model(cn.Tensor(x))
            loss_tensor = F.cross_entropy(out, y)
            loss_tensor.backward()
            loss, logits = float(loss_tensor.item()), out.data.copy()
        gradients = {name: np.array(p.grad) for name, p in model.named_parameters() if p.grad is not None}
        if not captured:
            optimizer.step()
        records.append((loss, logits, gradients))
    return records, {k: np.array(v) for k, v in model.state_dict().items()}, step


def assert_trains_like_eager(make_model, dtype, **shapes):
    """The captured run's losses, logits, gradients and final state (parameters, running statistics) equal the
    eager run's; returns the captured step."""
    captured, captured_state, step = _train(make_model, dtype, captured=True, **shapes)
    eager, eager_state, _ = _train(make_model, dtype, captured=False, **shapes)
    tolerance = TOLERANCE[dtype]
    for index, ((loss, logits, grads), (eager_loss, eager_logits, eager_grads)) in enumerate(zip(captured, eager)):
        np.testing.assert_allclose(loss, eager_loss, **tolerance)
        np.testing.assert_allclose(logits, eager_logits, err_msg=f"step {index}", **tolerance)
        assert grads.keys() == eager_grads.keys()
        for name in eager_grads:
            scale = max(np.abs(eager_grads[name]).max(), 1e-3)  # a bias before batch norm: a gradient of rounding
            np.testing.assert_allclose(grads[name], eager_grads[name], rtol=tolerance["rtol"],
                                       atol=tolerance["rtol"] * scale, err_msg=f"step {index}: {name}")
    assert captured[0][0] != captured[-1][0]
    for key in eager_state:  # weights, biases and the batch norms' running statistics
        np.testing.assert_allclose(captured_state[key], eager_state[key], err_msg=key, **tolerance)
    return step


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind, present, absent", [
    ("bn", ["batchnorm+relu6(", "batchnorm+hardtanh("], ["relu6(", "hardtanh("]),
    ("conv", ["conv+bias+relu6(", "conv+bias+hardtanh("], ["relu6(", "hardtanh("]),
    ("alone", ["relu6(", "hardtanh(", "batchnorm("], ["batchnorm+"]),
    ("shared", ["relu6(", "batchnorm("], ["batchnorm+"]),
])
def test_clamps_fuse_and_train_like_the_eager_ops(kind, present, absent, dtype):
    step = assert_trains_like_eager(lambda: Clamped(kind), dtype)
    names = [node.name + "(" for node in step.last.schedule.forward_nodes]
    text = step.describe()
    assert "fallback" not in text, text
    for name in present:
        assert name in names, text
    for name in absent:
        assert not any(n.startswith(name) for n in names), text


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind, fused", [("right", True), ("left", True), ("twice", False)])
def test_batch_norm_add_without_relu_fuses_and_trains_like_the_eager_ops(kind, fused, dtype):
    step = assert_trains_like_eager(lambda: Residual(kind), dtype)
    names = [node.name for node in step.last.schedule.forward_nodes]
    assert ("batchnorm+add" in names) == fused and ("add" in names) != fused, names
    assert "batchnorm+relu6" in names and "fallback" not in step.describe()


def predicts_like_eager(model, x, rtol=1e-10):
    """Captured inference of the eval-mode `model` on x equals its eager forward; returns the graph's node names,
    none of them a Fallback."""
    predict = cn.graph.capture(model)
    with cn.no_grad():
        expected = model(cn.Tensor(x)).data
    np.testing.assert_allclose(predict(x), expected, rtol=rtol, atol=1e-12)
    names = [node.name for node in predict.last.forward_nodes]
    assert not any(name.startswith("fallback") for name in names), names
    return names


def _running_statistics(model, steps=2):
    rng = np.random.default_rng(1)
    optimizer = optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(cn.Tensor(rng.standard_normal((4, 3, 8, 8)))), rng.integers(0, 5, 4)).backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize("kind, present", [("bn", ["conv+bn(folded)+relu6", "conv+bn(folded)+hardtanh"]),
                                           ("conv", ["conv+relu6", "conv+hardtanh"]),
                                           ("alone", ["conv+bn(folded)", "relu6", "hardtanh"])])
def test_inference_folds_batch_norm_and_the_clamp_into_the_conv(kind, present):
    cn.manual_seed(0)
    model = _running_statistics(Clamped(kind).double())
    names = predicts_like_eager(model, np.random.default_rng(3).standard_normal((2, 3, 8, 8)))
    assert set(present) <= set(names), names


def test_inference_batch_norm_that_cannot_fold_applies_relu6():
    cn.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), nn.BatchNorm2d(4), nn.ReLU6(), nn.Flatten(),
                          nn.Linear(36, 3)).double()
    model[2].running_mean[...] = np.arange(4) * 0.1
    model[2].running_var[...] = np.arange(1, 5) * 0.05
    model.eval()
    names = predicts_like_eager(model, np.random.default_rng(0).standard_normal((2, 3, 8, 8)) * 3)
    assert "batchnorm(eval)+relu6" in names, names


class Integral(nn.Module):
    """A 1x1 conv of integers by integers: its outputs are exact integers, many exactly 0 and 6, where ReLU6's
    gradient is 0. ReLU6 right after the conv (fused into it) and after max pooling (its own node)."""

    def __init__(self, fused):
        super().__init__()
        self.fused = fused
        self.conv = nn.Conv2d(1, 2, 1)
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        h = self.conv(x)
        return self.fc(F.flatten(F.relu6(h if self.fused else F.max_pool2d(h, 1))))


@pytest.mark.parametrize("fused", [True, False])
def test_relu6_gradient_at_its_bounds_matches_torch(fused):
    torch = pytest.importorskip("torch")
    cn.manual_seed(0)
    model = Integral(fused).double()
    model.conv.weight.data[...] = np.array([1.0, 2.0]).reshape(2, 1, 1, 1)
    model.conv.bias.data[...] = [0.0, -2.0]
    x = np.random.default_rng(0).integers(-2, 9, (4, 1, 4, 4)).astype(np.float64)
    y = np.array([0, 1, 2, 1])
    step = cn.graph.capture(model, F.cross_entropy, optim.SGD(model.parameters(), lr=0.0))
    step(x, y)
    step(x, y)  # replayed
    names = [node.name for node in step.last.schedule.forward_nodes]
    assert ("conv+bias+relu6" in names) == fused and ("relu6" in names) != fused, names

    twin = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.ReLU6(), torch.nn.Flatten(),
                               torch.nn.Linear(2 * 4 * 4, 3)).double()
    with torch.no_grad():
        for mine, theirs in ((model.conv, twin[0]), (model.fc, twin[3])):
            theirs.weight.copy_(torch.from_numpy(np.array(mine.weight.data)))
            theirs.bias.copy_(torch.from_numpy(np.array(mine.bias.data)))
    activations = twin[1](twin[0](torch.from_numpy(x)))
    assert (activations == 0).sum() > 4 and (activations == 6).sum() > 4
    torch.nn.functional.cross_entropy(twin(torch.from_numpy(x)), torch.from_numpy(y)).backward()
    for mine, theirs in ((model.conv, twin[0]), (model.fc, twin[3])):
        np.testing.assert_allclose(mine.weight.grad, theirs.weight.grad.numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(mine.bias.grad, theirs.bias.grad.numpy(), rtol=1e-12, atol=1e-14)


def _fallbacks(nodes):
    return [node.name for node in nodes if node.name.startswith("fallback")]


@pytest.mark.slow
def test_mobilenet_v2_captures_without_fallback_and_matches_eager():
    def make():
        return cn.models.mobilenet_v2(num_classes=10, width_mult=0.25)

    model = make()
    blocks = [m for m in model.modules() if type(m).__name__ == "InvertedResidual"]
    residuals = sum(block.use_res_connect for block in blocks)
    clamped = sum(type(m).__name__ == "ReLU6" for m in model.modules())
    assert residuals > 0 and clamped > len(blocks)

    step = assert_trains_like_eager(make, np.float64, steps=2, shape=(2, 3, 32, 32), classes=10)
    graph = step.last.schedule
    assert not _fallbacks(graph.forward_nodes) and not _fallbacks(graph.backward_nodes), step.describe()
    names = [node.name for node in graph.forward_nodes]
    assert names.count("batchnorm+relu6") == clamped and names.count("batchnorm+add") == residuals, names
    # the other blocks' projections end in a plain batch norm
    assert names.count("batchnorm") == len(blocks) - residuals and "relu6" not in names and "add" not in names

    cn.manual_seed(0)
    model = make().double()
    with cn.no_grad():
        model(cn.Tensor(np.random.default_rng(2).standard_normal((2, 3, 32, 32))))  # running statistics move
    names = predicts_like_eager(model.eval(), np.random.default_rng(4).standard_normal((2, 3, 32, 32)), rtol=1e-9)
    # batch norm folds where the weight is no larger than the conv's output, else the conv kernel applies it (with
    # ReLU6) to the output
    folded, on_output = names.count("conv+bn(folded)+relu6"), names.count("conv+bn(output)+relu6")
    assert folded > 0 and on_output > 0 and folded + on_output == clamped and "relu6" not in names, names
    assert not any(name.startswith("batchnorm") for name in names), names
