"""Neural-network building blocks with PyTorch's names: Module, Parameter, layers, losses, init and utils."""
from . import functional, init, parallel, utils
from .activation import GELU, Hardtanh, LeakyReLU, ReLU, ReLU6, Sigmoid, Tanh
from .container import Sequential
from .conv import Conv2d
from .dropout import Dropout
from .flatten import Flatten
from .linear import Identity, Linear
from .loss import CrossEntropyLoss, MSELoss
from .module import Module
from .normalization import BatchNorm2d
from .parameter import Parameter
from .pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d

__all__ = ["AdaptiveAvgPool2d", "AvgPool2d", "BatchNorm2d", "Conv2d", "CrossEntropyLoss", "Dropout", "Flatten", "GELU",
           "Hardtanh", "Identity", "LeakyReLU", "Linear", "MSELoss", "MaxPool2d", "Module", "Parameter", "ReLU",
           "ReLU6", "Sequential", "Sigmoid", "Tanh", "functional", "init", "parallel", "utils"]
