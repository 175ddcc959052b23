"""Shape ops of the functional API."""
from ..autograd import arith
from ..autograd.tensor import Tensor


def flatten(input, start_dim=1, end_dim=-1):
    """Flatten dimensions start_dim..end_dim into one (the batch dimension stays by default)."""
    if not isinstance(input, Tensor):
        raise TypeError(f"flatten expected a Tensor, but got {type(input).__name__}")
    return arith.flatten(input, start_dim, end_dim)
