"""The loss node: cross-entropy of the logits against the step's labels."""
import numpy as np

from ...kernels import loss as loss_kernels
from ..plan import Buffer
from .base import Node


class CrossEntropy(Node):
    """Cross-entropy of (N, C) logits against the step's labels, mean or sum, as the eager op computes it."""

    name = "cross_entropy"

    def __init__(self, logits, output, target, class_weight, ignore_index, reduction, label_smoothing):
        super().__init__([logits], output)
        self.target = target  # a fixed int64 buffer the step copies the labels into
        self.class_weight, self.ignore_index = class_weight, ignore_index
        self.reduction, self.label_smoothing = reduction, label_smoothing
        self.row_scale = np.empty(logits.shape[0], dtype=np.float64)
        # per-row loss, class weight of the target and logsumexp (float64), from forward to backward
        self.rows_buffer = Buffer((3, logits.shape[0]), np.float64, output.name + ".rows")
        self.total_weight = None
        self.value = np.zeros((), dtype=logits.dtype)

    def forward_buffers(self):
        return super().forward_buffers() + [self.rows_buffer]

    def backward_buffers(self):
        return [self.inputs[0].buffer, self.rows_buffer]

    def forward(self):
        loss, row_weight, logsumexp = self.rows_buffer.array
        loss_kernels.cross_entropy_forward_into(self.inputs[0].buffer.array, self.target, self.class_weight,
                                         self.ignore_index, self.label_smoothing, loss, row_weight, logsumexp)
        self.total_weight = row_weight.sum()
        total = loss.sum()
        if self.reduction == "sum":
            self.value[()] = total
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                self.value[()] = np.float64(total) / self.total_weight

    def backward(self):
        scale = 1.0
        if self.reduction == "mean":
            with np.errstate(invalid="ignore", divide="ignore"):
                scale = np.float64(1.0) / self.total_weight
        self.row_scale.fill(scale)
        logsumexp = self.rows_buffer.array[2]
        loss_kernels.cross_entropy_backward_into(self.inputs[0].buffer.array, self.target, self.class_weight, logsumexp,
                                          self.row_scale, self.ignore_index, self.label_smoothing,
                                          self.grad_target(0))
        self.finish_grad(0)
