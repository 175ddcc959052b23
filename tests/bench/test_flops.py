"""FLOP counts of known layers and of LeNet-5 and the cifar-cnn, computed by hand; the op hooks restore themselves."""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba.autograd.function import Function
from cnnnumba.bench.flops import conv2d_flops, linear_flops, model_flops, op_flops
from cnnnumba.bench.instrument import record_ops
from cnnnumba.models import cifar_cnn, lenet5, resnet20
from cnnnumba.nn.module import Module


@pytest.mark.parametrize("output_shape, weight_shape, expected", [
    ((64, 32, 32, 32), (32, 3, 3, 3), 2 * 64 * 32 * 32 * 32 * 3 * 3 * 3),     # first cifar-cnn conv
    ((1, 6, 28, 28), (6, 1, 5, 5), 2 * 28 * 28 * 6 * 25),                      # LeNet-5 conv1, one image
    ((2, 8, 4, 4), (8, 2, 3, 3), 2 * 2 * 4 * 4 * 8 * 2 * 9),                   # groups=2: Cin/groups = 2
    ((3, 5, 2, 7), (5, 4, 1, 3), 2 * 3 * 2 * 7 * 5 * 4 * 1 * 3),               # non-square kernel
])
def test_conv2d_flops(output_shape, weight_shape, expected):
    assert conv2d_flops(output_shape, weight_shape) == expected


@pytest.mark.parametrize("input_shape, weight_shape, expected", [
    ((64, 2048), (10, 2048), 2 * 64 * 2048 * 10),
    ((4, 3, 5), (7, 5), 2 * 12 * 5 * 7),                                      # (*, in): rows are all leading dims
])
def test_linear_flops(input_shape, weight_shape, expected):
    assert linear_flops(input_shape, weight_shape) == expected


def test_op_flops_counts_only_needed_backward_passes():
    shapes = ((2, 3, 8, 8), (4, 3, 3, 3), (4,))
    first_layer = op_flops("Conv2d", shapes, (2, 4, 6, 6), (False, True, True))
    per_pass = 2 * 2 * 6 * 6 * 4 * 3 * 3 * 3
    assert (first_layer.forward, first_layer.backward_input, first_layer.backward_weight) == (per_pass, 0, per_pass)
    frozen = op_flops("Linear", ((2, 5), (3, 5), (3,)), (2, 3), (True, False, False))
    assert (frozen.forward, frozen.backward_input, frozen.backward_weight) == (60, 60, 0)
    assert op_flops("MaxPool2d", ((2, 3, 8, 8),), (2, 3, 4, 4), (True,)) is None


@pytest.mark.parametrize("batch", [1, 3])
def test_lenet5_by_hand(batch):
    conv1 = 2 * batch * 28 * 28 * 6 * 1 * 5 * 5          # padding 2 keeps 28×28
    conv2 = 2 * batch * 10 * 10 * 16 * 6 * 5 * 5         # 14×14 → 10×10
    fc1, fc2, fc3 = 2 * batch * 400 * 120, 2 * batch * 120 * 84, 2 * batch * 84 * 10
    counted = model_flops(lenet5(), (batch, 1, 28, 28))
    assert [layer.kind for layer in counted.layers] == ["conv2d", "conv2d", "linear", "linear", "linear"]
    assert [layer.layer for layer in counted.layers] == ["0", "3", "7", "9", "11"]
    assert counted.forward == conv1 + conv2 + fc1 + fc2 + fc3
    # the first layer's input needs no gradient, so its backward-input pass is not counted
    assert counted.layers[0].backward_input == 0 and counted.layers[0].backward_weight == conv1
    assert counted.backward == conv1 + 2 * (conv2 + fc1 + fc2 + fc3)
    assert counted.per_step("train") == counted.forward + counted.backward
    assert counted.per_step("inference") == counted.forward


def test_cifar_cnn_by_hand():
    convs = [2 * 32 * 32 * 32 * 3 * 9, 2 * 32 * 32 * 32 * 32 * 9, 2 * 16 * 16 * 64 * 32 * 9,
             2 * 16 * 16 * 64 * 64 * 9, 2 * 8 * 8 * 128 * 64 * 9]
    linear = 2 * 2048 * 10
    counted = model_flops(cifar_cnn(), (1, 3, 32, 32))
    assert counted.forward == sum(convs) + linear
    assert counted.training_step == 3 * (sum(convs) + linear) - convs[0]


def test_resnet20_by_hand_counts_strided_and_1x1_convs_at_their_output_size():
    def conv(size, c_out, c_in, k):
        return 2 * size * size * c_out * c_in * k * k

    stem = conv(32, 16, 3, 3)
    stage1 = 6 * conv(32, 16, 16, 3)
    # first block of a stage: 3×3 stride 2 and a 1×1 stride-2 projection, both at the halved output size
    stage2 = conv(16, 32, 16, 3) + conv(16, 32, 16, 1) + 5 * conv(16, 32, 32, 3)
    stage3 = conv(8, 64, 32, 3) + conv(8, 64, 32, 1) + 5 * conv(8, 64, 64, 3)
    fc = 2 * 64 * 10
    counted = model_flops(resnet20(), (2, 3, 32, 32))
    assert [layer.layer for layer in counted.layers][:4] == ["conv1", "layers.0.conv1", "layers.0.conv2",
                                                             "layers.1.conv1"]
    shortcut = next(layer for layer in counted.layers if layer.layer == "layers.3.shortcut.0")
    assert shortcut.output_shape == (2, 32, 16, 16) and shortcut.forward == 2 * conv(16, 32, 16, 1)
    assert counted.forward == 2 * (stem + stage1 + stage2 + stage3 + fc)
    assert counted.training_step == 3 * counted.forward - 2 * stem


def test_model_flops_leaves_the_model_in_its_mode():
    model = cifar_cnn()
    running_mean = model[1].running_mean.copy()
    model_flops(model, (2, 3, 32, 32))
    assert model.training
    np.testing.assert_array_equal(model[1].running_mean, running_mean)


def test_record_ops_names_modules_times_backward_and_restores_hooks():
    apply, call = Function.__dict__["apply"], Module.__call__
    model = cn.nn.Sequential(cn.nn.Linear(3, 2), cn.nn.ReLU())
    with record_ops(model) as calls:
        prediction = model(cn.Tensor(np.ones((4, 3), np.float32)))
        loss = cn.functional.mse_loss(prediction, cn.Tensor(np.zeros((4, 2), np.float32)))
        loss.backward()
    assert [(c.module, c.op) for c in calls] == [("0", "Linear"), ("1", "ReLU"), ("(outside)", "MseLoss")]
    assert calls[0].input_shapes[:2] == ((4, 3), (2, 3)) and calls[0].output_shape == (4, 2)
    assert calls[0].needs_input_grad == (False, True, True)
    assert all(len(c.backward_seconds) == 1 and c.forward_seconds >= 0 for c in calls)
    assert Function.__dict__["apply"] is apply and Module.__call__ is call
    with pytest.raises(RuntimeError, match="inside"):
        with record_ops(model):
            raise RuntimeError("inside")
    assert Function.__dict__["apply"] is apply and Module.__call__ is call
