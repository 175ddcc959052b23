"""Batch-norm nodes: training mode (+ an activation), training mode fused with a residual add (+ an activation), and
eval mode (+ an activation). The activation is a clamp of kernels/fused.py: ReLU, ReLU6, Hardtanh or none."""
import numpy as np

from ...kernels import fused, norm
from ...ops.norm import update_running_statistics
from ..plan import Buffer
from .base import NO_CLAMP, Node, rows, with_activation


class BatchNormTrain(Node):
    """Training-mode batch norm (+ an activation) on channel rows, updating the running statistics in place as
    eager does."""

    def __init__(self, x, weight, bias, output, running_mean, running_var, momentum, eps, module, clamp=NO_CLAMP):
        inputs = [x] + [v for v in (weight, bias) if v is not None]
        super().__init__(inputs, output)
        channels = x.shape[-1]
        self.weight_index = 1 if weight is not None else None
        self.bias_index = (2 if weight is not None else 1) if bias is not None else None
        self.ones = np.ones(channels, dtype=x.dtype)
        self.zeros = np.zeros(channels, dtype=x.dtype)
        self.running_mean, self.running_var = running_mean, running_var
        self.momentum, self.eps, self.module, self.clamp = momentum, eps, module, clamp
        self.count = int(np.prod(x.shape[:-1]))
        chunks = fused.chunk_count(self.count)
        name = output.name
        self.stats = Buffer((3, channels), np.float64, name + ".stats")  # mean, biased variance, invstd
        # per-chunk means and squared deviations (statistics), then gradient sums (backward)
        self.partials = Buffer((2, chunks, channels), np.float64, name + ".partials")
        self.sums = Buffer((2, channels), np.float64, name + ".sums")
        self.coefficients = Buffer((7, channels), x.dtype, name + ".coefficients")
        self.param_grads = Buffer((2, channels), x.dtype, name + ".unused_param_grads")
        self.grad_x = Buffer(x.shape, x.dtype, name + ".unused_grad_x")
        self.running_scratch = (np.empty(channels, dtype=x.dtype), np.empty(channels, dtype=np.float64))

    @property
    def name(self):
        return with_activation("batchnorm", self.clamp)

    def forward_buffers(self):
        return super().forward_buffers() + [self.stats, self.partials, self.coefficients]

    def backward_buffers(self):
        # not the output: the activation's mask is recomputed from x
        extra = [self.stats, self.partials, self.sums, self.coefficients, self.inputs[0].buffer]
        need_weight = self.weight_index is not None and self.needs(self.weight_index)
        need_bias = self.bias_index is not None and self.needs(self.bias_index)
        if not need_weight or not need_bias:
            extra.append(self.param_grads)
        if not self.needs(0):
            extra.append(self.grad_x)
        return super().backward_buffers() + extra

    def _param(self, index, default):
        return default if index is None else self.inputs[index].buffer.array

    def forward(self):
        x = rows(self.inputs[0].buffer.array)
        stats, partials = self.stats.array, self.partials.array
        fused.batch_norm_statistics(x, self.eps, partials, stats[0], stats[1], stats[2])
        self._normalize(x, stats)
        if self.running_mean is not None:
            self._update_running_statistics(stats[0], stats[1])

    def _normalize(self, x, stats):
        fused.batch_norm_act_forward(x, stats[0], stats[2], self._param(self.weight_index, self.ones),
                                     self._param(self.bias_index, self.zeros), self.clamp, self.coefficients.array,
                                     rows(self.output.buffer.array))

    def _update_running_statistics(self, mean, variance):
        momentum = self.momentum
        if self.module is not None and self.module.momentum is None:
            momentum = 1.0 / float(self.module.num_batches_tracked)
        update_running_statistics(self.running_mean, self.running_var, mean, variance, self.count, momentum,
                                  self.running_scratch)

    def _gradient_targets(self):
        """(grad_x, grad_weight, grad_bias, finish): where the kernel writes each, and the indices to finish."""
        need_weight = self.weight_index is not None and self.needs(self.weight_index)
        need_bias = self.bias_index is not None and self.needs(self.bias_index)
        grad_weight = self.grad_target(self.weight_index) if need_weight else self.param_grads.array[0]
        grad_bias = self.grad_target(self.bias_index) if need_bias else self.param_grads.array[1]
        grad_x = self.grad_target(0) if self.needs(0) else self.grad_x.array
        finish = [index for index, needed in ((0, self.needs(0)), (self.weight_index, need_weight),
                                              (self.bias_index, need_bias)) if needed]
        return grad_x, grad_weight, grad_bias, finish

    def backward(self):
        stats, partials = self.stats.array, self.partials.array
        grad_x, grad_weight, grad_bias, finish = self._gradient_targets()
        fused.batch_norm_act_backward(rows(self.output.grad.array), rows(self.inputs[0].buffer.array), stats[0],
                                      stats[2], self._param(self.weight_index, self.ones),
                                      self._param(self.bias_index, self.zeros), self.clamp, partials[0], partials[1],
                                      self.sums.array, self.coefficients.array, rows(grad_x), grad_weight, grad_bias)
        for index in finish:
            self.finish_grad(index)


