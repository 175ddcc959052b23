"""Convolution nodes: the training conv (+ bias and activation) and the inference conv with batch norm folded in.

The activation is a clamp (kernels/fused.py): ReLU, and ReLU6 in the tiled variants, are applied as the conv
kernel stores each output tile; another clamp (Hardtanh), which the conv kernels do not take, in one pass of the
elementwise hardtanh kernel over the conv's output inside the node, in place, so that it needs no buffer of its own.
"""
import numpy as np

from ...kernels import conv2d as conv_kernels
from ...kernels import elementwise, fused, norm
from ...kernels.layout import hwio_to_oihw, hwio_view, oihw_to_hwio
from ..plan import Buffer
from .base import NO_CLAMP, RELU, RELU6, Node, rows, with_activation


def _bind_clamped(clamp, x, weight, bias, out, workspace, options, normalize=None):
    """The conv's forward (normalized by a batch norm's coefficients when given) and its clamp, bound to these
    arrays (Node.bound): ReLU and ReLU6 in the conv kernels (as they store, where they can), any other clamp in a
    pass over the output after."""
    clamp = tuple(clamp)
    conv = conv_kernels.bind_forward(x, weight, bias, out, relu=clamp == RELU, relu6=clamp == RELU6,
                                     workspace=workspace, normalize=normalize, **options)
    if clamp in (NO_CLAMP, RELU, RELU6):
        return conv
    flat, bounds = out.reshape(-1), fused.clamp_bounds(clamp, out.dtype)

    def forward_clamped():
        conv()
        elementwise.hardtanh_forward(flat, *bounds, flat)

    return forward_clamped


class Conv(Node):
    """conv2d (+ its bias and activation, see the module's docstring); backward masks by the activation (by the
    output, as the unfused ReLU and Hardtanh do), after ReLU summing the bias gradient in the same pass. The kernels
    take the weight as (kH, kW, C_in/groups, C_out): read and written in place where the training arena stores it
    so, else re-laid-out at each step. Its kernels' scratch comes from `workspace`, one array the schedule shares
    among all conv nodes."""

    def __init__(self, x, weight, bias, output, stride, padding, dilation, groups, clamp=NO_CLAMP):
        super().__init__([x, weight] + ([bias] if bias is not None else []), output)
        self.has_bias, self.clamp = bias is not None, clamp
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
        return with_activation("conv+bias" if self.has_bias else "conv", self.clamp)

    def workspace_bytes(self):
        """The most scratch any of this node's kernel calls takes (the schedule's workspace is at least this)."""
        passes = ["forward"]
        if self.output.needs_grad:
            # after ReLU the bias gradient is summed by fused.relu_backward_bias_grad, without the conv workspace
            bias_pass = self.has_bias and self.needs(2) and self.clamp != RELU
            passes += [name for name, needed in (("backward_input", self.needs(0)), ("backward_weight", self.needs(1)),
                                                 ("backward_bias", bias_pass)) if needed]
        return max(conv_kernels.conv2d_workspace_bytes(name, self.inputs[0].shape, self.weight_khwc.shape,
                                                       self.output.shape, self.output.dtype, **self.options)
                   for name in passes)

    def _weight_in_place(self):
        return hwio_view(self.inputs[1].buffer.array)

    def _grad_weight_in_place(self):
        grad = self.inputs[1].grad
        return None if grad is None or self.accumulate[1] else hwio_view(grad.array)

    def forward_buffers(self):
        return super().forward_buffers() + ([] if self._weight_in_place() is not None else [self.weight_khwc])

    def backward_buffers(self):
        extra = [self.inputs[0].buffer] + ([] if self._weight_in_place() is not None else [self.weight_khwc])
        if self.clamp != NO_CLAMP:
            extra += [self.grad_pre, self.output.buffer]
        if self.clamp == RELU:
            extra.append(self.partials)
        if self.needs(1) and self._grad_weight_in_place() is None:
            extra.append(self.grad_weight_khwc)
        return super().backward_buffers() + extra

    def _weight(self):
        """The weight in the kernels' layout: the parameter itself, or its re-laid-out copy."""
        weight = self._weight_in_place()
        return weight if weight is not None else self.weight_khwc.array

    def forward(self):
        x, weight, out = self.inputs[0].buffer.array, self.inputs[1].buffer.array, self.output.buffer.array
        if self._weight_in_place() is None:
            oihw_to_hwio(weight, self.weight_khwc.array)
        bias = self.inputs[2].buffer.array if self.has_bias else None
        self.bound("forward", (x, weight, bias, out, self.workspace),
                   lambda: _bind_clamped(self.clamp, x, self._weight(), bias, out, self.workspace, self.options))()

    def backward(self):
        grad_y, y = self.output.grad.array, self.output.buffer.array
        if self.clamp == RELU:
            grad = self.grad_pre.array
            if self.has_bias and self.needs(2):
                fused.relu_backward_bias_grad(rows(grad_y), rows(y), rows(grad), self.partials.array,
                                              self.grad_target(2))
                self.finish_grad(2)
            else:
                elementwise.relu_backward(grad_y.reshape(-1), y.reshape(-1), grad.reshape(-1))
        else:
            grad = grad_y
            if self.clamp != NO_CLAMP:
                grad = self.grad_pre.array
                bounds = fused.clamp_bounds(self.clamp, y.dtype)
                elementwise.hardtanh_backward(grad_y.reshape(-1), y.reshape(-1), *bounds, grad.reshape(-1))
            if self.has_bias and self.needs(2):
                conv_kernels.conv2d_backward_bias(grad, self.grad_target(2), workspace=self.workspace)
                self.finish_grad(2)
        if self.needs(1):
            x, grad_weight = self.inputs[0].buffer.array, self.inputs[1].grad.array
            in_place = self._grad_weight_in_place()
            target = in_place if in_place is not None else self.grad_weight_khwc.array
            self.bound("backward_weight", (x, grad, grad_weight, self.workspace),
                       lambda: conv_kernels.bind_backward_weight(x, grad, target, workspace=self.workspace,
                                                                 **self.options))()
            if in_place is None:
                hwio_to_oihw(target, self.grad_target(1))
                self.finish_grad(1)
        if self.needs(0):
            weight, grad_x = self.inputs[1].buffer.array, self.grad_target(0)
            self.bound("backward_input", (grad, weight, grad_x, self.workspace),
                       lambda: conv_kernels.bind_backward_input(grad, self._weight(), grad_x, workspace=self.workspace,
                                                                **self.options))()
            self.finish_grad(0)


