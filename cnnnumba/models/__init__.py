"""Ready-made CNNs: LeNet-5, the CIFAR benchmark CNN, ResNet-20, a small net for the 8×8 digits, and ResNet-18/34/50
and MobileNetV2 with torchvision's module names (their state dicts are torchvision's)."""
from .imagenet import mobilenet_v2, resnet18, resnet34, resnet50
from .zoo import MODELS, build_model, cifar_cnn, lenet5, resnet20, small_cnn

__all__ = ["MODELS", "build_model", "cifar_cnn", "lenet5", "mobilenet_v2", "resnet18", "resnet20", "resnet34",
           "resnet50", "small_cnn"]