class BatchNormAdd(BatchNormTrain):
    """clamp(batch_norm(x) + shortcut), training mode: a residual block's end in one pass over memory, with ReLU
    (ResNet) or no activation (MobileNetV2's inverted residual).

    Backward with an activation: its mask comes from the fused output (lower < y < upper); the shortcut's gradient
    is the masked gradient, written by the batch-norm backward's reduction pass and read by its apply pass in place
    of grad_y and y. Without one, the output is not kept: batch norm's backward reads grad_y, which is also the
    shortcut's gradient.
    """

    def __init__(self, batch_norm, shortcut, output, clamp):
        weight = None if batch_norm.weight_index is None else batch_norm.inputs[batch_norm.weight_index]
        bias = None if batch_norm.bias_index is None else batch_norm.inputs[batch_norm.bias_index]
        super().__init__(batch_norm.inputs[0], weight, bias, output, batch_norm.running_mean,
                         batch_norm.running_var, batch_norm.momentum, batch_norm.eps, batch_norm.module, clamp)
        self.shortcut_index = len(self.inputs)
        self.inputs.append(shortcut)
        self.accumulate.append(False)
        self.scratch.append(None)
        self.grad_shortcut = Buffer(shortcut.shape, shortcut.dtype, output.name + ".unused_grad_shortcut")

    @property
    def name(self):
        return with_activation("batchnorm+add", self.clamp)

    def backward_buffers(self):
        if self.clamp == NO_CLAMP:
            return super().backward_buffers()
        extra = [self.output.buffer]
        if not self.needs(self.shortcut_index):
            extra.append(self.grad_shortcut)
        return super().backward_buffers() + extra

    def _normalize(self, x, stats):
        fused.batch_norm_add_act_forward(x, rows(self.inputs[self.shortcut_index].buffer.array), stats[0], stats[2],
                                         self._param(self.weight_index, self.ones),
                                         self._param(self.bias_index, self.zeros), self.clamp,
                                         self.coefficients.array, rows(self.output.buffer.array))

    def backward(self):
        k = self.shortcut_index
        if self.clamp == NO_CLAMP:
            super().backward()  # batch norm's backward on grad_y, with no activation
            if self.needs(k):
                self.deliver(k, self.output.grad.array)
            return
        stats, partials = self.stats.array, self.partials.array
        grad_x, grad_weight, grad_bias, finish = self._gradient_targets()
        grad_shortcut = self.grad_target(k) if self.needs(k) else self.grad_shortcut.array
        fused.batch_norm_add_act_backward(rows(self.output.grad.array), rows(self.output.buffer.array),
                                          rows(self.inputs[0].buffer.array), stats[0], stats[2],
                                          self._param(self.weight_index, self.ones), self.clamp, partials[0],
                                          partials[1], self.sums.array, self.coefficients.array, rows(grad_shortcut),
                                          rows(grad_x), grad_weight, grad_bias)
        for index in finish + ([k] if self.needs(k) else []):
            self.finish_grad(index)


class BatchNormEval(Node):
    """Eval-mode batch norm (+ an activation) with the running statistics, where it could not be folded into a
    conv."""

    def __init__(self, x, output, running_mean, running_var, gamma, beta, eps, clamp=NO_CLAMP):
        super().__init__([x], output)
        channels = x.shape[-1]
        self.running_mean, self.running_var, self.eps, self.clamp = running_mean, running_var, eps, clamp
        self.folding = (running_mean, running_var, gamma, beta, eps)  # as given (None for no gamma or beta)
        self.gamma = np.ones(channels, x.dtype) if gamma is None else gamma
        self.beta = np.zeros(channels, x.dtype) if beta is None else beta
        self.coefficients = np.empty((3, channels), x.dtype)

    @property
    def name(self):
        return with_activation("batchnorm(eval)", self.clamp)

    def forward(self):
        x = rows(self.inputs[0].buffer.array)
        norm.running_coefficients(self.running_mean, self.running_var, float(self.eps), self.gamma, self.beta,
                                   self.coefficients)
        norm.normalize_act_forward(x, self.coefficients, *fused.clamp_bounds(self.clamp, x.dtype),
                                    rows(self.output.buffer.array))
