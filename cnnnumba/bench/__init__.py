"""The comparison harness: sgemm peak, cnnnumba and PyTorch model runners, FLOP counts, profile, reports."""
from .flops import COUNTED, LayerFlops, ModelFlops, conv2d_flops, linear_flops, model_flops, op_flops

__all__ = ["COUNTED", "LayerFlops", "ModelFlops", "conv2d_flops", "linear_flops", "model_flops", "op_flops"]
