"""Ready-made CNNs: LeNet-5, the CIFAR benchmark CNN, ResNet-20 and a small net for the 8×8 digits."""
from .zoo import MODELS, build_model, cifar_cnn, lenet5, resnet20, small_cnn

__all__ = ["MODELS", "build_model", "cifar_cnn", "lenet5", "resnet20", "small_cnn"]
