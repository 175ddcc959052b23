"""Graph nodes: each runs kernels directly on planned buffers, forward and backward side by side.

Inside a graph every 4-D activation is NHWC (channels innermost, what the kernels want); 2-D activations are
(N, features). Parameters keep PyTorch's layouts and are re-laid-out by the node that reads them.
"""
import numpy as np

from .. import _config
from ..kernels import conv2d as conv_kernels
from ..kernels import elementwise, fused, layout, matmul, pool2d
from ..kernels import loss as loss_kernels
from ..ops.norm import update_running_statistics
from .plan import Buffer


class Value:
    """One tensor of the traced program: where it lives (`buffer`), its gradient's buffer, who makes and reads it."""

    def __init__(self, shape, dtype, name, kind="activation", fixed=None, tensor=None):
        self.shape, self.dtype, self.name, self.kind = tuple(shape), np.dtype(dtype), name, kind
        self.buffer = Buffer(shape, dtype, name, fixed=fixed)
        self.tensor = tensor  # the Parameter, for kind == "param"
        self.needs_grad = False
        self.grad = None  # a Buffer, made by the lowering when needs_grad
        self.producer = None

    @property
    def nhwc(self):
        return self.kind == "activation" and len(self.shape) == 4


def rows(array):
    """A channels-innermost array as (rows, C): NHWC as (N*H*W, C), (N, C) as is."""
    return array.reshape(-1, array.shape[-1])


class Node:
    """Base: `inputs` (Values), `output` (a Value); grad_targets[k] says where input k's gradient goes."""

    name = "node"

    def __init__(self, inputs, output):
        self.inputs, self.output = list(inputs), output
        self.accumulate = [False] * len(self.inputs)
        self.scratch = [None] * len(self.inputs)

    def forward_buffers(self):
        return [v.buffer for v in self.inputs] + [self.output.buffer]

    def backward_buffers(self):
        """Buffers backward reads or writes (besides the input gradients, which the lowering adds)."""
        return [self.output.grad] if self.output.grad is not None else []

    def grad_target(self, k):
        """Where input k's gradient is written: its gradient buffer, or a scratch when it must be added in."""
        return (self.scratch[k] if self.accumulate[k] else self.inputs[k].grad).array

    def finish_grad(self, k):
        if self.accumulate[k]:
            target = self.inputs[k].grad.array
            np.add(target, self.scratch[k].array, out=target)

    def deliver(self, k, gradient):
        """Write (or add) an already computed gradient array into input k's gradient."""
        target = self.inputs[k].grad.array
        if self.accumulate[k]:
            np.add(target, gradient, out=target)
        else:
            np.copyto(target, gradient)

    def needs(self, k):
        return self.inputs[k].needs_grad

    def __repr__(self):
        return f"{self.name}({', '.join(v.name for v in self.inputs)} -> {self.output.name})"


class InputNHWC(Node):
    """The batch enters: NCHW (the public layout) to the graph's NHWC, the one layout change at the input edge."""

    name = "input"

    def __init__(self, output):
        super().__init__([], output)
        self.source = None

    def forward(self):
        target, source = self.output.buffer.array, self.source
        if target.ndim == 4 and target.shape[-1] > 1 and source.flags.c_contiguous and source.dtype == target.dtype:
            layout.nchw_to_nhwc(source, target)
        elif target.ndim == 4:
            # one channel: the transpose is a plain copy; other strides: NumPy's general copy
            np.copyto(target, source.transpose(0, 2, 3, 1))
        else:
            np.copyto(target, source)


