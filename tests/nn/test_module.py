"""Module mechanics: registration, traversal, state_dict names and loading (both ways with PyTorch), strict errors,
train/eval, zero_grad, float/double, Sequential."""
from collections import OrderedDict

import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import functional as F
from cnnnumba import nn
from tests.helpers import requires_torch, torch


def _block(m, functional):
    class Block(m.Module):
        def __init__(self):
            super().__init__()
            self.conv = m.Conv2d(4, 4, 3, padding=1)
            self.bn = m.BatchNorm2d(4)

        def forward(self, x):
            return functional.relu(self.bn(self.conv(x))) + x

    return Block()


def _net(m, functional):
    """A small CNN mixing Sequential, a custom Module and BatchNorm, built the same way in both frameworks."""

    class Net(m.Module):
        def __init__(self):
            super().__init__()
            self.features = m.Sequential(m.Conv2d(3, 4, 3, padding=1), m.BatchNorm2d(4), m.ReLU(), m.MaxPool2d(2),
                                         _block(m, functional))
            self.head = m.Sequential(OrderedDict(pool=m.AdaptiveAvgPool2d(1), flat=m.Flatten(),
                                                 fc=m.Linear(4, 3)))

        def forward(self, x):
            return self.head(self.features(x))

    return Net()


def _torch_net():
    return _net(torch.nn, torch.nn.functional).double()


@requires_torch
def test_state_dict_keys_shapes_and_dtypes_equal_torch():
    ours, theirs = _net(nn, F).state_dict(), _torch_net().float().state_dict()
    assert list(ours) == list(theirs)
    assert "features.4.bn.num_batches_tracked" in ours and "head.fc.weight" in ours
    for key, value in ours.items():
        assert isinstance(value, np.ndarray)
        assert value.shape == tuple(theirs[key].shape), key
        assert value.dtype == theirs[key].numpy().dtype, key


@requires_torch
def test_torch_weights_load_and_give_torch_outputs_and_gradients():
    torch_model = _torch_net()
    model = _net(nn, F).double()
    model.load_state_dict({k: v.numpy() for k, v in torch_model.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6))
    for mode in (True, False):
        model.train(mode), torch_model.train(mode)
        out, torch_out = model(cn.Tensor(x)), torch_model(torch.tensor(x))
        np.testing.assert_allclose(out.data, torch_out.detach().numpy(), rtol=1e-10, atol=1e-12)
    model.zero_grad(), torch_model.zero_grad()
    model.train(), torch_model.train()
    model(cn.Tensor(x)).sum().backward()
    torch_model(torch.tensor(x)).sum().backward()
    torch_params = dict(torch_model.named_parameters())
    for name, param in model.named_parameters():
        np.testing.assert_allclose(param.grad, torch_params[name].grad.numpy(), rtol=1e-9, atol=1e-11, err_msg=name)


@requires_torch
def test_our_weights_load_into_torch():
    model = _net(nn, F).double()
    torch_model = _torch_net().eval()
    torch_model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()})
    x = np.random.default_rng(1).standard_normal((1, 3, 4, 4))
    np.testing.assert_allclose(model.eval()(cn.Tensor(x)).data, torch_model(torch.tensor(x)).detach().numpy(),
                               rtol=1e-10, atol=1e-12)


def test_strict_loading_reports_every_bad_key_at_once_and_changes_nothing():
    model = _net(nn, F)
    state = {k: v.copy() for k, v in model.state_dict().items()}
    before = {k: v.copy() for k, v in state.items()}
    del state["features.0.bias"], state["features.4.bn.running_var"]
    state["head.fc.weight"] = np.zeros((3, 5), np.float32)
    state["head.extra"] = np.zeros(1)
    state["features.0.weight"] = state["features.0.weight"] + 1
    with pytest.raises(RuntimeError) as error:
        model.load_state_dict(state)
    message = str(error.value)
    assert message.startswith("Error(s) in loading state_dict for Net:")
    assert 'Missing key(s) in state_dict: "features.0.bias", "features.4.bn.running_var".' in message
    assert 'Unexpected key(s) in state_dict: "head.extra".' in message
    assert ("size mismatch for head.fc.weight: copying a param with shape (3, 5) from checkpoint, the shape in "
            "current model is (3, 4).") in message
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)


def test_non_strict_loading_returns_missing_and_unexpected_but_still_refuses_bad_shapes():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    result = model.load_state_dict({"0.weight": np.ones((3, 2)), "9.weight": np.ones(1)}, strict=False)
    assert result.missing_keys == ["0.bias", "2.weight", "2.bias"] and result.unexpected_keys == ["9.weight"]
    np.testing.assert_array_equal(model[0].weight.data, np.ones((3, 2)))
    assert model[0].weight.dtype == np.float32  # cast to the parameter's dtype, as torch's copy_
    with pytest.raises(RuntimeError, match=r"size mismatch for 0.weight"):
        model.load_state_dict({"0.weight": np.ones((2, 3))}, strict=False)


