"""Error inputs, one table: every public function, module, optimizer, scheduler, loader, checkpoint call and CLI
option given a bad argument raises a clear error (the exception PyTorch raises there: ValueError or TypeError, and
IndexError, RuntimeError or KeyError where PyTorch uses those) whose message names what was expected and what was
given; nothing crashes and nothing returns a silently wrong answer."""
import re

import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import cli, models, nn, optim, train
from cnnnumba import functional as F
from cnnnumba.data import ArrayDataset, DataLoader
from cnnnumba.data import transforms as T
from cnnnumba.io.checkpoint import CheckpointError

T_ = cn.Tensor


def f32(*shape):
    return T_(np.zeros(shape, np.float32))


def f64(*shape):
    return T_(np.zeros(shape, np.float64))


x4 = f32(2, 3, 8, 8)
w = f32(4, 3, 3, 3)


def P():
    return [nn.Parameter(np.zeros(3, np.float32))]


def P_with_grad():
    parameter = nn.Parameter(np.ones(3, np.float32))
    parameter.grad = np.ones(3, np.float32)
    return [parameter]


def ds():
    return ArrayDataset(np.zeros((4, 1, 8, 8), np.float32), np.zeros(4, np.int64))


def opt():
    return optim.SGD(P(), lr=0.1)