class Conv(Node):
    """conv2d (+ its bias and ReLU, both applied as the kernel stores each output tile), the weight re-laid-out
    to (kH, kW, C_in/groups, C_out) at each step; backward masks by the ReLU and sums the bias gradient in one
    pass. Its kernels' scratch comes from `workspace`, one array the schedule shares among all conv nodes."""

    def __init__(self, x, weight, bias, output, stride, padding, dilation, groups, relu=False):
        super().__init__([x, weight] + ([bias] if bias is not None else []), output)
        self.has_bias, self.relu = bias is not None, relu
        self.options = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        c_out, group_in, kernel_h, kernel_w = weight.shape
        self.weight_khwc = Buffer((kernel_h, kernel_w, group_in, c_out), weight.dtype, output.name + ".w_khwc")
        self.grad_weight_khwc = Buffer(self.weight_khwc.shape, weight.dtype, output.name + ".grad_w_khwc")
        self.grad_pre = Buffer(output.shape, output.dtype, output.name + ".grad_pre")
        self.partials = Buffer((fused.chunk_count(int(np.prod(output.shape[:-1]))), output.shape[-1]), np.float64,
                               output.name + ".partials")
        self.workspace = None

    @property
    def name(self):
        return ("conv+bias" if self.has_bias else "conv") + ("+relu" if self.relu else "")

    def workspace_bytes(self):
        """The most scratch any of this node's kernel calls takes (the schedule's workspace is at least this)."""
        passes = ["forward"]
        if self.output.needs_grad:
            passes += [name for name, needed in (("backward_input", self.needs(0)), ("backward_weight", self.needs(1)),
                                                 ("backward_bias", self.has_bias and self.needs(2) and not self.relu))
                       if needed]
        return max(conv_kernels.conv2d_workspace_bytes(name, self.inputs[0].shape, self.weight_khwc.shape,
                                                       self.output.shape, self.output.dtype, **self.options)
                   for name in passes)

    def forward_buffers(self):
        return super().forward_buffers() + [self.weight_khwc]

    def backward_buffers(self):
        extra = [self.weight_khwc, self.inputs[0].buffer]
        if self.relu:
            extra += [self.grad_pre, self.output.buffer, self.partials]
        if self.needs(1):
            extra.append(self.grad_weight_khwc)
        return super().backward_buffers() + extra

    def forward(self):
        weight = self.inputs[1].buffer.array
        np.copyto(self.weight_khwc.array, weight.transpose(2, 3, 1, 0))
        bias = self.inputs[2].buffer.array if self.has_bias else None
        conv_kernels.conv2d_forward(self.inputs[0].buffer.array, self.weight_khwc.array, bias, self.output.buffer.array,
                                    relu=self.relu, workspace=self.workspace, **self.options)

    def backward(self):
        grad_y = self.output.grad.array
        if self.relu:
            grad = self.grad_pre.array
            if self.has_bias and self.needs(2):
                fused.relu_backward_bias_grad(rows(grad_y), rows(self.output.buffer.array), rows(grad),
                                              self.partials.array, self.grad_target(2))
                self.finish_grad(2)
            else:
                elementwise.relu_backward(grad_y.reshape(-1), self.output.buffer.array.reshape(-1), grad.reshape(-1))
        else:
            grad = grad_y
            if self.has_bias and self.needs(2):
                conv_kernels.conv2d_backward_bias(grad, self.grad_target(2), workspace=self.workspace)
                self.finish_grad(2)
        if self.needs(1):
            conv_kernels.conv2d_backward_weight(self.inputs[0].buffer.array, grad, self.grad_weight_khwc.array,
                                                workspace=self.workspace, **self.options)
            self.deliver(1, self.grad_weight_khwc.array.transpose(3, 2, 0, 1))
        if self.needs(0):
            conv_kernels.conv2d_backward_input(grad, self.weight_khwc.array, self.grad_target(0),
                                               workspace=self.workspace, **self.options)
            self.finish_grad(0)


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


class AddReLU(Node):
    """relu(a + b) in one pass; backward: the gradient masked by the output (y > 0), the same for both inputs."""

    name = "add+relu"

    def forward(self):
        fused.add_relu_forward(self.inputs[0].buffer.array.reshape(-1), self.inputs[1].buffer.array.reshape(-1),
                               self.output.buffer.array.reshape(-1))

    def backward_buffers(self):
        return super().backward_buffers() + [self.output.buffer]

    def backward(self):
        grad_y, y = self.output.grad.array.reshape(-1), self.output.buffer.array.reshape(-1)
        if self.needs(0):
            masked = self.grad_target(0)
            elementwise.relu_backward(grad_y, y, masked.reshape(-1))
            if self.needs(1):
                self.deliver(1, masked)
            self.finish_grad(0)
        elif self.needs(1):
            elementwise.relu_backward(grad_y, y, self.grad_target(1).reshape(-1))
            self.finish_grad(1)


