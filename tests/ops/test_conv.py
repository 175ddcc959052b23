"""F.conv2d against PyTorch (values and gradients), float64 gradchecks, thread-count determinism, validation errors."""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import functional as F
from tests.helpers import check_gradients, compare_with_torch, random_arrays, requires_torch, torch

# (input shape, weight shape, options)
CASES = [
    ((2, 3, 7, 6), (4, 3, 3, 3), dict(padding=1)),
    ((1, 2, 5, 5), (3, 2, 1, 1), dict()),                                         # batch 1, 1x1
    ((2, 3, 9, 8), (2, 3, 2, 2), dict(stride=3)),                                 # stride > kernel
    ((1, 2, 6, 9), (5, 2, 2, 4), dict(stride=(2, 1), padding=(1, 2))),            # non-square
    ((2, 2, 9, 9), (3, 2, 3, 3), dict(stride=(1, 2), padding=2, dilation=2)),     # dilation
    ((2, 4, 8, 7), (6, 2, 3, 3), dict(padding=1, groups=2)),                      # groups
    ((2, 5, 7, 7), (5, 1, 3, 3), dict(stride=2, padding=1, groups=5)),            # depthwise
    ((1, 3, 6, 6), (6, 1, 3, 2), dict(padding=(1, 0), dilation=(1, 2), groups=3)),  # channel multiplier
    ((2, 3, 7, 8), (4, 3, 3, 5), dict(padding="same")),                           # "same", kernel 3x5
    ((2, 3, 7, 8), (4, 3, 2, 4), dict(padding="same")),                           # "same", even kernel
    ((2, 3, 7, 8), (4, 3, 3, 3), dict(padding="same", dilation=2)),
    ((2, 3, 7, 8), (4, 3, 2, 3), dict(padding="valid")),
    ((2, 5, 11, 13), (32, 5, 3, 3), dict(padding=1)),                             # fast-path shapes
    ((2, 16, 9, 10), (48, 16, 3, 3), dict(padding=1)),
    ((1, 8, 12, 12), (32, 8, 5, 5), dict(stride=2, padding=2)),
]
GRADCHECK_CASES = [CASES[0], CASES[3], CASES[4], CASES[7]]


def _case_arrays(x_shape, w_shape, seed=0):
    return random_arrays(x_shape, w_shape, (w_shape[0],), seed=seed)


@requires_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape, w_shape, options", CASES)
def test_matches_torch(x_shape, w_shape, options, dtype):
    arrays = _case_arrays(x_shape, w_shape)
    # standard-normal weights give outputs of RMS ~12 at 16 channels; 3x3 layers reducing over 16-32 channels take
    # Winograd F(4x4), whose rounding is ~5e-6 of that RMS (README, Performance): the absolute tolerance scales with it
    compare_with_torch(lambda x, w, b: F.conv2d(x, w, b, **options),
                       lambda x, w, b: torch.nn.functional.conv2d(x, w, b, **options), arrays, dtype=dtype,
                       atol_per_rms=True)


@requires_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_torch_without_bias_and_on_unbatched_input(dtype):
    x, w, _ = _case_arrays((3, 6, 5), (4, 3, 2, 2))
    compare_with_torch(lambda x, w: F.conv2d(x, w, padding=1), lambda x, w: torch.nn.functional.conv2d(x, w, padding=1),
                       [x, w], dtype=dtype)


@requires_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_contiguous_input_matches_torch(dtype):
    x, w, b = _case_arrays((2, 6, 3, 7), (4, 3, 3, 3))
    compare_with_torch(lambda x, w, b: F.conv2d(cn.autograd.arith.permute(x, 0, 2, 1, 3), w, b, padding=1),
                       lambda x, w, b: torch.nn.functional.conv2d(x.permute(0, 2, 1, 3), w, b, padding=1),
                       [x, w, b], dtype=dtype)


