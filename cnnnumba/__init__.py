"""cnnnumba: train convolutional neural networks on the CPU, fast, with Numba kernels and a PyTorch-shaped API."""
from .kernels import _runtime  # noqa: F401  (first: thread and cache settings must precede numba's import)
from . import functional
from ._config import get_num_threads, manual_seed, set_num_threads
from .autograd import GradcheckError, Tensor, enable_grad, gradcheck, is_grad_enabled, no_grad

__version__ = "0.1.0"

__all__ = ["GradcheckError", "Tensor", "enable_grad", "functional", "get_num_threads", "gradcheck",
           "is_grad_enabled", "manual_seed", "no_grad", "set_num_threads"]

from . import nn, optim  # noqa: E402  (layer 6: modules, optimizers, schedulers)

__all__ += ["nn", "optim"]

from . import data  # noqa: E402  (layer 7: datasets, DataLoader, transforms)
from .io import load, save  # noqa: E402

__all__ += ["data", "load", "save"]

from . import graph, models, onnx  # noqa: E402  (layer 5 graph executor; ready-made models; ONNX, onnx on use)
from .functional import cat  # noqa: E402

__all__ += ["cat", "graph", "models", "onnx"]