class FoldedConv(Node):
    """Inference conv with the following eval-mode batch norm folded in: w' = w * s, b' = (b - mean) * s + beta,
    s = gamma / sqrt(running_var + eps), refolded from the live parameters at every call (+ an activation, as for
    Conv); or, with bn_on_output (a weight larger than the output), the batch norm applied to the conv's output by
    the conv kernel, its coefficients made from the live parameters at every call. With nothing folded into it, a
    weight stored in the kernels' layout (graph/update.py) is read in place."""

    def __init__(self, x, output, conv_weight, conv_bias, bn, stride, padding, dilation, groups, clamp=NO_CLAMP):
        super().__init__([x], output)
        self.conv_weight, self.conv_bias = conv_weight, conv_bias  # arrays (the model's own), conv_bias may be None
        self.bn = bn  # (running_mean, running_var, gamma or None, beta or None, eps) or None for a plain conv
        self.bn_on_output = False
        self.clamp = clamp
        self.options = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        c_out, group_in, kernel_h, kernel_w = conv_weight.shape
        self.khwc_shape = (kernel_h, kernel_w, group_in, c_out)
        self.weight_khwc = None  # the re-laid-out or folded weight, made on first use
        self.bias = np.empty(c_out, dtype=conv_weight.dtype)
        self.coefficients = np.empty((3, c_out), dtype=conv_weight.dtype)  # the batch norm, with bn_on_output
        self.scale = np.empty(c_out, dtype=np.float64)
        # stand-ins for an absent conv bias, gamma or beta, so the fold compiles once per dtype
        self.zeros, self.ones = np.zeros(c_out, dtype=conv_weight.dtype), np.ones(c_out, dtype=conv_weight.dtype)
        self.workspace = None

    @property
    def name(self):
        name = "conv" if self.bn is None else "conv+bn(output)" if self.bn_on_output else "conv+bn(folded)"
        return with_activation(name, self.clamp)

    def workspace_bytes(self):
        return conv_kernels.conv2d_workspace_bytes("forward", self.inputs[0].shape, self.khwc_shape,
                                                   self.output.shape, self.output.dtype, **self.options)

    def fold(self):
        """(weight in the kernels' layout, bias or None) from the live parameters."""
        weight = hwio_view(self.conv_weight)
        unchanged = self.bn is None or self.bn_on_output
        if unchanged and weight is not None:
            return weight, self.conv_bias
        if self.weight_khwc is None:
            self.weight_khwc = np.empty(self.khwc_shape, dtype=self.conv_weight.dtype)
        if weight is None:
            weight = oihw_to_hwio(self.conv_weight, self.weight_khwc)
        if unchanged:
            return weight, self.conv_bias
        running_mean, running_var, gamma, beta, eps = self.bn
        c_out = self.khwc_shape[3]
        norm.fold_batch_norm(weight.reshape(-1, c_out), self.zeros if self.conv_bias is None else self.conv_bias,
                             running_mean, running_var, self.ones if gamma is None else gamma,
                             self.zeros if beta is None else beta, eps, self.weight_khwc.reshape(-1, c_out), self.bias,
                             self.scale)
        return self.weight_khwc, self.bias

    def forward(self):
        weight, bias = self.fold()
        normalize = None
        if self.bn_on_output:
            running_mean, running_var, gamma, beta, eps = self.bn
            normalize = self.coefficients
            norm.running_coefficients(running_mean, running_var, float(eps), self.ones if gamma is None else gamma,
                                       self.zeros if beta is None else beta, normalize)
        x, out = self.inputs[0].buffer.array, self.output.buffer.array
        # fold() returns views of these (or these): they decide whether the bound call still holds
        sources = (x, self.conv_weight, self.conv_bias, self.weight_khwc, self.bias, normalize, out, self.workspace)
        self.bound("forward", sources, lambda: _bind_clamped(self.clamp, x, weight, bias, out, self.workspace,
                                                             self.options, normalize))()
