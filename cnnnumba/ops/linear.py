"""The linear op: y = input @ weightᵀ + bias over input of shape (*, in_features), with its gradients."""
import numpy as np

from .._config import FLOAT_DTYPES
from ..autograd import Function
from ..autograd.tensor import Tensor
from ..kernels import matmul


class Linear(Function):
    def forward(self, x, weight, bias):
        self.input_shape = x.shape
        self.x = np.ascontiguousarray(x).reshape(-1, weight.shape[1])
        self.weight = np.ascontiguousarray(weight)
        bias = np.zeros(0, dtype=x.dtype) if bias is None else np.ascontiguousarray(bias)
        out = np.empty((self.x.shape[0], weight.shape[0]), dtype=x.dtype)
        matmul.linear_forward(self.x, self.weight, bias, out)
        return out.reshape(x.shape[:-1] + (weight.shape[0],))

    def backward(self, grad):
        grad2d = np.ascontiguousarray(grad).reshape(-1, self.weight.shape[0])
        need_x, need_weight, need_bias = self.needs_input_grad
        grad_x = grad_weight = grad_bias = None
        if need_x:
            grad_x = np.empty_like(self.x)
            matmul.linear_backward_input(grad2d, self.weight, grad_x)
            grad_x = grad_x.reshape(self.input_shape)
        if need_weight:
            grad_weight = np.empty_like(self.weight)
            matmul.linear_backward_weight(grad2d, self.x, grad_weight)
        if need_bias:
            grad_bias = np.empty(self.weight.shape[0], dtype=grad.dtype)
            matmul.linear_backward_bias(grad2d, grad_bias)
        return grad_x, grad_weight, grad_bias


def linear(input, weight, bias=None):
    """input (*, in_features) @ weight (out_features, in_features)ᵀ + bias (out_features,)."""
    for name, tensor in (("input", input), ("weight", weight), ("bias", bias)):
        if tensor is None and name == "bias":
            continue
        if not isinstance(tensor, Tensor):
            raise TypeError(f"linear(): argument '{name}' must be a Tensor, but got {type(tensor).__name__}")
        if tensor.dtype not in FLOAT_DTYPES:
            raise TypeError(f"linear(): expected a float32 or float64 {name}, but got {tensor.dtype}")
    if input.ndim == 0 or weight.ndim == 0:
        raise ValueError(f"both arguments to linear need to be at least 1D, but they are {input.ndim}D and "
                         f"{weight.ndim}D")
    if weight.ndim != 2:
        raise ValueError(f"linear(): expected weight to be 2D (out_features, in_features), but got shape "
                         f"{tuple(weight.shape)}")
    if input.dtype != weight.dtype or (bias is not None and bias.dtype != input.dtype):
        other = weight.dtype if input.dtype != weight.dtype else bias.dtype
        raise TypeError(f"linear(): expected input, weight and bias to have the same dtype, but got "
                        f"{input.dtype} != {other}")
    out_features, in_features = weight.shape
    if input.shape[-1] != in_features:
        rows = int(np.prod(input.shape[:-1], dtype=np.int64))
        raise ValueError(f"mat1 and mat2 shapes cannot be multiplied ({rows}x{input.shape[-1]} and "
                         f"{in_features}x{out_features})")
    if bias is not None and bias.shape != (out_features,):
        raise ValueError(f"linear(): expected bias of shape ({out_features},) to match weight "
                         f"{tuple(weight.shape)}, but got {tuple(bias.shape)}")
    return Linear.apply(input, weight, bias)