@requires_torch
@pytest.mark.parametrize("stride", [2, (3, 2)])
def test_same_padding_with_stride_pads_like_tensorflow(stride):
    x, w, b = _case_arrays((2, 3, 8, 7), (4, 3, 3, 4))
    stride_h, stride_w = (stride, stride) if isinstance(stride, int) else stride

    def torch_same(x, w, b):
        pads = []
        for size, k, s in ((7, 4, stride_w), (8, 3, stride_h)):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return torch.nn.functional.conv2d(torch.nn.functional.pad(x, pads), w, b, stride=stride)

    out = compare_with_torch(lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding="same"), torch_same, [x, w, b])
    assert out.shape[2:] == (-(-8 // stride_h), -(-7 // stride_w))


@pytest.mark.parametrize("x_shape, w_shape, options", GRADCHECK_CASES)
def test_gradcheck(x_shape, w_shape, options):
    x, w, b = _case_arrays((1, *x_shape[1:]), w_shape)
    check_gradients(lambda x, w, b: F.conv2d(x, w, b, **options), [x, w, b])


def test_backward_computes_only_needed_gradients():
    x, w, b = _case_arrays((1, 3, 5, 5), (2, 3, 3, 3))
    inputs = cn.Tensor(x), cn.Tensor(w, requires_grad=True), cn.Tensor(b)
    F.conv2d(*inputs).backward(np.ones((1, 2, 3, 3)))
    assert inputs[0].grad is None and inputs[2].grad is None and inputs[1].grad.shape == w.shape
    op = F.conv2d(*inputs).grad_fn
    assert op.x_nhwc is not None and op.weight_khwc is None


def test_weight_gradient_does_not_depend_on_thread_count():
    x, w, b = _case_arrays((4, 16, 9, 10), (32, 16, 3, 3))
    x, w, b = (a.astype(np.float32) for a in (x, w, b))
    saved = cn.get_num_threads()
    grads = []
    try:
        for threads in (1, 2):
            cn.set_num_threads(threads)
            tensors = [cn.Tensor(a.copy(), requires_grad=True) for a in (x, w, b)]
            F.conv2d(*tensors, padding=1).backward(np.ones((4, 32, 9, 10), np.float32))
            grads.append([t.grad for t in tensors])
    finally:
        cn.set_num_threads(saved)
    for one, two in zip(*grads):
        np.testing.assert_array_equal(one, two)


def _conv(x_shape=(1, 3, 8, 8), w_shape=(4, 3, 3, 3), bias_shape=None, dtype=np.float32, w_dtype=None, **options):
    x = np.zeros(x_shape, dtype=dtype)
    w = np.zeros(w_shape, dtype=w_dtype or dtype)
    b = None if bias_shape is None else cn.Tensor(np.zeros(bias_shape, dtype=dtype))
    return F.conv2d(cn.Tensor(x), cn.Tensor(w), b, **options)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(x_shape=(3, 8)), ValueError, r"Expected 3D \(unbatched\) or 4D \(batched\) input to conv2d, but got input of size: \[3, 8\]"),
    (dict(w_shape=(4, 3, 3)), ValueError, r"Expected 4D weight .* but got 3D weight of size \[4, 3, 3\]"),
    (dict(x_shape=(1, 4, 8, 8)), ValueError, r"expected input\[1, 4, 8, 8\] to have 3 channels, but got 4 channels instead"),
    (dict(x_shape=(1, 4, 8, 8), w_shape=(3, 2, 3, 3), groups=2), ValueError, r"expected weight to be divisible by 2 at dimension 0"),
    (dict(x_shape=(1, 6, 8, 8), w_shape=(3, 3, 3, 3), groups=3), ValueError, r"Given groups=3, .* expected input\[1, 6, 8, 8\] to have 9 channels, but got 6"),
    (dict(groups=0), ValueError, r"non-positive groups is not supported"),
    (dict(bias_shape=(5,)), ValueError, r"expected bias to be 1-dimensional with 4 elements, but got bias of size \[5\]"),
    (dict(stride=0), ValueError, r"non-positive stride is not supported"),
    (dict(stride=(1, -2)), ValueError, r"non-positive stride is not supported"),
    (dict(dilation=0), ValueError, r"dilation should be greater than zero"),
    (dict(padding=-1), ValueError, r"negative padding is not supported"),
    (dict(padding="full"), ValueError, r"padding must be an int, a pair of ints, 'same' or 'valid'"),
    (dict(x_shape=(1, 3, 2, 8)), ValueError, r"Calculated padded input size per channel: \(2 x 8\). Kernel size: \(3 x 3\)"),
    (dict(x_shape=(1, 3, 4, 4), dilation=2, padding=0), ValueError, r"Kernel size: \(5 x 5\). Kernel size can't be greater"),
    (dict(dtype=np.int64), TypeError, r"conv2d expected a floating-point input \(float32 or float64\), but got int64"),
    (dict(w_dtype=np.float64), TypeError, r"Input type \(float32\) and weight type \(float64\) should be the same"),
    (dict(stride=1.5), TypeError, r"stride must be an int or a pair of ints"),
])
def test_validation_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        _conv(**kwargs)


def test_bias_dtype_mismatch_is_refused():
    x, w = cn.Tensor(np.zeros((1, 3, 5, 5), np.float32)), cn.Tensor(np.zeros((2, 3, 3, 3), np.float32))
    with pytest.raises(TypeError, match=r"Input type \(float32\) and bias type \(float64\) should be the same"):
        F.conv2d(x, w, cn.Tensor(np.zeros(2)))
