"""The models side by side: one training or inference step in cnnnumba (captured or eager) and in PyTorch.

Both frameworks get the same architecture (the PyTorch model is translated layer by layer from the cnnnumba
one), the same initial weights (copied through state_dict), the same batches (NCHW float32 NumPy arrays) and
the same optimizer (SGD, lr 0.01, momentum 0.9) and loss (cross-entropy).
"""
import importlib

import numpy as np

LEARNING_RATE = 0.01
MOMENTUM = 0.9

# Inputs of the benchmark models: (channels, default image size, classes).
MODEL_INPUTS = {"lenet5": (1, 28, 10), "cifar-cnn": (3, 32, 10), "resnet20": (3, 32, 10), "small-cnn": (1, 8, 10),
                "resnet18": (3, 224, 1000), "resnet34": (3, 224, 1000), "resnet50": (3, 224, 1000),
                "mobilenet_v2": (3, 224, 1000)}
IMAGENET_MODELS = ("resnet18", "resnet34", "resnet50", "mobilenet_v2")


def model_input(name, image_size=None):
    """(channels, image size, classes) of model `name`; `image_size` (e.g. --image-size) replaces its default."""
    channels, size, classes = MODEL_INPUTS[name]
    return channels, image_size or size, classes


def build_model(name, seed, image_size=None):
    """The cnnnumba model `name`, initialised from `seed`."""
    import cnnnumba as cn
    from ..models import build_model as build

    channels, size, classes = model_input(name, image_size)
    cn.manual_seed(seed)
    model = build(name, in_channels=channels, num_classes=classes, image_size=size)
    if name == "mobilenet_v2":
        # no dropout: the frameworks draw different masks, and the first losses must agree before anything is timed
        model.classifier[0].p = 0.0
    return model


def make_batches(name, batch_size, count, seed, image_size=None):
    """`count` (images, labels) batches for model `name`: standard-normal NCHW float32 images, int64 labels."""
    channels, size, classes = model_input(name, image_size)
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((batch_size, channels, size, size), dtype=np.float32),
             rng.integers(0, classes, batch_size, dtype=np.int64)) for _ in range(count)]


def graph_capture():
    """`cnnnumba.graph.capture` where the graph executor provides it, else None."""
    try:
        graph = importlib.import_module("cnnnumba.graph")
    except ImportError:
        return None
    return getattr(graph, "capture", None)


def cnnnumba_step(model, mode, eager=False):
    """(step, variant): step(images, labels) -> float loss for "train", step(images) -> logits for "inference".

    The variant is "captured" when cnnnumba.graph.capture exists and `eager` is False, otherwise "eager".
    """
    from .. import functional as F
    from .. import optim
    from ..autograd import Tensor, no_grad

    capture = None if eager else graph_capture()
    if mode == "train":
        model.train()
        optimizer = optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
        if capture is not None:
            captured = capture(model, F.cross_entropy, optimizer)
            return (lambda images, labels: float(captured(images, labels))), "captured"

        def train_step(images, labels):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(Tensor(images)), labels)
            loss.backward()
            optimizer.step()
            return float(loss.item())

        return train_step, "eager"
    model.eval()
    if capture is not None:
        predict = capture(model)
        return (lambda images, labels=None: np.asarray(predict(images))), "captured"

    def inference_step(images, labels=None):
        with no_grad():
            return model(Tensor(images)).data

    return inference_step, "eager"


def _translate_layer(layer):
    """The torch.nn twin of one cnnnumba layer (no state copied)."""
    import torch

    from .. import nn

    if isinstance(layer, nn.Conv2d):
        return torch.nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                               padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                               bias=layer.bias is not None)
    if isinstance(layer, nn.BatchNorm2d):
        return torch.nn.BatchNorm2d(layer.num_features, eps=layer.eps, momentum=layer.momentum,
                                    affine=layer.affine, track_running_stats=layer.track_running_stats)
    if isinstance(layer, nn.Linear):
        return torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    if isinstance(layer, nn.MaxPool2d):
        return torch.nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                                  ceil_mode=layer.ceil_mode)
    if isinstance(layer, nn.AvgPool2d):
        return torch.nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding, ceil_mode=layer.ceil_mode,
                                  count_include_pad=layer.count_include_pad)
    if isinstance(layer, nn.AdaptiveAvgPool2d):
        return torch.nn.AdaptiveAvgPool2d(layer.output_size)
    if isinstance(layer, nn.Flatten):
        return torch.nn.Flatten(layer.start_dim, layer.end_dim)
    if isinstance(layer, nn.Sequential):
        return torch.nn.Sequential(*(_translate_layer(child) for child in layer.children()))
    simple = {nn.ReLU: torch.nn.ReLU, nn.Identity: torch.nn.Identity, nn.Sigmoid: torch.nn.Sigmoid,
              nn.Tanh: torch.nn.Tanh}
    if type(layer) in simple:
        return simple[type(layer)]()
    raise ValueError(f"cannot translate {type(layer).__name__} to PyTorch; the comparison supports Sequential "
                     "models of Conv2d, BatchNorm2d, Linear, pooling, Flatten and activations, and the zoo's ResNet")


