"""Batch-norm nodes: training mode (+ ReLU), training mode fused with a residual add and ReLU, and eval mode."""
import numpy as np

from ...kernels import fused
from ...ops.norm import update_running_statistics
from ..plan import Buffer
from .base import Node, rows


class BatchNormTrain(Node):
    """Training-mode batch norm (+ ReLU) on channel rows, updating the running statistics in place as eager does."""

    def __init__(self, x, weight, bias, output, running_mean, running_var, momentum, eps, module, relu=False):
        inputs = [x] + [v for v in (weight, bias) if v is not None]
        super().__init__(inputs, output)
        channels = x.shape[-1]
        self.weight_index = 1 if weight is not None else None
        self.bias_index = (2 if weight is not None else 1) if bias is not None else None
        self.ones = np.ones(channels, dtype=x.dtype)
        self.zeros = np.zeros(channels, dtype=x.dtype)
        self.running_mean, self.running_var = running_mean, running_var
        self.momentum, self.eps, self.module, self.relu = momentum, eps, module, relu
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
        return "batchnorm+relu" if self.relu else "batchnorm"

    def forward_buffers(self):
        return super().forward_buffers() + [self.stats, self.partials, self.coefficients]

    def backward_buffers(self):
        # not the output: the ReLU mask is recomputed from x
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
                                     self._param(self.bias_index, self.zeros), self.relu, self.coefficients.array,
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
                                      self._param(self.bias_index, self.zeros), self.relu, partials[0], partials[1],
                                      self.sums.array, self.coefficients.array, rows(grad_x), grad_weight, grad_bias)
        for index in finish:
            self.finish_grad(index)


class BatchNormAddReLU(BatchNormTrain):
    """relu(batch_norm(x) + shortcut), training mode: a residual block's end in one pass over memory.

    Backward: the ReLU mask comes from the fused output (y > 0); the shortcut's gradient is the masked gradient,
    written by the batch-norm backward's reduction pass and read by its apply pass in place of grad_y and y.
    """

    name = "batchnorm+add+relu"

    def __init__(self, batch_norm, shortcut, output):
        weight = None if batch_norm.weight_index is None else batch_norm.inputs[batch_norm.weight_index]
        bias = None if batch_norm.bias_index is None else batch_norm.inputs[batch_norm.bias_index]
        super().__init__(batch_norm.inputs[0], weight, bias, output, batch_norm.running_mean,
                         batch_norm.running_var, batch_norm.momentum, batch_norm.eps, batch_norm.module, relu=True)
        self.shortcut_index = len(self.inputs)
        self.inputs.append(shortcut)
        self.accumulate.append(False)
        self.scratch.append(None)
        self.grad_shortcut = Buffer(shortcut.shape, shortcut.dtype, output.name + ".unused_grad_shortcut")

    def backward_buffers(self):
        extra = [self.output.buffer]
        if not self.needs(self.shortcut_index):
            extra.append(self.grad_shortcut)
        return super().backward_buffers() + extra

    def _normalize(self, x, stats):
        fused.batch_norm_add_relu_forward(x, rows(self.inputs[self.shortcut_index].buffer.array), stats[0], stats[2],
                                          self._param(self.weight_index, self.ones),
                                          self._param(self.bias_index, self.zeros), self.coefficients.array,
                                          rows(self.output.buffer.array))

    def backward(self):
        stats, partials = self.stats.array, self.partials.array
        grad_x, grad_weight, grad_bias, finish = self._gradient_targets()
        k = self.shortcut_index
        grad_shortcut = self.grad_target(k) if self.needs(k) else self.grad_shortcut.array
        fused.batch_norm_add_relu_backward(rows(self.output.grad.array), rows(self.output.buffer.array),
                                           rows(self.inputs[0].buffer.array), stats[0], stats[2],
                                           self._param(self.weight_index, self.ones), partials[0], partials[1],
                                           self.sums.array, self.coefficients.array, rows(grad_shortcut),
                                           rows(grad_x), grad_weight, grad_bias)
        for index in finish + ([k] if self.needs(k) else []):
            self.finish_grad(index)


class BatchNormEval(Node):
    """Eval-mode batch norm (+ ReLU) with the running statistics, where it could not be folded into a conv."""

    def __init__(self, x, output, running_mean, running_var, gamma, beta, eps, relu):
        super().__init__([x], output)
        channels = x.shape[-1]
        self.running_mean, self.running_var, self.eps, self.relu = running_mean, running_var, eps, relu
        self.folding = (running_mean, running_var, gamma, beta, eps)  # as given (None for no gamma or beta)
        self.gamma = np.ones(channels, x.dtype) if gamma is None else gamma
        self.beta = np.zeros(channels, x.dtype) if beta is None else beta
        self.mean = np.empty(channels, np.float64)
        self.invstd = np.empty(channels, np.float64)
        self.coefficients = np.empty((3, channels), x.dtype)

    @property
    def name(self):
        return "batchnorm(eval)+relu" if self.relu else "batchnorm(eval)"

    def forward(self):
        np.copyto(self.mean, self.running_mean)
        np.add(self.running_var, self.eps, out=self.invstd, dtype=np.float64)
        np.sqrt(self.invstd, out=self.invstd)
        np.divide(1.0, self.invstd, out=self.invstd)
        fused.batch_norm_act_forward(rows(self.inputs[0].buffer.array), self.mean, self.invstd, self.gamma, self.beta,
                                     self.relu, self.coefficients, rows(self.output.buffer.array))
