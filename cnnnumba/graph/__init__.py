"""The graph executor: `capture` records a training step or an inference forward once and replays it with
planned buffers, one NHWC layout, fused kernels and a single fused optimizer update."""
from .capture import Predictor, TrainingStep, capture
from .trace import Tracer

__all__ = ["Predictor", "Tracer", "TrainingStep", "capture"]
