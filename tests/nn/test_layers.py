"""Every layer against its torch.nn twin with the same weights (loaded through state_dict): forward, input and
parameter gradients in float64 and float32; gradcheck; train/eval behaviour; constructor validation."""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import nn
from tests.helpers import TOLERANCES, requires_torch, torch

LAYERS = {
    "conv": (lambda m: m.Conv2d(3, 4, 3), (2, 3, 6, 5)),
    "conv_strided_padded_no_bias": (lambda m: m.Conv2d(2, 4, (3, 2), stride=2, padding=(1, 0), bias=False),
                                    (1, 2, 7, 6)),
    "conv_same_dilated_groups": (lambda m: m.Conv2d(4, 6, 3, padding="same", dilation=2, groups=2), (2, 4, 7, 7)),
    "conv_depthwise": (lambda m: m.Conv2d(3, 3, 3, padding=1, groups=3), (1, 3, 5, 5)),
    "linear": (lambda m: m.Linear(5, 3), (4, 5)),
    "linear_no_bias": (lambda m: m.Linear(5, 2, bias=False), (3, 5)),
    "maxpool": (lambda m: m.MaxPool2d(2), (2, 3, 6, 6)),
    "maxpool_padded_ceil": (lambda m: m.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), (1, 2, 6, 5)),
    "avgpool": (lambda m: m.AvgPool2d(2, stride=1, padding=1, count_include_pad=False), (2, 2, 5, 5)),
    "adaptive_avgpool": (lambda m: m.AdaptiveAvgPool2d((2, 3)), (2, 3, 5, 7)),
    "batchnorm_train": (lambda m: m.BatchNorm2d(3), (4, 3, 3, 3)),
    "batchnorm_no_affine_cma": (lambda m: m.BatchNorm2d(3, momentum=None, affine=False), (4, 3, 2, 2)),
    "batchnorm_untracked": (lambda m: m.BatchNorm2d(3, track_running_stats=False), (4, 3, 2, 2)),
    "batchnorm_no_bias": (lambda m: m.BatchNorm2d(3, bias=False), (4, 3, 2, 2)),
    "relu": (lambda m: m.ReLU(), (3, 4)),
    "leaky_relu": (lambda m: m.LeakyReLU(0.2), (3, 4)),
    "gelu": (lambda m: m.GELU(), (3, 4)),
    "gelu_tanh": (lambda m: m.GELU(approximate="tanh"), (3, 4)),
    "sigmoid": (lambda m: m.Sigmoid(), (3, 4)),
    "tanh": (lambda m: m.Tanh(), (3, 4)),
    "flatten": (lambda m: m.Flatten(), (2, 3, 2, 2)),
    "flatten_dims": (lambda m: m.Flatten(0, 2), (2, 3, 2, 2)),
    "identity": (lambda m: m.Identity(7, unused=True), (2, 3)),
    "dropout_eval": (lambda m: m.Dropout(0.3).eval(), (3, 4)),
    "sequential": (lambda m: m.Sequential(m.Conv2d(2, 3, 3, padding=1), m.BatchNorm2d(3), m.ReLU(), m.MaxPool2d(2),
                                          m.Flatten(), m.Linear(12, 4)), (2, 2, 4, 4)),
}


def _numpy_state(torch_module):
    return {k: v.detach().numpy().copy() for k, v in torch_module.state_dict().items()}


def _pair_modules(name, dtype):
    make, shape = LAYERS[name]
    torch_module = make(torch.nn).to(torch.float64 if dtype == np.float64 else torch.float32)
    cn_module = make(nn)
    cn_module = cn_module.double() if dtype == np.float64 else cn_module.float()
    cn_module.load_state_dict(_numpy_state(torch_module))
    cn_module.train(torch_module.training)
    return cn_module, torch_module, shape