class ReLU(Node):
    name = "relu"

    def forward(self):
        elementwise.relu_forward(self.inputs[0].buffer.array.reshape(-1), self.output.buffer.array.reshape(-1))

    def backward_buffers(self):
        return super().backward_buffers() + [self.output.buffer]

    def backward(self):
        elementwise.relu_backward(self.output.grad.array.reshape(-1), self.output.buffer.array.reshape(-1),
                                  self.grad_target(0).reshape(-1))
        self.finish_grad(0)


class MaxPool(Node):
    name = "maxpool"

    def __init__(self, x, output, window):
        super().__init__([x], output)
        self.window = window
        self.indices = Buffer(output.shape, np.int64, output.name + ".indices")

    def forward_buffers(self):
        return super().forward_buffers() + [self.indices]

    def backward_buffers(self):
        return super().backward_buffers() + [self.indices]

    def forward(self):
        pool2d.max_pool2d_forward(self.inputs[0].buffer.array, self.output.buffer.array, self.indices.array,
                                  *self.window)

    def backward(self):
        pool2d.max_pool2d_backward(self.output.grad.array, self.indices.array, self.grad_target(0), *self.window)
        self.finish_grad(0)


class AvgPool(Node):
    name = "avgpool"

    def __init__(self, x, output, window):
        super().__init__([x], output)
        self.window = window

    def forward(self):
        pool2d.avg_pool2d_forward(self.inputs[0].buffer.array, self.output.buffer.array, *self.window)

    def backward(self):
        pool2d.avg_pool2d_backward(self.output.grad.array, self.grad_target(0), *self.window)
        self.finish_grad(0)


class AdaptiveAvgPool(Node):
    name = "adaptive_avgpool"

    def forward(self):
        pool2d.adaptive_avg_pool2d_forward(self.inputs[0].buffer.array, self.output.buffer.array)

    def backward(self):
        pool2d.adaptive_avg_pool2d_backward(self.output.grad.array, self.grad_target(0))
        self.finish_grad(0)


class Flatten(Node):
    """(N, H, W, C) to (N, C*H*W) in NCHW order, as the eager flatten of an NCHW tensor: the output layout edge."""

    name = "flatten"

    def forward(self):
        x, out = self.inputs[0].buffer.array, self.output.buffer.array
        if x.ndim == 4:
            batch, height, width, channels = x.shape
            layout.nhwc_to_nchw(x, out.reshape(batch, channels, height, width))
        else:
            np.copyto(out.reshape(x.shape), x)

    def backward(self):
        grad, target = self.output.grad.array, self.grad_target(0)
        if target.ndim == 4:
            batch, height, width, channels = target.shape
            layout.nchw_to_nhwc(grad.reshape(batch, channels, height, width), target)
        else:
            np.copyto(target, grad.reshape(target.shape))
        self.finish_grad(0)


class Linear(Node):
    name = "linear"

    def __init__(self, x, weight, bias, output):
        super().__init__([x, weight] + ([bias] if bias is not None else []), output)
        self.empty_bias = np.zeros(0, dtype=x.dtype)

    def backward_buffers(self):
        return super().backward_buffers() + [self.inputs[0].buffer, self.inputs[1].buffer]

    def forward(self):
        bias = self.inputs[2].buffer.array if len(self.inputs) == 3 else self.empty_bias
        matmul.linear_forward(self.inputs[0].buffer.array, self.inputs[1].buffer.array, bias, self.output.buffer.array)

    def backward(self):
        grad = self.output.grad.array
        if self.needs(0):
            matmul.linear_backward_input(grad, self.inputs[1].buffer.array, self.grad_target(0))
            self.finish_grad(0)
        if self.needs(1):
            matmul.linear_backward_weight(grad, self.inputs[0].buffer.array, self.grad_target(1))
            self.finish_grad(1)
        if len(self.inputs) == 3 and self.needs(2):
            matmul.linear_backward_bias(grad, self.grad_target(2))
            self.finish_grad(2)


