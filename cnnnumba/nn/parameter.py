"""`Parameter`: a Tensor that a Module registers as learnable (requires_grad=True unless told otherwise)."""
import numpy as np

from .._config import DEFAULT_DTYPE
from ..autograd.tensor import Tensor


class Parameter(Tensor):
    """A Tensor that, assigned as a Module attribute, joins the module's parameters.

    Like ``torch.nn.Parameter`` it shares the memory of the array (or Tensor) it is given.
    """

    def __init__(self, data=None, requires_grad=True):
        if data is None:
            data = np.empty(0, dtype=DEFAULT_DTYPE)
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()

    def __deepcopy__(self, memo):
        copied = Parameter(self.data.copy(), requires_grad=self.requires_grad)
        if self.grad is not None:
            copied.grad = self.grad.copy()
        memo[id(self)] = copied
        return copied
