"""Plain-NumPy versions of every kernel: the test oracle and the benchmarks' baseline. They live outside
cnnnumba/kernels so that editing an oracle leaves the compiled kernels' cache valid.

Each function has the same signature and layout conventions as its Numba twin in the kernel module named in
its section, and is written for clarity, not speed.
"""
import numpy as np

# ---- conv2d (twin of the entry points of kernels/conv2d/) ----

def _conv2d_padded_extent(size, pad_before, out_size, stride, kernel, dilation):
    """Length of the zero-padded axis that holds every tap of out_size windows and the whole input."""
    return max(pad_before + size, (out_size - 1) * stride + dilation * (kernel - 1) + 1)


def _conv2d_tap(axis_offset, out_size, stride):
    return slice(axis_offset, axis_offset + (out_size - 1) * stride + 1, stride)


def conv2d_forward(x, weight, bias, out, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, relu=False,
                   relu6=False):
    batch, height, width, channels_in = x.shape
    kernel_h, kernel_w, group_in, channels_out = weight.shape
    out_h, out_w = out.shape[1], out.shape[2]
    group_out = channels_out // groups
    padded = np.zeros((batch, _conv2d_padded_extent(height, padding[0], out_h, stride[0], kernel_h, dilation[0]),
                       _conv2d_padded_extent(width, padding[1], out_w, stride[1], kernel_w, dilation[1]),
                       channels_in), dtype=x.dtype)
    padded[:, padding[0]:padding[0] + height, padding[1]:padding[1] + width] = x
    result = np.zeros(out.shape, dtype=x.dtype)
    for g in range(groups):
        cin, cout = slice(g * group_in, (g + 1) * group_in), slice(g * group_out, (g + 1) * group_out)
        for kh in range(kernel_h):
            for kw in range(kernel_w):
                window = padded[:, _conv2d_tap(kh * dilation[0], out_h, stride[0]),
                                _conv2d_tap(kw * dilation[1], out_w, stride[1]), cin]
                result[..., cout] += window @ weight[kh, kw, :, cout]
    if bias is not None:
        result += bias
    if relu or relu6:
        result = np.where(result < 0, 0, result)
    out[...] = np.where(result > 6, 6, result) if relu6 else result
    return out


