"""The model zoo: output shapes, parameter counts against PyTorch's equivalents, bad sizes."""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import models

from .helpers import requires_torch, torch


@pytest.mark.parametrize("name, in_channels, image_size, parameters", [
    ("lenet5", 1, 28, 61706),
    ("cifar-cnn", 3, 32, 160234),
    ("small-cnn", 1, 8, 9978),
])
def test_output_shape_and_parameter_count(name, in_channels, image_size, parameters):
    model = models.build_model(name, in_channels=in_channels, num_classes=10, image_size=image_size)
    out = model(cn.Tensor(np.zeros((2, in_channels, image_size, image_size), np.float32)))
    assert out.shape == (2, 10)
    assert sum(p.size for p in model.parameters()) == parameters


def test_resnet20_has_the_papers_parameter_count():
    model = models.resnet20()
    # He et al. report 0.27M parameters for ResNet-20 with 1×1 projection shortcuts: 272,474 with BN and the classifier
    assert sum(p.size for p in model.parameters()) == 272474
    small = models.resnet20(widths=(4, 8, 8))
    assert small(cn.Tensor(np.zeros((2, 3, 8, 8), np.float32))).shape == (2, 10)


def test_too_small_images_are_refused():
    with pytest.raises(ValueError, match="lenet5 needs images of at least 16×16 pixels, but got 8×8"):
        models.lenet5(image_size=8)
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        models.build_model("vgg", 3, 10, 32)


@requires_torch
def test_cifar_cnn_state_dict_matches_a_pytorch_twin():
    tnn = torch.nn
    blocks = []
    for cin, cout, pool in ((3, 32, False), (32, 32, True), (32, 64, False), (64, 64, True), (64, 128, True)):
        blocks += [tnn.Conv2d(cin, cout, 3, padding=1, bias=False), tnn.BatchNorm2d(cout), tnn.ReLU()]
        if pool:
            blocks.append(tnn.MaxPool2d(2))
    twin = tnn.Sequential(*blocks, tnn.Flatten(), tnn.Linear(2048, 10)).double()
    model = models.cifar_cnn().double()
    expected = {k: v.shape for k, v in twin.state_dict().items()}
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: tuple(s) for k, s in expected.items()}
    model.load_state_dict({k: v.numpy() for k, v in twin.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
    twin.eval(), model.eval()
    np.testing.assert_allclose(model(cn.Tensor(x)).data, twin(torch.tensor(x)).detach().numpy(), rtol=1e-9, atol=1e-10)