# (name, call, exception, the start of its message)
ERROR_INPUTS = [
    ('conv2d rank', lambda: F.conv2d(f32(3, 8), w),
     ValueError, 'Expected 3D (unbatched) or 4D (batched) input to conv2d, but got input of size: [3, 8]'),
    ('conv2d channels', lambda: F.conv2d(f32(2, 4, 8, 8), w),
     ValueError, 'Given groups=1, weight of size [4, 3, 3, 3], expected input[2, 4, 8, 8] to have 3 channels'),
    ('conv2d weight rank', lambda: F.conv2d(x4, f32(4, 3, 3)),
     ValueError, 'Expected 4D weight of shape (out_channels, in_channels/groups, kH, kW) for 4D input [2, 3,'),
    ('conv2d groups divide', lambda: F.conv2d(x4, f32(4, 1, 3, 3), groups=2),
     ValueError, 'Given groups=2, weight of size [4, 1, 3, 3], expected input[2, 3, 8, 8] to have 2 channels'),
    ('conv2d groups 0', lambda: F.conv2d(x4, w, groups=0),
     ValueError, 'non-positive groups is not supported, but got groups=0'),
    ('conv2d stride 0', lambda: F.conv2d(x4, w, stride=0),
     ValueError, 'non-positive stride is not supported, but got stride=(0, 0)'),
    ('conv2d stride neg', lambda: F.conv2d(x4, w, stride=(1, -1)),
     ValueError, 'non-positive stride is not supported, but got stride=(1, -1)'),
    ('conv2d padding neg', lambda: F.conv2d(x4, w, padding=-1),
     ValueError, 'negative padding is not supported, but got padding=-1'),
    ('conv2d padding str', lambda: F.conv2d(x4, w, padding="full"),
     ValueError, "padding must be an int, a pair of ints, 'same' or 'valid', but got 'full'"),
    ('conv2d dilation 0', lambda: F.conv2d(x4, w, dilation=0),
     ValueError, 'dilation should be greater than zero, but got dilation=(0, 0)'),
    ('conv2d kernel too big', lambda: F.conv2d(f32(1, 3, 2, 2), w),
     ValueError, "Calculated padded input size per channel: (2 x 2). Kernel size: (3 x 3). Kernel size can't"),
    ('conv2d dtype mismatch', lambda: F.conv2d(x4, f64(4, 3, 3, 3)),
     TypeError, 'Input type (float32) and weight type (float64) should be the same'),
    ('conv2d int input', lambda: F.conv2d(T_(np.zeros((2, 3, 8, 8), np.int32)), w),
     TypeError, 'conv2d expected a floating-point input (float32 or float64), but got int32'),
    ('conv2d bias shape', lambda: F.conv2d(x4, w, f32(5)),
     ValueError, 'Given weight of size [4, 3, 3, 3], expected bias to be 1-dimensional with 4 elements, but '),
    ('conv2d bias dtype', lambda: F.conv2d(x4, w, f64(4)),
     TypeError, 'Input type (float32) and bias type (float64) should be the same'),
    ('conv2d stride float', lambda: F.conv2d(x4, w, stride=1.5),
     TypeError, 'stride must be an int or a pair of ints, but got 1.5'),
    ('conv2d stride triple', lambda: F.conv2d(x4, w, stride=(1, 1, 1)),
     TypeError, 'stride must be an int or a pair of ints, but got (1, 1, 1)'),
    ('conv2d empty batch', lambda: F.conv2d(f32(0, 3, 8, 8), w),
     ValueError, 'conv2d: input[0, 3, 8, 8] has an empty batch'),
    ('max_pool2d rank', lambda: F.max_pool2d(f32(8, 8), 2),
     ValueError, 'max_pool2d(): expected a 3D (C, H, W) or 4D (N, C, H, W) input with non-zero C, H and W (o'),
    ('max_pool2d kernel 0', lambda: F.max_pool2d(x4, 0),
     ValueError, 'max_pool2d: kernel size should be greater than zero, but got kH: 0 kW: 0'),
    ('max_pool2d pad too big', lambda: F.max_pool2d(x4, 2, padding=2),
     ValueError, 'max_pool2d: pad should be at most half of effective kernel size, but got pad=2, kernel_siz'),
    ('max_pool2d stride 0', lambda: F.max_pool2d(x4, 2, stride=0),
     ValueError, 'max_pool2d: stride should not be zero, but got stride (0, 0)'),
    ('max_pool2d too small', lambda: F.max_pool2d(f32(1, 1, 2, 2), 3),
     ValueError, 'max_pool2d: Given input size: (1, 2, 2). Output size is too small (max_pool2d: kernel size'),
    ('max_pool2d int', lambda: F.max_pool2d(T_(np.zeros((1, 1, 4, 4), np.int64)), 2),
     TypeError, 'max_pool2d(): expected a float32 or float64 input, but got int64'),
    ('max_pool2d dilation 0', lambda: F.max_pool2d(x4, 2, dilation=0),
     ValueError, 'max_pool2d: dilation should be greater than zero, but got dilationH: 0 dilationW: 0'),
    ('avg_pool2d divisor 0', lambda: F.avg_pool2d(x4, 2, divisor_override=0),
     ValueError, 'avg_pool2d(): divisor must be not zero'),
    ('avg_pool2d pad', lambda: F.avg_pool2d(x4, 2, padding=3),
     ValueError, 'avg_pool2d: pad should be at most half of effective kernel size, but got pad=3, kernel_siz'),
    ('avg_pool2d kernel str', lambda: F.avg_pool2d(x4, "2"),
     TypeError, "kernel_size must be an int or a pair of ints, but got '2'"),
    ('adaptive size neg', lambda: F.adaptive_avg_pool2d(x4, (2, -1)),
     ValueError, 'adaptive_avg_pool2d: elements of output_size must be greater than or equal to 0 but receiv'),
    ('adaptive rank', lambda: F.adaptive_avg_pool2d(f32(8), 2),
     ValueError, 'adaptive_avg_pool2d(): expected a 3D (C, H, W) or 4D (N, C, H, W) input with non-zero C, H'),
    ('linear features', lambda: F.linear(f32(2, 5), f32(3, 4)),
     ValueError, 'mat1 and mat2 shapes cannot be multiplied (2x5 and 4x3)'),
    ('linear weight rank', lambda: F.linear(f32(2, 4), f32(4)),
     ValueError, 'linear(): expected weight to be 2D (out_features, in_features), but got shape (4,)'),
    ('linear bias', lambda: F.linear(f32(2, 4), f32(3, 4), f32(4)),
     ValueError, 'linear(): expected bias of shape (3,) to match weight (3, 4), but got (4,)'),
    ('linear dtype', lambda: F.linear(f32(2, 4), f64(3, 4)),
     TypeError, 'linear(): expected input, weight and bias to have the same dtype, but got float32 != float'),
    ('matmul shapes', lambda: F.matmul(f32(2, 3), f32(4, 5)),
     ValueError, 'matmul: shapes (2, 3) and (4, 5) cannot be multiplied (3 != 4)'),
    ('matmul 0d', lambda: F.matmul(f32(), f32(3)),
     ValueError, 'matmul: both arguments need at least 1 dimension, but got a scalar'),
    ('relu int', lambda: F.relu(T_(np.zeros(3, np.int64))),
     TypeError, 'relu(): expected a float32 or float64 input, but got int64'),
    ('leaky slope str', lambda: F.leaky_relu(f32(3), negative_slope="a"),
     TypeError, "leaky_relu(): negative_slope must be a number, but got 'a'"),
    ('hardtanh bound str', lambda: F.hardtanh(f32(3), min_val="a"),
     TypeError, "hardtanh(): min_val must be a number, but got 'a'"),
    ('hardtanh bounds reversed', lambda: F.hardtanh(f32(3), min_val=2.0, max_val=1.0),
     ValueError, "hardtanh(): max_val (1.0) must be greater than or equal to min_val (2.0)"),
    ('relu6 ndarray', lambda: F.relu6(np.zeros(3)), TypeError, "relu6(): argument 'input' must be a Tensor"),
    ('gelu approximate', lambda: F.gelu(f32(3), approximate="fast"),
     ValueError, "gelu(): approximate argument must be either none or tanh, but got 'fast'"),
    ('sigmoid object', lambda: F.sigmoid(T_(np.array(["a"]))),
     TypeError, 'sigmoid(): expected a float32 or float64 input, but got <U1'),
    ('batch_norm channels', lambda: F.batch_norm(x4, f32(4), f32(4), training=False),
     ValueError, 'running_mean should contain 3 elements not 4 (got shape [4])'),
    ('batch_norm rank', lambda: F.batch_norm(f32(3), f32(3), f32(3)),
     ValueError, 'batch_norm: expected input of at least 2 dimensions (N, C, ...), but got input of size [3]'),
    ('batch_norm weight', lambda: F.batch_norm(x4, f32(3), f32(3), weight=f32(2)),
     ValueError, 'weight should contain 3 elements not 2 (got shape [2])'),
    ('batch_norm one value train', lambda: F.batch_norm(f32(1, 3), None, None, training=True),
     ValueError, 'Expected more than 1 value per channel when training, got input size [1, 3]'),
    ('batch_norm eps neg', lambda: F.batch_norm(x4, f32(3), f32(3), eps=-1.0),
     ValueError, 'batch_norm: eps must be a non-negative number, but got -1.0'),
    ('batch_norm no stats eval', lambda: F.batch_norm(x4, None, None, training=False),
     ValueError, 'running_mean must be defined in evaluation mode'),
    ('dropout p', lambda: F.dropout(f32(3), p=1.5),
     ValueError, 'dropout probability has to be between 0 and 1, but got 1.5'),
    ('dropout p neg', lambda: F.dropout(f32(3), p=-0.1),
     ValueError, 'dropout probability has to be between 0 and 1, but got -0.1'),
    ('dropout p str', lambda: F.dropout(f32(3), p="0.5"),
     TypeError, "dropout(): p must be a number, but got '0.5'"),
    ('softmax dim', lambda: F.softmax(f32(2, 3), 2),
     IndexError, 'Dimension out of range (expected to be in range of [-2, 1], but got 2)'),
    ('softmax dim missing', lambda: F.softmax(f32(2, 3)),
     TypeError, "softmax() missing 1 required positional argument: 'dim'"),
    ('log_softmax dim float', lambda: F.log_softmax(f32(2, 3), 1.0),
     TypeError, 'log_softmax: dim must be an int, but got 1.0'),
    ('ce target range', lambda: F.cross_entropy(f32(2, 3), np.array([0, 3])),
     ValueError, 'Target 3 is out of bounds.'),
    ('ce target neg', lambda: F.cross_entropy(f32(2, 3), np.array([0, -2])),
     ValueError, 'Target -2 is out of bounds.'),
    ('ce target shape', lambda: F.cross_entropy(f32(2, 3), np.array([0, 1, 2])),
     ValueError, 'Expected input batch_size (2) to match target batch_size (3).'),
    ('ce target float shape', lambda: F.cross_entropy(f32(2, 3), np.zeros((2, 4), np.float32)),
     TypeError, 'expected target dtype to be an integer type (class indices), but got float32; class-probab'),
    ('ce reduction', lambda: F.cross_entropy(f32(2, 3), np.array([0, 1]), reduction="avg"),
     ValueError, "avg is not a valid value for reduction; expected 'none', 'mean' or 'sum'"),
    ('ce smoothing', lambda: F.cross_entropy(f32(2, 3), np.array([0, 1]), label_smoothing=1.5),
     ValueError, 'label_smoothing must be between 0.0 and 1.0. Got: 1.5'),
    ('ce weight shape', lambda: F.cross_entropy(f32(2, 3), np.array([0, 1]), weight=f32(4)),
     ValueError, 'weight tensor should be defined either for all 3 classes or no classes but got weight tens'),
    ('ce target float labels', lambda: F.cross_entropy(f32(2, 3), np.array([0.0, 1.0])),
     TypeError, 'expected target dtype to be an integer type (class indices), but got float64; class-probab'),
    ('ce logits int', lambda: F.cross_entropy(T_(np.zeros((2, 3), np.int64)), np.array([0, 1])),
     TypeError, 'cross_entropy: expected a floating-point input (float32 or float64), but got int64'),
    ('nll target range', lambda: F.nll_loss(f32(2, 3), np.array([0, 5])),
     ValueError, 'Target 5 is out of bounds.'),
    ('mse shapes', lambda: F.mse_loss(f32(2, 3), f32(3, 2)),
     ValueError, 'Using a target size ([3, 2]) that is different to the input size ([2, 3]) is not supported'),
    ('mse reduction', lambda: F.mse_loss(f32(2, 3), f32(2, 3), reduction="none2"),
     ValueError, "none2 is not a valid value for reduction; expected 'none', 'mean' or 'sum'"),
    ('mse dtype', lambda: F.mse_loss(f32(2, 3), f64(2, 3)),
     TypeError, "mse_loss: expected target to have the input's dtype float32, but got float64"),
    ('flatten dim', lambda: F.flatten(f32(2, 3), start_dim=3),
     IndexError, 'Dimension out of range (expected to be in range of [-2, 1], but got 3)'),
    ('cat empty', lambda: F.cat([]),
     ValueError, 'cat(): expected a non-empty list of Tensors'),
    ('cat shapes', lambda: F.cat([f32(2, 3), f32(2, 4)], dim=0),
     ValueError, 'Sizes of tensors must match except in dimension 0. Expected size 3 but got size 4 for tens'),
    ('cat dim', lambda: F.cat([f32(2, 3), f32(2, 3)], dim=2),
     IndexError, 'Dimension out of range (expected to be in range of [-2, 1], but got 2)'),
    ('cat dtype', lambda: F.cat([f32(2, 3), f64(2, 3)]),
     TypeError, 'cat(): expected all tensors to have dtype float32, but got float64 at position 1'),
    ('Tensor object', lambda: T_(np.array([object()])),
     TypeError, 'Tensor data must be numeric, but got an object array'),
    ('Tensor requires_grad int', lambda: T_(np.zeros(3, np.int64), requires_grad=True),
     TypeError, 'only float32 and float64 tensors can require gradients, but got dtype int64'),
    ('Tensor add shapes', lambda: f32(2, 3) + f32(4),
     ValueError, 'operands could not be broadcast together with shapes (2,3) (4,) '),
    ('Tensor reshape', lambda: f32(2, 3).reshape(4, 2),
     ValueError, 'shape (4, 2) is invalid for input of size 6 (shape (2, 3))'),
    ('Tensor item', lambda: f32(2).item(),
     ValueError, 'a Tensor with 2 elements cannot be converted to a Python scalar'),
    ('Tensor backward nonscalar', lambda: T_(np.zeros(2, np.float32), requires_grad=True).backward(),
     RuntimeError, 'grad can be implicitly created only for scalar outputs, but this tensor has shape (2,)'),
    ('Tensor backward grad shape', lambda: T_(np.zeros(2, np.float32), requires_grad=True).backward(np.zeros(3)),
     ValueError, 'grad has shape (3,), but the tensor has shape (2,)'),
    ('Tensor sum dim', lambda: f32(2, 3).sum(dim=5),
     IndexError, 'Dimension out of range (expected to be in range of [-2, 1], but got 5)'),
    ('Conv2d in_channels 0', lambda: nn.Conv2d(0, 4, 3),
     ValueError, 'in_channels must be a positive integer, but got 0'),
    ('Conv2d groups', lambda: nn.Conv2d(3, 4, 3, groups=2),
     ValueError, 'in_channels must be divisible by groups'),
    ('Conv2d kernel 0', lambda: nn.Conv2d(3, 4, 0),
     ValueError, 'kernel_size must be positive, but got (0, 0)'),
    ('Conv2d padding_mode', lambda: nn.Conv2d(3, 4, 3, padding_mode="reflect"),
     ValueError, "padding_mode='reflect' is not supported yet; only 'zeros' is"),
    ('Conv2d float channels', lambda: nn.Conv2d(3.0, 4, 3),
     ValueError, 'in_channels must be a positive integer, but got 3.0'),
    ('Conv2d forward channels', lambda: nn.Conv2d(3, 4, 3)(f32(1, 2, 8, 8)),
     ValueError, 'Given groups=1, weight of size [4, 3, 3, 3], expected input[1, 2, 8, 8] to have 3 channels'),
    ('Linear features 0', lambda: nn.Linear(0, 3),
     ValueError, 'in_features must be a positive integer, but got 0'),
    ('Linear negative', lambda: nn.Linear(3, -1),
     ValueError, 'out_features must be a positive integer, but got -1'),
    ('Linear forward', lambda: nn.Linear(3, 2)(f32(2, 4)),
     ValueError, 'mat1 and mat2 shapes cannot be multiplied (2x4 and 3x2)'),
    ('BatchNorm2d features', lambda: nn.BatchNorm2d(0),
     ValueError, 'num_features must be a positive integer, but got 0'),
    ('BatchNorm2d forward', lambda: nn.BatchNorm2d(3)(f32(2, 4, 4, 4)),
     ValueError, 'running_mean should contain 4 elements not 3 (got shape [3])'),
    ('BatchNorm2d forward rank', lambda: nn.BatchNorm2d(3)(f32(2, 3)),
     ValueError, 'expected 4D input (got 2D input)'),
    ('MaxPool2d kernel', lambda: nn.MaxPool2d(0),
     ValueError, 'kernel_size must be greater than zero, but got 0'),
    ('AvgPool2d kernel', lambda: nn.AvgPool2d(-1),
     ValueError, 'kernel_size must be greater than zero, but got -1'),
    ('Dropout p', lambda: nn.Dropout(2.0),
     ValueError, 'dropout probability has to be between 0 and 1, but got 2.0'),
    ('GELU approx', lambda: nn.GELU("fast"),
     ValueError, "approximate argument must be either none or tanh, but got 'fast'"),
    ('Flatten dims', lambda: nn.Flatten(2, 1)(f32(2, 3, 4)),
     ValueError, 'flatten() has invalid args: start_dim (2) cannot come after end_dim (1)'),
    ('Sequential non-module', lambda: nn.Sequential(nn.ReLU(), 3),
     TypeError, 'int is not a Module subclass'),
    ('Module add_module name', lambda: nn.Module().add_module("a.b", nn.ReLU()),
     KeyError, 'module name can\'t contain "."'),
    ('Module register_parameter', lambda: nn.Module().register_parameter("w", np.zeros(3)),
     TypeError, "cannot assign 'ndarray' object to parameter 'w' (cnnnumba.nn.Parameter or None required)"),
    ('load_state_dict missing', lambda: nn.Linear(3, 2).load_state_dict({"weight": np.zeros((2, 3), np.float32)}),
     RuntimeError, 'Missing key(s) in state_dict: "bias".'),
    ('load_state_dict shape', lambda: nn.Linear(3, 2).load_state_dict({"weight": np.zeros((2, 4), np.float32),
                                                                  "bias": np.zeros(2, np.float32)}),
     RuntimeError, 'size mismatch for weight: copying a param with shape (2, 4) from checkpoint, the shape in '),
    ('load_state_dict type', lambda: nn.Linear(3, 2).load_state_dict([1, 2]),
     TypeError, 'Expected state_dict to be dict-like, got list.'),
    ('Parameter int', lambda: nn.Parameter(np.zeros(3, np.int64)),
     TypeError, 'only float32 and float64 tensors can require gradients, but got dtype int64'),
    ('clip_grad_norm norm_type', lambda: nn.utils.clip_grad_norm_(P(), 1.0, norm_type="fro2"),
     ValueError, "could not convert string to float: 'fro2'"),
    ('init kaiming mode', lambda: nn.init.kaiming_uniform_(f32(3, 3), mode="fan_x"),
     ValueError, "Mode fan_x not supported, please use one of ['fan_in', 'fan_out']"),
    ('init gain', lambda: nn.init.calculate_gain("swish"),
     ValueError, 'Unsupported nonlinearity swish'),
    ('init fan 1d', lambda: nn.init.xavier_uniform_(f32(3)),
     ValueError, 'Fan in and fan out can not be computed for tensor with fewer than 2 dimensions'),
    ('SGD lr neg', lambda: optim.SGD(P(), lr=-1),
     ValueError, 'Invalid learning rate: -1'),
    ('SGD momentum neg', lambda: optim.SGD(P(), lr=0.1, momentum=-0.5),
     ValueError, 'Invalid momentum value: -0.5'),
    ('SGD nesterov', lambda: optim.SGD(P(), lr=0.1, nesterov=True),
     ValueError, 'Nesterov momentum requires a momentum and zero dampening'),
    ('SGD weight_decay', lambda: optim.SGD(P(), lr=0.1, weight_decay=-1),
     ValueError, 'Invalid weight_decay value: -1'),
    ('SGD empty', lambda: optim.SGD([], lr=0.1),
     ValueError, 'optimizer got an empty parameter list'),
    ('SGD params tensor', lambda: optim.SGD(nn.Parameter(np.zeros(3, np.float32)), lr=0.1),
     TypeError, 'params argument given to the optimizer should be an iterable of Tensors or dicts, but got '),
    ('Adam betas', lambda: optim.Adam(P(), betas=(1.0, 0.999)),
     ValueError, 'Invalid beta parameter at index 0: 1.0'),
    ('Adam betas2', lambda: optim.Adam(P(), betas=(0.9, -0.1)),
     ValueError, 'Invalid beta parameter at index 1: -0.1'),
    ('Adam eps', lambda: optim.Adam(P(), eps=-1e-8),
     ValueError, 'Invalid epsilon value: -1e-08'),
    ('Adam lr', lambda: optim.Adam(P(), lr=-1e-3),
     ValueError, 'Invalid learning rate: -0.001'),
    ('AdamW wd', lambda: optim.AdamW(P(), weight_decay=-0.1),
     ValueError, 'Invalid weight_decay value: -0.1'),
    ('Adam betas len', lambda: optim.Adam(P(), betas=(0.9,)),
     ValueError, 'betas must be a pair of floats, but got (0.9,)'),
    ('opt load_state_dict', lambda: opt().load_state_dict({"state": {}, "param_groups": []}),
     ValueError, 'loaded state dict has a different number of parameter groups'),
    ('StepLR step_size', lambda: optim.lr_scheduler.StepLR(opt(), step_size=0),
     ValueError, 'StepLR expected step_size to be a positive int, but got 0'),
    ('StepLR not opt', lambda: optim.lr_scheduler.StepLR("opt", step_size=1),
     TypeError, 'str is not an Optimizer'),
    ('CosineAnnealingLR T_max', lambda: optim.lr_scheduler.CosineAnnealingLR(opt(), T_max=0),
     ValueError, 'CosineAnnealingLR expected T_max to be a positive number, but got 0'),
    ('OneCycleLR total', lambda: optim.lr_scheduler.OneCycleLR(opt(), max_lr=0.1),
     ValueError, 'You must define either total_steps OR (epochs AND steps_per_epoch)'),
    ('OneCycleLR pct', lambda: optim.lr_scheduler.OneCycleLR(opt(), max_lr=0.1, total_steps=10, pct_start=1.5),
     ValueError, 'Expected float between 0 and 1 pct_start, but got 1.5'),
    ('OneCycleLR anneal', lambda: optim.lr_scheduler.OneCycleLR(opt(), max_lr=0.1, total_steps=10, anneal_strategy="x"),
     ValueError, "anneal_strategy must be one of 'cos' or 'linear', instead got x"),
    ('OneCycleLR overstep', lambda: [s.step() for s in [optim.lr_scheduler.OneCycleLR(opt(), max_lr=0.1, total_steps=2)]
                                    for _ in range(3)],
     ValueError, 'Tried to step 3 times. The specified number of total steps is 2'),
    ('ArrayDataset lengths', lambda: ArrayDataset(np.zeros((4, 1, 8, 8), np.float32), np.zeros(3, np.int64)),
     ValueError, 'ArrayDataset expected as many labels as images, but got 4 images (shape (4, 1, 8, 8)) and '),
    ('ArrayDataset index', lambda: ds()[4],
     IndexError, 'index 4 is out of range for a data set of 4 samples'),
    ('DataLoader batch 0', lambda: DataLoader(ds(), batch_size=0),
     ValueError, 'batch_size should be a positive integer value, but got batch_size=0'),
    ('DataLoader batch float', lambda: DataLoader(ds(), batch_size=2.0),
     ValueError, 'batch_size should be a positive integer value, but got batch_size=2.0'),
    ('DataLoader seed neg', lambda: DataLoader(ds(), seed=-1),
     ValueError, 'seed should be a non-negative integer, but got seed=-1'),
    ('DataLoader shuffle str', lambda: DataLoader(ds(), shuffle="yes"),
     TypeError, "shuffle should be a boolean value, but got shuffle='yes'"),
    ('DataLoader load_state', lambda: DataLoader(ds()).load_state_dict({"x": 1}),
     ValueError, "DataLoader state_dict expected keys ['batches_yielded', 'generator_state'], but got ['x']"),
    ('Normalize std 0', lambda: T.Normalize([0.5], [0.0]),
     ValueError, 'std evaluated to zero, leading to division by zero (std=[0.0])'),
    ('RandomCrop size', lambda: T.RandomCrop(0),
     ValueError, 'RandomCrop size should be positive, but got 0'),
    ('RandomHorizontalFlip p', lambda: T.RandomHorizontalFlip(2.0),
     ValueError, 'RandomHorizontalFlip probability should be between 0 and 1, but got 2.0'),
    ('load_mnist missing', lambda: cn.data.load_mnist("/nonexistent"),
     FileNotFoundError, 'none of these files exists: /nonexistent/train-images-idx3-ubyte, /nonexistent/train-image'),
    ('load_cifar10 missing', lambda: cn.data.load_cifar10("/nonexistent"),
     FileNotFoundError, 'CIFAR-10 binary batches missing: /nonexistent/data_batch_1.bin, /nonexistent/data_batch_2.'),
    ('manual_seed neg', lambda: cn.manual_seed(-1),
     ValueError, 'manual_seed expected a non-negative seed, but got -1'),
    ('manual_seed float', lambda: cn.manual_seed(1.5),
     TypeError, 'manual_seed expected an int seed, but got float'),
    ('set_num_threads 0', lambda: cn.set_num_threads(0),
     ValueError, 'set_num_threads expected a value between 1 and 2 (the threads Numba started with), but got'),
    ('set_num_threads big', lambda: cn.set_num_threads(1000),
     ValueError, 'set_num_threads expected a value between 1 and 2 (the threads Numba started with), but got'),
    ('set_num_threads str', lambda: cn.set_num_threads("2"),
     TypeError, 'set_num_threads expected an int, but got str'),
    ('gradcheck nontensor', lambda: cn.gradcheck(lambda x: x, [np.zeros(3)]),
     ValueError, 'gradcheck: none of the inputs is a Tensor with requires_grad=True'),
    ('gradcheck f32', lambda: cn.gradcheck(lambda x: x * 2, [T_(np.zeros(3, np.float32), requires_grad=True)]),
     TypeError, 'gradcheck needs float64 inputs for accurate differences, but got float32'),
    ('lenet5 size', lambda: models.lenet5(image_size=4),
     ValueError, 'lenet5 needs images of at least 16×16 pixels, but got 4×4'),
    ('resnet20 classes', lambda: models.resnet20(num_classes=0),
     ValueError, 'out_features must be a positive integer, but got 0'),
    ('cifar_cnn channels', lambda: models.cifar_cnn(in_channels=0),
     ValueError, 'in_channels must be a positive integer, but got 0'),
    ('small_cnn forward', lambda: models.small_cnn()(f32(2, 3, 8, 8)),
     ValueError, 'Given groups=1, weight of size [16, 1, 3, 3], expected input[2, 3, 8, 8] to have 1 channel'),
    ('tanh int', lambda: F.tanh(T_(np.zeros(3, np.int32))),
     TypeError, 'tanh(): expected a float32 or float64 input, but got int32'),
    ('AdaptiveAvgPool2d forward rank', lambda: nn.AdaptiveAvgPool2d(2)(f32(4, 4)),
     ValueError, 'adaptive_avg_pool2d(): expected a 3D (C, H, W) or 4D (N, C, H, W) input'),
    ('conv2d list input', lambda: F.conv2d([[1.0]], w),
     ValueError, 'Expected 3D (unbatched) or 4D (batched) input to conv2d, but got input of size: [1, 1]'),
    ('LeakyReLU forward slope', lambda: nn.LeakyReLU("x")(f32(3)),
     TypeError, "leaky_relu(): negative_slope must be a number, but got 'x'"),
    ('Hardtanh bounds reversed', lambda: nn.Hardtanh(3, 1)(f32(3)),
     ValueError, "max_val (1) must be greater than or equal to min_val (3)"),
    ('ReLU6 ndarray', lambda: nn.ReLU6()(np.zeros(3)), TypeError, "argument 'input' must be a Tensor, but got ndarray"),
    ('CrossEntropyLoss reduction', lambda: nn.CrossEntropyLoss(reduction="avg")(f32(2, 3), np.array([0, 1])),
     ValueError, "avg is not a valid value for reduction; expected 'none', 'mean' or 'sum'"),
    ('MSELoss reduction', lambda: nn.MSELoss(reduction="avg")(f32(2, 3), f32(2, 3)),
     ValueError, "avg is not a valid value for reduction; expected 'none', 'mean' or 'sum'"),
    ('clip_grad_norm max_norm', lambda: nn.utils.clip_grad_norm_(P_with_grad(), "a"),
     ValueError, "could not convert string to float: 'a'"),
    ('fit epochs', lambda: train.fit(models.small_cnn(), opt(), DataLoader(ds()), -1),
     ValueError, 'epochs must be a non-negative int, but got -1'),
    ('fit detect_anomaly', lambda: train.fit(models.small_cnn(), opt(), DataLoader(ds()), 1, detect_anomaly=1),
     TypeError, 'fit expected detect_anomaly to be a bool, but got int'),
    ('evaluate empty', lambda: train.evaluate(models.small_cnn(), []),
     ValueError, 'evaluate: the loader yielded no samples'),
    ('captured step labels', lambda: cn.graph.capture(models.small_cnn(), nn.CrossEntropyLoss(),
                                                      optim.SGD(models.small_cnn().parameters(), lr=0.1))(
        np.zeros((2, 1, 8, 8), np.float32), np.zeros(3, np.int64)),
     ValueError, 'Expected input batch_size (2) to match target batch_size (3); labels must have shape (2,)'),
    ('capture not a module', lambda: cn.graph.capture("model"),
     TypeError, 'capture() expected an nn.Module, but got str'),
    ('detect_anomaly check_nan', lambda: cn.autograd.detect_anomaly(check_nan=None).__enter__(),
     TypeError, 'detect_anomaly expected check_nan to be a bool, but got NoneType'),
]