def conv2d_backward_input(grad_out, weight, out, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    batch, height, width, channels_in = out.shape
    kernel_h, kernel_w, group_in, channels_out = weight.shape
    out_h, out_w = grad_out.shape[1], grad_out.shape[2]
    group_out = channels_out // groups
    padded = np.zeros((batch, _conv2d_padded_extent(height, padding[0], out_h, stride[0], kernel_h, dilation[0]),
                       _conv2d_padded_extent(width, padding[1], out_w, stride[1], kernel_w, dilation[1]),
                       channels_in), dtype=out.dtype)
    for g in range(groups):
        cin, cout = slice(g * group_in, (g + 1) * group_in), slice(g * group_out, (g + 1) * group_out)
        for kh in range(kernel_h):
            for kw in range(kernel_w):
                padded[:, _conv2d_tap(kh * dilation[0], out_h, stride[0]),
                       _conv2d_tap(kw * dilation[1], out_w, stride[1]), cin] += \
                    grad_out[..., cout] @ weight[kh, kw, :, cout].T
    out[...] = padded[:, padding[0]:padding[0] + height, padding[1]:padding[1] + width]
    return out


def conv2d_backward_weight(x, grad_out, out, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    batch, height, width, channels_in = x.shape
    kernel_h, kernel_w, group_in, channels_out = out.shape
    out_h, out_w = grad_out.shape[1], grad_out.shape[2]
    group_out = channels_out // groups
    padded = np.zeros((batch, _conv2d_padded_extent(height, padding[0], out_h, stride[0], kernel_h, dilation[0]),
                       _conv2d_padded_extent(width, padding[1], out_w, stride[1], kernel_w, dilation[1]),
                       channels_in), dtype=x.dtype)
    padded[:, padding[0]:padding[0] + height, padding[1]:padding[1] + width] = x
    for g in range(groups):
        cin, cout = slice(g * group_in, (g + 1) * group_in), slice(g * group_out, (g + 1) * group_out)
        for kh in range(kernel_h):
            for kw in range(kernel_w):
                window = padded[:, _conv2d_tap(kh * dilation[0], out_h, stride[0]),
                                _conv2d_tap(kw * dilation[1], out_w, stride[1]), cin]
                out[kh, kw, :, cout] = np.einsum("nhwi,nhwo->io", window, grad_out[..., cout])
    return out


def conv2d_backward_bias(grad_out, out):
    out[...] = grad_out.sum(axis=(0, 1, 2))
    return out


# ---- pool2d (twin of kernels/pool2d.py) ----


def _pool_taps(out_index, stride, pad, kernel, dilation, in_size):
    """The in-bounds input positions of one window along one axis, in scan order."""
    start = out_index * stride - pad
    return [start + k * dilation for k in range(kernel) if 0 <= start + k * dilation < in_size]


def max_pool2d_forward(x, out, indices, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                       dilation_h, dilation_w):
    _, height, width, _ = x.shape
    for oh in range(out.shape[1]):
        rows = _pool_taps(oh, stride_h, pad_h, kernel_h, dilation_h, height)
        for ow in range(out.shape[2]):
            cols = _pool_taps(ow, stride_w, pad_w, kernel_w, dilation_w, width)
            best = np.full(out[:, oh, ow].shape, -np.inf, dtype=out.dtype)
            best_index = np.full(best.shape, rows[0] * width + cols[0] if rows and cols else -1, dtype=np.int64)
            for ih in rows:
                for iw in cols:
                    value = x[:, ih, iw]
                    take = (value > best) | np.isnan(value)
                    best = np.where(take, value, best)
                    best_index = np.where(take, ih * width + iw, best_index)
            out[:, oh, ow] = best
            indices[:, oh, ow] = best_index


def max_pool2d_backward(grad_out, indices, grad_in, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                        dilation_h, dilation_w):
    batch, height, width, channels = grad_in.shape
    flat = np.zeros((batch, height * width, channels), dtype=grad_in.dtype)
    n_index, _, _, c_index = np.indices(indices.shape)
    valid = indices >= 0
    np.add.at(flat, (n_index[valid], indices[valid], c_index[valid]), grad_out[valid])
    grad_in[...] = flat.reshape(grad_in.shape)


def _avg_pool_divisor_mask(height, width, out_h, out_w, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                           count_include_pad):
    """Canvas masks covering every window: where the input lies, and what the divisor counts."""
    canvas_h = max((out_h - 1) * stride_h + kernel_h, height + pad_h)
    canvas_w = max((out_w - 1) * stride_w + kernel_w, width + pad_w)
    inside = np.zeros((canvas_h, canvas_w))
    inside[pad_h:pad_h + height, pad_w:pad_w + width] = 1
    counted = np.zeros_like(inside)
    if count_include_pad:
        counted[:height + 2 * pad_h, :width + 2 * pad_w] = 1
    else:
        counted[...] = inside
    return inside, counted


def avg_pool2d_forward(x, out, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, count_include_pad,
                       divisor_override):
    batch, height, width, channels = x.shape
    inside, counted = _avg_pool_divisor_mask(height, width, out.shape[1], out.shape[2], kernel_h, kernel_w,
                                             stride_h, stride_w, pad_h, pad_w, count_include_pad)
    canvas = np.zeros((batch,) + inside.shape + (channels,), dtype=np.float64)
    canvas[:, pad_h:pad_h + height, pad_w:pad_w + width] = x
    for oh in range(out.shape[1]):
        for ow in range(out.shape[2]):
            window = (slice(oh * stride_h, oh * stride_h + kernel_h), slice(ow * stride_w, ow * stride_w + kernel_w))
            if inside[window].sum() == 0:
                out[:, oh, ow] = 0
                continue
            divisor = divisor_override or counted[window].sum()
            out[:, oh, ow] = canvas[(slice(None),) + window].sum(axis=(1, 2)) / divisor


def avg_pool2d_backward(grad_out, grad_in, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                        count_include_pad, divisor_override):
    batch, height, width, channels = grad_in.shape
    inside, counted = _avg_pool_divisor_mask(height, width, grad_out.shape[1], grad_out.shape[2], kernel_h,
                                             kernel_w, stride_h, stride_w, pad_h, pad_w, count_include_pad)
    canvas = np.zeros((batch,) + inside.shape + (channels,), dtype=np.float64)
    for oh in range(grad_out.shape[1]):
        for ow in range(grad_out.shape[2]):
            window = (slice(oh * stride_h, oh * stride_h + kernel_h), slice(ow * stride_w, ow * stride_w + kernel_w))
            if inside[window].sum() == 0:
                continue
            divisor = divisor_override or counted[window].sum()
            canvas[(slice(None),) + window] += grad_out[:, oh, ow, None, None, :] / divisor
    grad_in[...] = canvas[:, pad_h:pad_h + height, pad_w:pad_w + width]


def _adaptive_windows(in_size, out_size):
    return [(i * in_size // out_size, -(-(i + 1) * in_size // out_size)) for i in range(out_size)]


def adaptive_avg_pool2d_forward(x, out):
    for oh, (h_begin, h_end) in enumerate(_adaptive_windows(x.shape[1], out.shape[1])):
        for ow, (w_begin, w_end) in enumerate(_adaptive_windows(x.shape[2], out.shape[2])):
            with np.errstate(invalid="ignore"):
                out[:, oh, ow] = x[:, h_begin:h_end, w_begin:w_end].astype(np.float64).mean(axis=(1, 2))


def adaptive_avg_pool2d_backward(grad_out, grad_in):
    grad = np.zeros(grad_in.shape, dtype=np.float64)
    for oh, (h_begin, h_end) in enumerate(_adaptive_windows(grad_in.shape[1], grad_out.shape[1])):
        for ow, (w_begin, w_end) in enumerate(_adaptive_windows(grad_in.shape[2], grad_out.shape[2])):
            count = (h_end - h_begin) * (w_end - w_begin)
            grad[:, h_begin:h_end, w_begin:w_end] += grad_out[:, oh, ow, None, None, :] / count
    grad_in[...] = grad

# ---- matmul (twin of kernels/matmul.py) ----


def linear_forward(x, weight, bias, out):
    out[...] = x @ weight.T + (bias if bias.size else 0)


def linear_backward_input(grad_out, weight, grad_x):
    grad_x[...] = grad_out @ weight


def linear_backward_weight(grad_out, x, grad_weight):
    grad_weight[...] = grad_out.T @ x


def linear_backward_bias(grad_out, grad_bias):
    grad_bias[...] = grad_out.sum(axis=0)

# ---- elementwise (twin of kernels/elementwise.py) ----


def relu_forward(x, out):
    out[...] = np.where(x <= 0, 0, x)


def relu_backward(grad, y, out):
    out[...] = np.where(y > 0, grad, 0)


def leaky_relu_forward(x, negative_slope, out):
    out[...] = np.where(x > 0, x, x * negative_slope)


def leaky_relu_backward(grad, x, negative_slope, out):
    out[...] = np.where(x > 0, grad, grad * negative_slope)


def hardtanh_forward(x, min_val, max_val, out):
    out[...] = np.where(x < min_val, min_val, np.where(x > max_val, max_val, x))


def hardtanh_backward(grad, x, min_val, max_val, out):
    out[...] = np.where((x > min_val) & (x < max_val), grad, 0)


def _erf(x):
    from math import erf
    return np.vectorize(erf, otypes=[np.float64])(x)


def gelu_forward(x, tanh_approximation, out):
    x = x.astype(np.float64)
    if tanh_approximation:
        out[...] = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    else:
        out[...] = 0.5 * x * (1 + _erf(x / np.sqrt(2)))


def gelu_backward(grad, x, tanh_approximation, out):
    x = x.astype(np.float64)
    if tanh_approximation:
        inner = np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)
        d_inner = np.sqrt(2 / np.pi) * (1 + 3 * 0.044715 * x ** 2)
        derivative = 0.5 * (1 + np.tanh(inner)) + 0.5 * x * (1 - np.tanh(inner) ** 2) * d_inner
    else:
        derivative = 0.5 * (1 + _erf(x / np.sqrt(2))) + x * np.exp(-x * x / 2) / np.sqrt(2 * np.pi)
    out[...] = grad * derivative


def sigmoid_forward(x, out):
    x = x.astype(np.float64)
    with np.errstate(over="ignore"):
        out[...] = np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


def sigmoid_backward(grad, y, out):
    out[...] = grad * y * (1 - y)


def tanh_forward(x, out):
    out[...] = np.tanh(x)


def tanh_backward(grad, y, out):
    out[...] = grad * (1 - y * y)


def dropout_apply(x, keep, scale, out):
    out[...] = x * np.where(keep, scale, 0).astype(x.dtype)

# ---- norm (twin of kernels/norm.py) ----


def channel_statistics(x, rows_per_chunk=None):
    """Per-channel mean and biased variance of x (rows, C), float64."""
    x64 = x.astype(np.float64)
    return x64.mean(axis=0), x64.var(axis=0)


def batch_norm_normalize(x, mean, invstd, weight, bias):
    return ((x - mean) * invstd * weight + bias).astype(x.dtype)


def batch_norm_forward_train(x, weight, bias, eps, rows_per_chunk=None):
    mean, variance = channel_statistics(x)
    invstd = 1.0 / np.sqrt(variance + eps)
    return batch_norm_normalize(x.astype(np.float64), mean, invstd, weight, bias).astype(x.dtype), mean, variance, invstd


def batch_norm_forward_eval(x, running_mean, running_var, weight, bias, eps):
    invstd = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
    return batch_norm_normalize(x.astype(np.float64), running_mean, invstd, weight, bias).astype(x.dtype)


def batch_norm_grad_sums(grad_y, x, mean, invstd, rows_per_chunk=None):
    grad_y = grad_y.astype(np.float64)
    return grad_y.sum(axis=0), (grad_y * (x.astype(np.float64) - mean) * invstd).sum(axis=0)


def batch_norm_backward_train(grad_y, x, mean, invstd, weight, rows_per_chunk=None):
    sum_dy, sum_dy_xhat = batch_norm_grad_sums(grad_y, x, mean, invstd)
    x_hat = (x.astype(np.float64) - mean) * invstd
    rows = x.shape[0]
    grad_x = weight * invstd * (grad_y - sum_dy / rows - x_hat * sum_dy_xhat / rows)
    return grad_x.astype(x.dtype), sum_dy_xhat, sum_dy


def batch_norm_backward_eval(grad_y, x, running_mean, running_var, weight, eps, rows_per_chunk=None):
    invstd = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
    sum_dy, sum_dy_xhat = batch_norm_grad_sums(grad_y, x, running_mean.astype(np.float64), invstd)
    return (grad_y * weight * invstd).astype(grad_y.dtype), sum_dy_xhat, sum_dy


def fold_batch_norm(weight, conv_bias, running_mean, running_var, gamma, beta, eps, folded_weight, folded_bias, scale):
    wide = np.float64
    scale[...] = gamma.astype(wide) / np.sqrt(running_var.astype(wide) + eps)
    folded_bias[...] = (conv_bias.astype(wide) - running_mean.astype(wide)) * scale + beta.astype(wide)
    folded_weight[...] = weight.astype(wide) * scale


# ---- loss (twin of kernels/loss.py) ----


def _logsumexp(x):
    x64 = x.astype(np.float64)
    m = x64.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(x64 - m).sum(axis=-1, keepdims=True)))[:, 0]


def softmax_forward(x):
    return np.exp(x.astype(np.float64) - _logsumexp(x)[:, None]).astype(x.dtype)


def softmax_backward(grad_y, y):
    dot = (grad_y.astype(np.float64) * y).sum(axis=-1, keepdims=True)
    return (y * (grad_y - dot)).astype(y.dtype)


def log_softmax_forward(x):
    return (x.astype(np.float64) - _logsumexp(x)[:, None]).astype(x.dtype)


def log_softmax_backward(grad_y, y):
    total = grad_y.astype(np.float64).sum(axis=-1, keepdims=True)
    return (grad_y - np.exp(y.astype(np.float64)) * total).astype(y.dtype)


def cross_entropy_forward(logits, target, class_weight, ignore_index, label_smoothing):
    rows, classes = logits.shape
    logsumexp = _logsumexp(logits)
    neg_log_p = logsumexp[:, None] - logits.astype(np.float64)
    kept = target != ignore_index
    safe_target = np.where(kept, target, 0)
    row_weight = np.where(kept, class_weight[safe_target], 0.0)
    nll = row_weight * neg_log_p[np.arange(rows), safe_target]
    smooth = np.where(kept, (neg_log_p * class_weight).sum(axis=1), 0.0)
    loss = (1.0 - label_smoothing) * nll + label_smoothing / classes * smooth
    return loss, row_weight, logsumexp


def cross_entropy_backward(logits, target, class_weight, logsumexp, row_scale, ignore_index, label_smoothing):
    rows, classes = logits.shape
    p = np.exp(logits.astype(np.float64) - logsumexp[:, None])
    kept = target != ignore_index
    safe_target = np.where(kept, target, 0)
    one_hot = np.zeros_like(p)
    one_hot[np.arange(rows), safe_target] = 1.0
    nll_grad = class_weight[safe_target][:, None] * (p - one_hot)
    smooth_grad = p * class_weight.sum() - class_weight
    grad = (1.0 - label_smoothing) * nll_grad + label_smoothing / classes * smooth_grad
    return (grad * (row_scale * kept)[:, None]).astype(logits.dtype)


# ---- optim (twin of kernels/optim.py) ----

def sgd_update(param, grad, momentum_buffer, lr, momentum, one_minus_dampening, weight_decay, nesterov, maximize,
               first_step):
    grad = -grad if maximize else grad
    if weight_decay != 0:
        grad = grad + weight_decay * param
    if momentum != 0:
        if first_step:
            momentum_buffer[...] = grad
        else:
            momentum_buffer[...] = momentum * momentum_buffer + one_minus_dampening * grad
        grad = grad + momentum * momentum_buffer if nesterov else momentum_buffer
    param -= lr * grad


def adam_update(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, beta1, one_minus_beta1, beta2, one_minus_beta2, eps,
                weight_decay, decay_factor, step_size, bias_correction2_sqrt, amsgrad, maximize):
    if decay_factor != 1:
        param *= decay_factor
    grad = -grad if maximize else grad
    if weight_decay != 0:
        grad = grad + weight_decay * param
    if one_minus_beta1 < 0.5:
        exp_avg += one_minus_beta1 * (grad - exp_avg)
    else:
        exp_avg[...] = grad - (grad - exp_avg) * beta1
    exp_avg_sq[...] = exp_avg_sq * beta2 + one_minus_beta2 * grad * grad
    second_moment = exp_avg_sq
    if amsgrad:
        np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        second_moment = max_exp_avg_sq
    param -= step_size * (exp_avg / (np.sqrt(second_moment) / bias_correction2_sqrt + eps))


# ---- fused (twin of kernels/fused.py) ----

def batch_norm_statistics(x, eps):
    """(mean, biased variance, invstd) per channel of x (rows, C), in float64: two passes over all of x (the kernel
    makes them per cache-sized chunk and combines the chunks, the same numbers within float64 rounding)."""
    values = x.astype(np.float64)
    mean = values.mean(axis=0)
    variance = ((values - mean) ** 2).mean(axis=0)
    return mean, variance, 1.0 / np.sqrt(variance + eps)


def _clamped(y, clamp):
    lower, upper = (y.dtype.type(bound) for bound in clamp)
    return np.where(y <= lower, lower, np.where(y >= upper, upper, y))


def _clamp_passes(values, clamp):
    """Where a clamp's gradient passes: lower < values < upper, an infinite bound being no bound."""
    lower, upper = (values.dtype.type(bound) for bound in clamp)
    return ((lower == -np.inf) | (values > lower)) & ((upper == np.inf) | (values < upper))


def batch_norm_act_forward(x, mean, invstd, weight, bias, clamp):
    y = ((x - mean.astype(x.dtype)) * (invstd * weight).astype(x.dtype) + bias.astype(x.dtype)).astype(x.dtype)
    return _clamped(y, clamp)


def batch_norm_act_backward(grad_y, x, mean, invstd, weight, bias, clamp):
    """(grad_x, grad_weight, grad_bias) of batch norm (batch statistics) followed by a clamp to (lower, upper); the
    mask is lower < pre-activation < upper, the pre-activation recomputed from x as batch_norm_act_forward computes
    it."""
    g = grad_y.astype(np.float64)
    if tuple(clamp) != (-np.inf, np.inf):  # bias is None where there is no clamp
        pre_activation = batch_norm_act_forward(x, mean, invstd, weight, bias, (-np.inf, np.inf))
        g = np.where(_clamp_passes(pre_activation, clamp), g, 0)
    x_hat = (x.astype(np.float64) - mean) * invstd
    sum_dy, sum_dy_xhat = g.sum(axis=0), (g * x_hat).sum(axis=0)
    rows = x.shape[0]
    grad_x = weight * invstd * (g - sum_dy / rows - x_hat * sum_dy_xhat / rows)
    return grad_x.astype(x.dtype), sum_dy_xhat.astype(x.dtype), sum_dy.astype(x.dtype)


def relu_backward_bias_grad(grad_y, y):
    grad_x = np.where(y > 0, grad_y, 0).astype(grad_y.dtype)
    return grad_x, grad_x.astype(np.float64).sum(axis=0).astype(grad_y.dtype)


def batch_norm_add_act_forward(x, shortcut, mean, invstd, weight, bias, clamp):
    total = batch_norm_act_forward(x, mean, invstd, weight, bias, (-np.inf, np.inf)) + shortcut
    return _clamped(total, clamp)


def batch_norm_add_act_backward(grad_y, y, x, mean, invstd, weight, clamp):
    """(grad_shortcut, grad_x, grad_weight, grad_bias) of clamp(batch_norm(x) + shortcut), y its output."""
    grad_shortcut = np.where(_clamp_passes(y, clamp), grad_y, 0).astype(grad_y.dtype)
    no_clamp = (-np.inf, np.inf)
    return (grad_shortcut,) + batch_norm_act_backward(grad_shortcut, x, mean, invstd, weight, None, no_clamp)


def add_relu_forward(a, b):
    total = a + b
    return np.where(total <= 0, np.zeros((), a.dtype), total)
