"""Graph nodes, one module per op family; each node runs kernels directly on planned buffers, forward and
backward side by side."""
from ..plan import Buffer
from .base import Node, Value, activation_name, rows
from .conv import Conv, FoldedConv
from .elementwise import Add, AddReLU, Cat, Dropout, Hardtanh, ReLU
from .fallback import Fallback
from .layout import Flatten, InputNHWC
from .linear import Linear
from .loss import CrossEntropy
from .norm import BatchNormAdd, BatchNormEval, BatchNormTrain
from .pool import AdaptiveAvgPool, AvgPool, MaxPool

__all__ = ["Add", "AddReLU", "AdaptiveAvgPool", "AvgPool", "BatchNormAdd", "BatchNormEval", "BatchNormTrain",
           "Buffer", "Cat", "Conv", "CrossEntropy", "Dropout", "Fallback", "Flatten", "FoldedConv", "Hardtanh",
           "InputNHWC", "Linear", "MaxPool", "Node", "ReLU", "Value", "activation_name", "rows"]