def _torch_resnet(model):
    """A torch twin of the zoo's ResNet: the same submodule names, so the state_dict keys are the same."""
    import torch

    class BasicBlock(torch.nn.Module):
        def __init__(self, block):
            super().__init__()
            self.conv1, self.bn1 = _translate_layer(block.conv1), _translate_layer(block.bn1)
            self.conv2, self.bn2 = _translate_layer(block.conv2), _translate_layer(block.bn2)
            self.shortcut = _translate_layer(block.shortcut)

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return torch.relu(out + self.shortcut(x))

    class ResNet(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.conv1, self.bn1 = _translate_layer(net.conv1), _translate_layer(net.bn1)
            self.layers = torch.nn.Sequential(*(BasicBlock(block) for block in net.layers.children()))
            self.pool, self.fc = _translate_layer(net.pool), _translate_layer(net.fc)

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            out = self.pool(self.layers(out))
            return self.fc(torch.flatten(out, 1))

    return ResNet(model)


def _torchvision_twin(model):
    """The torch twin (torchvision's structure) of one of the zoo's ResNet-18/34/50 or MobileNetV2 instances."""
    from ..models import imagenet
    from . import torch_twins

    if isinstance(model, imagenet.ResNet):
        basic = isinstance(model.layer1[0], imagenet.BasicBlock)
        return torch_twins.ResNet(torch_twins.BasicBlock if basic else torch_twins.Bottleneck,
                                  [len(model.layer1), len(model.layer2), len(model.layer3), len(model.layer4)],
                                  model.fc.out_features, model.conv1.in_channels)
    return torch_twins.MobileNetV2(model.classifier[1].out_features, model.width_mult, model.features[0][0].in_channels,
                                   dropout=model.classifier[0].p)


def torch_model(model):
    """A PyTorch twin of the cnnnumba `model` (a Sequential of standard layers, the zoo's ResNet, or a
    torchvision-named ResNet or MobileNetV2) holding a copy of its state."""
    import torch

    from .. import nn
    from ..models import imagenet
    from ..models.zoo import ResNet

    if isinstance(model, (imagenet.ResNet, imagenet.MobileNetV2)):
        twin = _torchvision_twin(model)
    elif isinstance(model, ResNet):
        twin = _torch_resnet(model)
    elif isinstance(model, nn.Sequential):
        twin = _translate_layer(model)
    else:
        raise ValueError(f"the comparison needs an nn.Sequential model or the zoo's ResNet, but got "
                         f"{type(model).__name__}")
    # strict: every key must match, so a twin that differs from the cnnnumba model cannot pass unnoticed
    twin.load_state_dict({key: torch.from_numpy(np.array(value)) for key, value in model.state_dict().items()})
    return twin


def torch_step(model, mode, variant):
    """(step, model) for a PyTorch twin: variant "nchw", "channels_last" or "compile" (torch.compile, NCHW)."""
    import torch

    channels_last = variant == "channels_last"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    runnable = torch.compile(model) if variant == "compile" else model

    def prepare(images):
        tensor = torch.from_numpy(images)
        # the conversion is part of the step: both frameworks receive the same NCHW batch
        return tensor.contiguous(memory_format=torch.channels_last) if channels_last else tensor

    if mode == "train":
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)

        def train_step(images, labels):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(runnable(prepare(images)), torch.from_numpy(labels))
            loss.backward()
            optimizer.step()
            return float(loss.item())

        return train_step
    model.eval()

    def inference_step(images, labels=None):
        with torch.no_grad():
            return runnable(prepare(images)).numpy()

    return inference_step