@requires_torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_matches_torch(name, dtype):
    rtol, atol, grad_rtol, grad_atol = TOLERANCES[dtype]
    cn_module, torch_module, shape = _pair_modules(name, dtype)
    x = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    cn_x, torch_x = cn.Tensor(x.copy(), requires_grad=True), torch.tensor(x.copy(), requires_grad=True)
    cn_out, torch_out = cn_module(cn_x), torch_module(torch_x)
    np.testing.assert_allclose(cn_out.data, torch_out.detach().numpy(), rtol=rtol, atol=atol)
    assert cn_out.dtype == dtype
    projection = np.random.default_rng(2).standard_normal(cn_out.shape).astype(dtype)
    cn_out.backward(projection)
    torch_out.backward(torch.tensor(projection))
    np.testing.assert_allclose(cn_x.grad, torch_x.grad.numpy(), rtol=grad_rtol, atol=grad_atol)
    torch_params = dict(torch_module.named_parameters())
    assert [k for k, _ in cn_module.named_parameters()] == list(torch_params)
    for key, param in cn_module.named_parameters():
        np.testing.assert_allclose(param.grad, torch_params[key].grad.numpy(), rtol=grad_rtol, atol=grad_atol,
                                   err_msg=f"gradient of {key}")
    # buffers (running statistics, batch counter) evolve the same way
    torch_state = _numpy_state(torch_module)
    for key, value in cn_module.state_dict().items():
        np.testing.assert_allclose(value, torch_state[key], rtol=rtol, atol=atol, err_msg=key)
        assert value.dtype == torch_state[key].dtype, key


@requires_torch
@pytest.mark.parametrize("name", ["batchnorm_train", "batchnorm_no_affine_cma", "dropout_eval"])
def test_running_statistics_used_in_eval_after_training_steps(name):
    cn_module, torch_module, shape = _pair_modules(name, np.float64)
    rng = np.random.default_rng(3)
    for _ in range(3):
        x = rng.standard_normal(shape) * 2 + 1
        cn_module.train()(cn.Tensor(x))
        torch_module.train()(torch.tensor(x)) if "dropout" not in name else None
    x = rng.standard_normal(shape)
    expected = torch_module.eval()(torch.tensor(x)).detach().numpy()
    np.testing.assert_allclose(cn_module.eval()(cn.Tensor(x)).data, expected, rtol=1e-10, atol=1e-12)