class Add(Node):
    name = "add"

    def forward(self):
        np.add(self.inputs[0].buffer.array, self.inputs[1].buffer.array, out=self.output.buffer.array)

    def backward(self):
        for k in range(2):
            if self.needs(k):
                self.deliver(k, self.output.grad.array)


class Cat(Node):
    """Concatenation along one axis of the internal layout (channels: the last axis of NHWC)."""

    name = "cat"

    def __init__(self, inputs, output, axis):
        super().__init__(inputs, output)
        self.slices = []
        start = 0
        for value in inputs:
            index = [slice(None)] * len(output.shape)
            index[axis] = slice(start, start + value.shape[axis])
            self.slices.append(tuple(index))
            start += value.shape[axis]

    def forward(self):
        out = self.output.buffer.array
        for value, index in zip(self.inputs, self.slices):
            np.copyto(out[index], value.buffer.array)

    def backward(self):
        grad = self.output.grad.array
        for k, index in enumerate(self.slices):
            if self.needs(k):
                self.deliver(k, grad[index])


class Dropout(Node):
    """Masks drawn from cn's global generator, the same numbers in the same order as eager dropout draws them."""

    name = "dropout"

    def __init__(self, x, output, p, scale):
        super().__init__([x], output)
        self.p, self.scale = p, output.dtype.type(scale)
        self.uniform = Buffer((int(np.prod(x.shape)),), np.float64, output.name + ".uniform")
        self.keep_nchw = Buffer((int(np.prod(x.shape)),), np.bool_, output.name + ".keep_nchw")
        self.keep = Buffer((int(np.prod(x.shape)),), np.bool_, output.name + ".keep")

    def forward_buffers(self):
        return super().forward_buffers() + [self.uniform, self.keep_nchw, self.keep]

    def backward_buffers(self):
        return super().backward_buffers() + [self.keep]

    def forward(self):
        uniform, keep = self.uniform.array, self.keep.array
        _config.generator().random(out=uniform)
        if self.output.nhwc:
            # eager draws one number per element in NCHW order; lay the mask out as the graph's NHWC
            np.greater_equal(uniform, self.p, out=self.keep_nchw.array)
            batch, height, width, channels = self.output.shape
            np.copyto(keep.reshape(self.output.shape),
                      self.keep_nchw.array.reshape(batch, channels, height, width).transpose(0, 2, 3, 1))
        else:
            np.greater_equal(uniform, self.p, out=keep)
        elementwise.dropout_apply(self.inputs[0].buffer.array.reshape(-1), keep, self.scale,
                                  self.output.buffer.array.reshape(-1))

    def backward(self):
        elementwise.dropout_apply(self.output.grad.array.reshape(-1), self.keep.array, self.scale,
                                  self.grad_target(0).reshape(-1))
        self.finish_grad(0)


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


class Fallback(Node):
    """An op the lowering has no node for: its own Function forward and backward on NCHW arrays (not planned)."""

    def __init__(self, function_class, arguments, options, output, needs_input_grad):
        values = [a for a in arguments if isinstance(a, Value)]
        super().__init__(values, output)
        self.function_class, self.arguments, self.options = function_class, arguments, options
        self.needs_input_grad = needs_input_grad
        self.name = f"fallback[{function_class.__name__}]"
        self.op = None

    @staticmethod
    def _public(value):
        array = value.buffer.array
        return array.transpose(0, 3, 1, 2) if value.nhwc else array

    def forward(self):
        self.op = self.function_class()
        self.op.needs_input_grad = self.needs_input_grad
        arrays = [np.ascontiguousarray(self._public(a)) if isinstance(a, Value) else a for a in self.arguments]
        result = self.op.forward(*arrays, **self.options)
        out = self.output.buffer.array
        np.copyto(out, result.transpose(0, 2, 3, 1) if self.output.nhwc else result)

    def backward(self):
        grad = self.output.grad.array
        grads = self.op.backward(np.ascontiguousarray(grad.transpose(0, 3, 1, 2) if self.output.nhwc else grad))
        if not isinstance(grads, tuple):
            grads = (grads,)
        k = 0
        for position, argument in enumerate(self.arguments):
            if not isinstance(argument, Value):
                continue
            if self.needs(k):
                gradient = grads[position]
                self.deliver(k, gradient.transpose(0, 2, 3, 1) if argument.nhwc else gradient)
            k += 1
        self.op = None


