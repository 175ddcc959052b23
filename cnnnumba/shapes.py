"""Output-size arithmetic for convolution and pooling; every function fails loudly on impossible shapes."""


def pair(value, name):
    """An int or a pair of ints as a (height, width) tuple of Python ints."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, but got {value!r}")
    if isinstance(value, int) or hasattr(value, "__index__"):
        value = int(value)
        return (value, value)
    try:
        first, second = value
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an int or a pair of ints, but got {value!r}") from None
    for item in (first, second):
        if isinstance(item, bool) or not (isinstance(item, int) or hasattr(item, "__index__")):
            raise TypeError(f"{name} must be an int or a pair of ints, but got {value!r}")
    return (int(first), int(second))


def non_negative_pair(value, name):
    result = pair(value, name)
    if min(result) < 0:
        raise ValueError(f"{name} must be non-negative, but got {value!r}")
    return result


def conv_output_size(in_size, kernel, stride, pad_before, pad_after, dilation, what="convolution"):
    """Output length of a convolution or pooling window sliding over one spatial axis."""
    effective_kernel = dilation * (kernel - 1) + 1
    padded = in_size + pad_before + pad_after
    if effective_kernel > padded:
        raise ValueError(
            f"{what}: kernel size {effective_kernel} (dilated) can't be greater than the padded "
            f"input size {padded} (input {in_size} + padding {pad_before}+{pad_after})"
        )
    return (padded - effective_kernel) // stride + 1


def conv_padding(padding, in_hw, kernel_hw, stride_hw, dilation_hw):
    """Resolve a conv `padding` argument to ((top, bottom), (left, right)).

    "same" keeps ceil(in / stride) outputs, padding the extra pixel at the bottom/right as
    TensorFlow and Keras do; with stride 1 that is exactly PyTorch's "same".
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding != "same":
            raise ValueError(f"padding must be an int, a pair of ints, 'same' or 'valid', but got {padding!r}")
        result = []
        for size, k, s, d in zip(in_hw, kernel_hw, stride_hw, dilation_hw):
            out = -(-size // s)
            total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
            result.append((total // 2, total - total // 2))
        return tuple(result)
    ph, pw = non_negative_pair(padding, "padding")
    return (ph, ph), (pw, pw)


def pool_output_size(in_size, kernel, stride, padding, dilation, ceil_mode, what="pooling"):
    """PyTorch's pooling output length, including its rule that the last window must start inside the input."""
    if padding * 2 > kernel:
        raise ValueError(f"{what}: pad should be at most half of effective kernel size, but got pad={padding}, kernel_size={kernel}")
    effective_kernel = dilation * (kernel - 1) + 1
    padded = in_size + 2 * padding
    if effective_kernel > padded:
        raise ValueError(
            f"{what}: kernel size {effective_kernel} (dilated) can't be greater than the padded input size {padded}"
        )
    span = padded - effective_kernel
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= in_size + padding:
        out -= 1
    return out
