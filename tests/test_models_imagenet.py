"""ResNet-18/34/50 and MobileNetV2 against PyTorch twins with torchvision's names: state dict keys, eval logits
(eager and captured) and two float64 SGD steps (eager and captured), at small images to stay fast."""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import functional as F
from cnnnumba import models, optim

torch = pytest.importorskip("torch")
twins = pytest.importorskip("cnnnumba.bench.torch_twins")

NAMES = ["resnet18", "resnet34", "resnet50", "mobilenet_v2"]
BUILDERS = {"resnet18": models.resnet18, "resnet34": models.resnet34, "resnet50": models.resnet50,
            "mobilenet_v2": models.mobilenet_v2}


def _pair(name, dtype, **kwargs):
    """(cnnnumba model, torch twin) with the twin's weights, running statistics varied away from 0 and 1."""
    torch.manual_seed(0)
    twin = twins.TWINS[name](**kwargs)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in twin.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                size = module.num_features
                module.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(size, generator=generator) * 0.1)
                module.num_batches_tracked.fill_(3)
    twin = twin.to(dtype=torch.float64 if dtype == np.float64 else torch.float32)
    model = BUILDERS[name](**kwargs)
    model = model.double() if dtype == np.float64 else model
    model.load_state_dict({key: value.numpy() for key, value in twin.state_dict().items()})
    return model, twin


@pytest.mark.parametrize("name, kwargs", [(n, {}) for n in NAMES] + [
    ("resnet18", {"num_classes": 10, "in_channels": 1}), ("mobilenet_v2", {"num_classes": 7, "width_mult": 0.5}),
    ("mobilenet_v2", {"width_mult": 1.4})])
def test_state_dict_keys_shapes_and_dtypes_are_torchvisions(name, kwargs):
    model = BUILDERS[name](**kwargs)
    twin = twins.TWINS[name](**kwargs)
    ours = {key: (value.shape, value.dtype) for key, value in model.state_dict().items()}
    theirs = {key: (tuple(value.shape), value.numpy().dtype) for key, value in twin.state_dict().items()}
    assert list(ours) == list(theirs)
    assert ours == theirs
    assert any(key.endswith("num_batches_tracked") for key in ours)
    # torch loads ours strictly, and we load theirs strictly
    twin.load_state_dict({key: torch.from_numpy(np.array(value)) for key, value in model.state_dict().items()})


def test_torchvisions_key_names():
    keys = set(models.resnet18().state_dict()) | set(models.mobilenet_v2().state_dict())
    for key in ("layer1.0.conv1.weight", "layer2.0.downsample.0.weight", "layer2.0.downsample.1.num_batches_tracked",
                "fc.bias", "features.1.conv.0.0.weight", "features.2.conv.1.0.weight", "classifier.1.weight",
                "features.18.1.running_var"):
        assert key in keys
    assert "layer4.1.bn2.num_batches_tracked" in models.resnet50().state_dict()


def _assert_logits_close(ours, theirs):
    scale = np.abs(theirs).max()
    assert np.abs(ours - theirs).max() <= 1e-3 * scale, f"max difference {np.abs(ours - theirs).max()} of {scale}"


@pytest.mark.parametrize("name", NAMES)
def test_eval_logits_match_pytorch_eager_and_captured(name):
    model, twin = _pair(name, np.float32, num_classes=10)
    model.eval(), twin.eval()
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = twin(torch.from_numpy(x)).numpy()
    with cn.no_grad():
        _assert_logits_close(model(cn.Tensor(x)).data, expected)
    _assert_logits_close(cn.graph.capture(model)(x), expected)


def _sgd_steps_match(name, captured, image_size, batch):
    model, twin = _pair(name, np.float64, num_classes=5, **({"dropout": 0.0} if name == "mobilenet_v2" else {}))
    model.train(), twin.train()
    before = {key: value.detach().numpy().copy() for key, value in twin.named_parameters()}
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    twin_optimizer = torch.optim.SGD(twin.parameters(), lr=0.01, momentum=0.9)
    step = cn.graph.capture(model, F.cross_entropy, optimizer) if captured else None
    rng = np.random.default_rng(3)
    for _ in range(2):
        x = rng.standard_normal((batch, 3, image_size, image_size))
        y = rng.integers(0, 5, batch)
        if captured:
            loss = step(x, y)
        else:
            optimizer.zero_grad()
            loss_tensor = F.cross_entropy(model(cn.Tensor(x)), y)
            loss_tensor.backward()
            optimizer.step()
            loss = loss_tensor.item()
        twin_optimizer.zero_grad()
        twin_loss = torch.nn.functional.cross_entropy(twin(torch.from_numpy(x)), torch.from_numpy(y))
        twin_loss.backward()
        twin_optimizer.step()
        assert loss == pytest.approx(twin_loss.item(), rel=1e-6)
    ours = dict(model.named_parameters())
    changes = {key: (ours[key].data - before[key], value.detach().numpy() - before[key])
               for key, value in twin.named_parameters()}
    largest = max(np.abs(theirs).max() for _, theirs in changes.values())
    assert largest > 0
    for key, (mine, theirs) in changes.items():
        # relative to the parameter's own change, floored at 1% of the largest change of any parameter
        allowed = 1e-6 * max(np.abs(theirs).max(), 0.01 * largest)
        assert np.abs(mine - theirs).max() <= allowed, f"{key}: {np.abs(mine - theirs).max()} > {allowed}"
    expected_buffers = dict(twin.named_buffers())
    for key, value in model.named_buffers():  # running statistics and batch counts
        np.testing.assert_allclose(value, expected_buffers[key].numpy(), rtol=1e-6, atol=1e-9, err_msg=key)


@pytest.mark.parametrize("captured", [False, True], ids=["eager", "captured"])
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_two_float64_sgd_steps_match_pytorch(name, captured):
    _sgd_steps_match(name, captured, image_size=32, batch=4)


@pytest.mark.slow
@pytest.mark.parametrize("captured", [False, True], ids=["eager", "captured"])
@pytest.mark.parametrize("name", ["resnet34", "resnet50"])
def test_two_float64_sgd_steps_match_pytorch_deeper_resnets(name, captured):
    _sgd_steps_match(name, captured, image_size=32, batch=4)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="num_classes must be a positive int, but got 0"):
        models.resnet18(num_classes=0)
    with pytest.raises(ValueError, match="width_mult must be a positive number"):
        models.mobilenet_v2(width_mult=-1)
    with pytest.raises(ValueError, match="expected input.* to have 3 channels, but got 1 channels"):
        models.resnet18()(cn.Tensor(np.zeros((1, 1, 32, 32), np.float32)))