CHECKPOINT_INPUTS = [
    ("save object", lambda path: cn.save({"a": object()}, path),
     TypeError, "cannot save an object of type builtins.object at ['a']"),
    ("save into a missing folder", lambda path: cn.save({"a": 1}, path.parent / "missing" / "x.ckpt"),
     FileNotFoundError, "missing does not exist"),
    ("load missing", lambda path: cn.load(path), FileNotFoundError, "no checkpoint at"),
    ("load garbage", lambda path: (path.write_bytes(b"garbage"), cn.load(path)),
     CheckpointError, "not a cnnnumba checkpoint (not an .npz archive)"),
    ("load a directory", lambda path: cn.load(path.parent), IsADirectoryError, "is a folder, not a checkpoint file"),
]


@pytest.mark.parametrize("call, error, message", [pytest.param(*row[1:], id=row[0]) for row in ERROR_INPUTS])
def test_bad_input_raises_a_clear_error(call, error, message):
    with pytest.raises(error) as info:
        call()
    text = info.value.args[0] if error is KeyError else str(info.value)  # str(KeyError) adds quotes
    assert message in text, text


@pytest.mark.parametrize("call, error, message", [pytest.param(*row[1:], id=row[0]) for row in CHECKPOINT_INPUTS])
def test_bad_checkpoint_call_raises_a_clear_error(tmp_path, call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call(tmp_path / "x.ckpt")


CLI_INPUTS = [
    (["train", "--epochs", "1.5"], "argument --epochs: expected a positive integer, but got '1.5'"),
    (["train", "--batch-size", "0"], "argument --batch-size: expected a positive integer, but got 0"),
    (["train", "--batch-size", "x"], "argument --batch-size: expected a positive integer, but got 'x'"),
    (["train", "--lr", "nan"], "argument --lr: expected a positive finite number, but got nan"),
    (["train", "--lr", "inf"], "argument --lr: expected a positive finite number, but got inf"),
    (["train", "--optimizer", "rmsprop"], "argument --optimizer: invalid choice: 'rmsprop'"),
    (["train", "--threads", "0"], "argument --threads: expected a positive integer, but got 0"),
    (["train", "--seed", "-1"], "argument --seed: expected a non-negative integer, but got -1"),
    (["train", "--dataset", "cifar10"], "argument --dataset"),
    (["bench", "--models", "vgg"], "argument --models: invalid choice: 'vgg'"),
    (["bench", "--batch-size", "0"], "argument --batch-size: expected a positive integer, but got 0"),
    (["bench", "--modes", "serve"], "argument --modes: invalid choice: 'serve'"),
    (["bench", "--steps", "0"], "argument --steps: expected a positive integer, but got 0"),
    (["bench", "--warmup", "-1"], "argument --warmup: expected a non-negative integer, but got -1"),
    (["bench", "--rounds", "0"], "argument --rounds: expected a positive integer, but got 0"),
    (["bench", "--threads", "0"], "argument --threads: expected a positive integer, but got 0"),
    (["bench", "--seed", "x"], "argument --seed: expected a non-negative integer, but got 'x'"),
    (["info", "--verbose"], "unrecognized arguments: --verbose"),
]


@pytest.mark.parametrize("argv, message", CLI_INPUTS, ids=[" ".join(a) for a, _ in CLI_INPUTS])
def test_bad_cli_option_exits_2_naming_the_option(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: cnnnumba" in err and message in err


def test_the_table_covers_every_public_name():
    """Each public function and class of functional, nn, optim and data appears in at least one row."""
    rows = " ".join(str(row[0]) + " " + str(row[1].__code__.co_names) for row in ERROR_INPUTS)
    missing = [name for name in F.__all__ + [n for n in nn.__all__ if n[0].isupper()] +
               ["SGD", "Adam", "AdamW", "StepLR", "CosineAnnealingLR", "OneCycleLR", "DataLoader", "ArrayDataset"]
               if name not in rows and name not in ("Module", "Identity", "Flatten", "ReLU", "Sigmoid", "Tanh")]
    assert not missing, missing


def test_count_of_error_inputs():
    assert len(ERROR_INPUTS) + len(CHECKPOINT_INPUTS) + len(CLI_INPUTS) >= 150
