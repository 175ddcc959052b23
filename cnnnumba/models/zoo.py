"""Model definitions, each parameterised by input channels, classes and image size (square images)."""
from .. import functional as F
from .. import nn
from .imagenet import mobilenet_v2, resnet18, resnet34, resnet50


def _check_image_size(name, image_size, minimum):
    if image_size < minimum:
        raise ValueError(f"{name} needs images of at least {minimum}×{minimum} pixels, but got {image_size}×{image_size}")


def lenet5(in_channels=1, num_classes=10, image_size=28):
    """LeNet-5 (LeCun et al. 1998) with ReLU and max pooling, as commonly trained on MNIST."""
    _check_image_size("lenet5", image_size, 16)
    reduced = ((image_size // 2) - 4) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * reduced * reduced, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, num_classes),
    )


def _conv_bn_relu(in_channels, out_channels):
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU()]


def cifar_cnn(in_channels=3, num_classes=10, image_size=32):
    """The benchmark CNN: five 3×3 conv+BN+ReLU blocks 32-32-pool-64-64-pool-128-pool, then one linear layer."""
    _check_image_size("cifar_cnn", image_size, 8)
    reduced = image_size // 8
    return nn.Sequential(
        *_conv_bn_relu(in_channels, 32), *_conv_bn_relu(32, 32), nn.MaxPool2d(2),
        *_conv_bn_relu(32, 64), *_conv_bn_relu(64, 64), nn.MaxPool2d(2),
        *_conv_bn_relu(64, 128), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(128 * reduced * reduced, num_classes),
    )


def small_cnn(in_channels=1, num_classes=10, image_size=8):
    """A small CNN for tiny images such as the 8×8 digits: two conv+BN+ReLU blocks, one pool, one linear layer."""
    _check_image_size("small_cnn", image_size, 2)
    reduced = image_size // 2
    return nn.Sequential(
        *_conv_bn_relu(in_channels, 16), *_conv_bn_relu(16, 32), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * reduced * reduced, num_classes),
    )


class BasicBlock(nn.Module):
    """Two 3×3 conv+BN layers with an identity (or 1×1 projection) shortcut, as in He et al. 2016."""

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """The CIFAR ResNet of He et al. 2016: a 3×3 stem, three stages of basic blocks, global average pooling."""

    def __init__(self, blocks_per_stage=3, widths=(16, 32, 64), in_channels=3, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, channels = [], widths[0]
        for index, width in enumerate(widths):
            for block in range(blocks_per_stage):
                stride = 2 if index > 0 and block == 0 else 1
                stages.append(BasicBlock(channels, width, stride))
                channels = width
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.pool(self.layers(out))
        return self.fc(F.flatten(out))


def resnet20(in_channels=3, num_classes=10, image_size=32, widths=(16, 32, 64)):
    """ResNet-20 (3 stages × 3 basic blocks); `widths` can be shrunk for quick tests."""
    _check_image_size("resnet20", image_size, 4)
    return ResNet(3, tuple(widths), in_channels, num_classes)


def _any_image_size(builder):
    """A torchvision-style builder (num_classes, in_channels) called as the zoo's (in_channels, num_classes,
    image_size): its global average pooling takes any image size (its 32× downsampling needs at least 32×32 to keep
    more than one pixel, but smaller images still run)."""
    def build(in_channels=3, num_classes=1000, image_size=224):
        _check_image_size(builder.__name__, image_size, 1)
        return builder(num_classes=num_classes, in_channels=in_channels)

    build.__name__ = build.__qualname__ = builder.__name__
    build.__doc__ = builder.__doc__
    return build


MODELS = {"lenet5": lenet5, "cifar-cnn": cifar_cnn, "resnet20": resnet20, "small-cnn": small_cnn,
          "resnet18": _any_image_size(resnet18), "resnet34": _any_image_size(resnet34),
          "resnet50": _any_image_size(resnet50), "mobilenet_v2": _any_image_size(mobilenet_v2)}


def build_model(name, in_channels, num_classes, image_size):
    """A model from MODELS by its command-line name."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}")
    return MODELS[name](in_channels=in_channels, num_classes=num_classes, image_size=image_size)