def test_batchnorm_train_and_eval():
    bn = nn.BatchNorm2d(2, momentum=0.5).double()
    x = np.random.default_rng(0).standard_normal((8, 2, 3, 3)) * 3 + 5
    out = bn(cn.Tensor(x)).data
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-12)  # batch statistics in training
    np.testing.assert_allclose(bn.running_mean, 0.5 * x.mean(axis=(0, 2, 3)), rtol=1e-12)
    assert bn.num_batches_tracked == 1 and bn.num_batches_tracked.dtype == np.int64
    bn.eval()
    before = (bn.running_mean.copy(), int(bn.num_batches_tracked))
    expected = (x - bn.running_mean[None, :, None, None]) / np.sqrt(bn.running_var[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(bn(cn.Tensor(x)).data, expected, rtol=1e-12)
    np.testing.assert_array_equal(bn.running_mean, before[0])  # eval leaves the statistics alone
    assert int(bn.num_batches_tracked) == before[1]


def test_dropout_train_and_eval():
    x = cn.Tensor(np.ones((50, 40)))
    dropout = nn.Dropout(0.25)
    out = dropout(x).data
    assert set(np.unique(out)) <= {0.0, 1 / 0.75}
    assert 0.15 < (out == 0).mean() < 0.35
    np.testing.assert_array_equal(dropout.eval()(x).data, x.data)
    cn.manual_seed(5)
    first = nn.Dropout(0.5)(x).data
    cn.manual_seed(5)
    np.testing.assert_array_equal(nn.Dropout(0.5)(x).data, first)


@pytest.mark.parametrize("name", ["conv_same_dilated_groups", "linear", "batchnorm_train", "sequential"])
def test_layer_gradcheck_float64(name):
    make, shape = LAYERS[name]
    module = make(nn).double()
    x = np.random.default_rng(4).standard_normal(shape)
    params = list(module.parameters())  # float64 Parameters: gradcheck perturbs them in place
    inputs = [cn.Tensor(x, requires_grad=True)]
    assert cn.gradcheck(lambda x_tensor: module(x_tensor), inputs)
    assert cn.gradcheck(lambda *ps: module(cn.Tensor(x)), params)


@requires_torch
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_losses_match_torch(reduction):
    rng = np.random.default_rng(6)
    logits, target = rng.standard_normal((5, 4)), np.array([0, 3, 1, 1, 2])
    weight = np.array([1.0, 2.0, 0.5, 1.5])
    cases = [
        (nn.CrossEntropyLoss(reduction=reduction), torch.nn.CrossEntropyLoss(reduction=reduction)),
        (nn.CrossEntropyLoss(weight=weight, ignore_index=1, reduction=reduction, label_smoothing=0.1),
         torch.nn.CrossEntropyLoss(weight=torch.tensor(weight), ignore_index=1, reduction=reduction,
                                   label_smoothing=0.1)),
    ]
    for cn_loss, torch_loss in cases:
        cn_x, torch_x = cn.Tensor(logits.copy(), requires_grad=True), torch.tensor(logits, requires_grad=True)
        cn_out, torch_out = cn_loss(cn_x, cn.Tensor(target)), torch_loss(torch_x, torch.tensor(target))
        np.testing.assert_allclose(cn_out.data, torch_out.detach().numpy(), rtol=1e-12, atol=1e-14)
        cn_out.backward(np.ones(cn_out.shape))
        torch_out.backward(torch.ones(torch_out.shape, dtype=torch.float64))
        np.testing.assert_allclose(cn_x.grad, torch_x.grad.numpy(), rtol=1e-12, atol=1e-14)
    prediction, goal = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    expected = torch.nn.MSELoss(reduction=reduction)(torch.tensor(prediction), torch.tensor(goal)).numpy()
    np.testing.assert_allclose(nn.MSELoss(reduction=reduction)(cn.Tensor(prediction), cn.Tensor(goal)).data, expected,
                               rtol=1e-12)
    with pytest.warns(UserWarning, match="size_average and reduce args will be deprecated"):
        assert nn.MSELoss(size_average=False).reduction == "sum"


@requires_torch
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_repr_matches_torch(name):
    make, _ = LAYERS[name]
    assert repr(make(nn)) == repr(make(torch.nn))


@pytest.mark.parametrize("make,error,message", [
    (lambda: nn.Conv2d(3, 4, 3, groups=2), ValueError, "in_channels must be divisible by groups"),
    (lambda: nn.Conv2d(4, 3, 3, groups=2), ValueError, "out_channels must be divisible by groups"),
    (lambda: nn.Conv2d(4, 4, 3, groups=0), ValueError, "groups must be a positive integer"),
    (lambda: nn.Conv2d(0, 4, 3), ValueError, "in_channels must be a positive integer, but got 0"),
    (lambda: nn.Conv2d(3, 4, 0), ValueError, r"kernel_size must be positive, but got \(0, 0\)"),
    (lambda: nn.Conv2d(3, 4, 3, padding="full"), ValueError, "Invalid padding string 'full'"),
    (lambda: nn.Conv2d(3, 4, 3, stride=2, padding="same"), ValueError,
     "padding='same' is not supported for strided convolutions"),
    (lambda: nn.Conv2d(3, 4, 3, padding=-1), ValueError, r"padding must be non-negative"),
    (lambda: nn.Conv2d(3, 4, 3, padding_mode="mirror"), ValueError, "padding_mode must be one of"),
    (lambda: nn.Conv2d(3, 4, 3, padding_mode="reflect"), ValueError, "padding_mode='reflect' is not supported yet"),
    (lambda: nn.Conv2d(3, 4, 3, dtype=np.int32), TypeError, "dtype must be float32 or float64, but got int32"),
    (lambda: nn.Linear(3, 4, device="cuda"), ValueError, "CPU only, but got device='cuda'"),
    (lambda: nn.Linear(-3, 4), ValueError, "in_features must be a positive integer, but got -3"),
    (lambda: nn.MaxPool2d(0), ValueError, "kernel_size must be greater than zero"),
    (lambda: nn.MaxPool2d(2, padding=2), ValueError, "pad should be at most half of effective kernel size"),
    (lambda: nn.AvgPool2d(2, stride=0), ValueError, "stride must be greater than zero"),
    (lambda: nn.Dropout(1.5), ValueError, "dropout probability has to be between 0 and 1, but got 1.5"),
    (lambda: nn.GELU(approximate="fast"), ValueError, "approximate argument must be either none or tanh"),
    (lambda: nn.BatchNorm2d(0), ValueError, "num_features must be a positive integer"),
    (lambda: nn.BatchNorm2d(3)(cn.Tensor(np.ones((2, 3), np.float32))), ValueError, r"expected 4D input \(got 2D"),
    (lambda: nn.Conv2d(3, 4, 3)(cn.Tensor(np.ones((1, 2, 5, 5), np.float32))), ValueError, "3 channels"),
    (lambda: nn.Linear(3, 4)(cn.Tensor(np.ones((2, 3)))), TypeError, "float"),
])
def test_validation_errors(make, error, message):
    with pytest.raises(error, match=message):
        make()