class FoldedConv(Node):
    """Inference conv with the following eval-mode batch norm folded in: w' = w * s, b' = (b - mean) * s + beta,
    s = gamma / sqrt(running_var + eps), refolded from the live parameters at every call (+ ReLU in place)."""

    def __init__(self, x, output, conv_weight, conv_bias, bn, stride, padding, dilation, groups, relu):
        super().__init__([x], output)
        self.conv_weight, self.conv_bias = conv_weight, conv_bias  # arrays (the model's own), conv_bias may be None
        self.bn = bn  # (running_mean, running_var, gamma or None, beta or None, eps) or None for a plain conv
        self.relu = relu
        self.options = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        c_out, group_in, kernel_h, kernel_w = conv_weight.shape
        dtype = conv_weight.dtype
        self.weight_khwc = np.empty((kernel_h, kernel_w, group_in, c_out), dtype=dtype)
        self.bias = np.empty(c_out, dtype=dtype)
        self.scale = np.empty(c_out, dtype=np.float64)
        self.wide_weight = np.empty(self.weight_khwc.shape, dtype=np.float64)
        self.wide_bias = np.empty(c_out, dtype=np.float64)
        self.workspace = None

    @property
    def name(self):
        return ("conv+bn(folded)" if self.bn is not None else "conv") + ("+relu" if self.relu else "")

    def workspace_bytes(self):
        return conv_kernels.conv2d_workspace_bytes("forward", self.inputs[0].shape, self.weight_khwc.shape,
                                                   self.output.shape, self.output.dtype, **self.options)

    def fold(self):
        weight_view = self.conv_weight.transpose(2, 3, 1, 0)
        if self.bn is None:
            np.copyto(self.weight_khwc, weight_view)
            if self.conv_bias is not None:
                np.copyto(self.bias, self.conv_bias)
            return
        running_mean, running_var, gamma, beta, eps = self.bn
        np.add(running_var, eps, out=self.scale, dtype=np.float64)
        np.sqrt(self.scale, out=self.scale)
        np.divide(1.0 if gamma is None else gamma, self.scale, out=self.scale, dtype=np.float64)
        np.multiply(weight_view, self.scale, out=self.wide_weight, dtype=np.float64)
        np.copyto(self.weight_khwc, self.wide_weight, casting="same_kind")
        if self.conv_bias is None:
            np.negative(running_mean, out=self.wide_bias, dtype=np.float64)
        else:
            np.subtract(self.conv_bias, running_mean, out=self.wide_bias, dtype=np.float64)
        np.multiply(self.wide_bias, self.scale, out=self.wide_bias)
        if beta is not None:
            np.add(self.wide_bias, beta, out=self.wide_bias, dtype=np.float64)
        np.copyto(self.bias, self.wide_bias, casting="same_kind")

    def forward(self):
        self.fold()
        has_bias = self.bn is not None or self.conv_bias is not None
        conv_kernels.conv2d_forward(self.inputs[0].buffer.array, self.weight_khwc, self.bias if has_bias else None,
                                    self.output.buffer.array, relu=self.relu, workspace=self.workspace,
                                    **self.options)


class BatchNormEval(Node):
    """Eval-mode batch norm (+ ReLU) with the running statistics, where it could not be folded into a conv."""

    def __init__(self, x, output, running_mean, running_var, gamma, beta, eps, relu):
        super().__init__([x], output)
        channels = x.shape[-1]
        self.running_mean, self.running_var, self.eps, self.relu = running_mean, running_var, eps, relu
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