def test_registration_by_attribute_and_register_buffer():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(np.ones(3))
            self.register_buffer("count", np.zeros((), np.int64))
            self.register_buffer("scratch", np.zeros(2), persistent=False)
            self.inner = nn.Linear(3, 2)
            self.shared = self.inner  # the same module twice: traversals list it once, state_dict twice (as torch)
            self.plain = np.ones(4)  # a plain attribute, not state

        def forward(self, x):
            return self.inner(x * self.scale)

    module = Custom()
    assert [n for n, _ in module.named_parameters()] == ["scale", "inner.weight", "inner.bias"]
    assert [n for n, _ in module.named_buffers()] == ["count", "scratch"]
    assert list(module.state_dict()) == ["scale", "count", "inner.weight", "inner.bias", "shared.weight", "shared.bias"]
    assert [n for n, _ in module.named_children()] == ["inner"]
    assert [n for n, _ in module.named_modules()] == ["", "inner"]
    module.count += 1
    assert module.state_dict()["count"] == 1
    module.scale = None
    assert "scale" not in module.state_dict()
    with pytest.raises(TypeError, match="cannot assign 'ndarray' as parameter 'scale'"):
        module.scale = np.ones(3)
    with pytest.raises(TypeError, match="cannot assign 'list' object to buffer 'count'"):
        module.count = [1]
    with pytest.raises(KeyError, match="attribute 'plain' already exists"):
        module.register_buffer("plain", np.zeros(1))
    with pytest.raises(KeyError, match=r'parameter name can.{1,2}t contain "."'):
        module.register_parameter("a.b", None)
    with pytest.raises(AttributeError, match="'Custom' object has no attribute 'missing'"):
        module.missing
    del module.inner
    assert [n for n, _ in module.named_children()] == ["shared"]


def test_assigning_before_init_is_an_error():
    class Broken(nn.Module):
        def __init__(self):
            self.weight = nn.Parameter(np.ones(1))

    with pytest.raises(AttributeError, match="cannot assign parameters before Module.__init__"):
        Broken()


def test_forward_is_required():
    with pytest.raises(NotImplementedError, match='missing the required "forward" function'):
        nn.Module()(cn.Tensor(np.ones(1)))


def test_train_eval_zero_grad_and_dtype_conversion():
    model = _net(nn, F)
    assert model.eval() is model and not any(m.training for m in model.modules())
    assert model.train() is model and all(m.training for m in model.modules())
    with pytest.raises(ValueError, match="training mode is expected to be boolean"):
        model.train("yes")
    weight = model.head.fc.weight
    weight.grad = np.ones_like(weight.data)
    model.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(weight.grad, 0)
    model.zero_grad()
    assert weight.grad is None
    assert model.double() is model
    assert model.head.fc.weight is weight and weight.dtype == np.float64  # the same Parameter, converted
    bn = model.features[1]
    assert bn.running_mean.dtype == np.float64 and bn.num_batches_tracked.dtype == np.int64
    model.float()
    assert all(p.dtype == np.float32 for p in model.parameters()) and bn.running_var.dtype == np.float32


def test_sequential_indexing():
    layers = [nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)]
    model = nn.Sequential(*layers)
    assert len(model) == 3 and list(model) == layers
    assert model[0] is layers[0] and model[-1] is layers[2]
    assert isinstance(model[1:], nn.Sequential) and list(model[1:]) == layers[1:]
    with pytest.raises(IndexError, match="index 3 is out of range"):
        model[3]
    model[1] = nn.Tanh()
    assert isinstance(model[1], nn.Tanh)
    del model[0]
    assert list(model.state_dict()) == ["1.weight", "1.bias"]
    model.append(nn.Sigmoid())
    assert len(model) == 3 and isinstance(model[2], nn.Sigmoid)
    out = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))(cn.Tensor(np.ones((4, 2), np.float32)))
    assert out.shape == (4, 1)


def test_parameter_is_a_tensor_that_requires_grad():
    param = nn.Parameter(np.zeros(3))
    assert isinstance(param, cn.Tensor) and param.requires_grad and param.is_leaf
    assert not nn.Parameter(np.zeros(3), requires_grad=False).requires_grad
    assert repr(param).startswith("Parameter containing:\nTensor(")
    with pytest.raises(TypeError, match="only float32 and float64"):
        nn.Parameter(np.zeros(3, dtype=np.int64))


def test_nn_functional_is_the_functional_api():
    import cnnnumba.nn.functional as nnF

    assert nnF.relu is F.relu and nnF.conv2d is F.conv2d and set(nnF.__all__) == set(F.__all__)
