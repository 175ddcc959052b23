"""im2col + GEMM convolution kernels against their NumPy twins, including the chunked workspace."""
import numpy as np
import pytest

from cnnnumba import shapes
from cnnnumba.kernels import conv2d_gemm as kernels
from cnnnumba.kernels import conv2d_workspace
from cnnnumba import reference

# (batch, height, width, C_in, C_out, (kH, kW), stride, (pad_top, pad_bottom, pad_left, pad_right), dilation)
CASES = [
    (3, 12, 12, 1, 6, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1)),     # LeNet-5's first layer, scaled down
    (2, 7, 7, 6, 16, (5, 5), (1, 1), (0, 0, 0, 0), (1, 1)),      # LeNet-5's second layer
    (1, 9, 8, 3, 4, (2, 3), (3, 2), (1, 0, 2, 1), (1, 1)),       # stride > kernel, asymmetric padding
    (2, 9, 9, 2, 3, (3, 3), (1, 2), (2, 2, 2, 2), (2, 2)),       # dilation
    (1, 5, 4, 2, 2, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),       # 1x1
]


def _arrays(case, dtype, seed=0):
    batch, height, width, cin, cout, kernel, stride, pad, dilation = case
    out_h = shapes.conv_output_size(height, kernel[0], stride[0], pad[0], pad[1], dilation[0])
    out_w = shapes.conv_output_size(width, kernel[1], stride[1], pad[2], pad[3], dilation[1])
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, height, width, cin)).astype(dtype)
    weight = rng.standard_normal((*kernel, cin, cout)).astype(dtype)
    bias = rng.standard_normal(cout).astype(dtype)
    grad_out = rng.standard_normal((batch, out_h, out_w, cout)).astype(dtype)
    options = dict(stride=stride, padding=(pad[0], pad[2]), dilation=dilation)
    return x, weight, bias, grad_out, options


TOLERANCE = {np.float32: dict(rtol=1e-4, atol=1e-4), np.float64: dict(rtol=1e-12, atol=1e-12)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("budget", [conv2d_workspace.WORKSPACE_BYTES, 1])  # 1 byte: one output row per chunk
def test_gemm_kernels_match_reference(case, dtype, budget, monkeypatch):
    monkeypatch.setattr(conv2d_workspace, "WORKSPACE_BYTES", budget)
    x, weight, bias, grad_out, options = _arrays(case, dtype)
    for use_bias in (bias, None):
        expected = reference.conv2d_forward(x, weight, use_bias, np.empty_like(grad_out), **options)
        actual = kernels.conv2d_forward_gemm(x, weight, use_bias, np.full_like(grad_out, np.nan), **options)
        np.testing.assert_allclose(actual, expected, **TOLERANCE[dtype])
    expected = reference.conv2d_backward_input(grad_out, weight, np.empty_like(x), **options)
    actual = kernels.conv2d_backward_input_gemm(grad_out, weight, np.full_like(x, np.nan), **options)
    np.testing.assert_allclose(actual, expected, **TOLERANCE[dtype])
    expected = reference.conv2d_backward_weight(x, grad_out, np.empty_like(weight), **options)
    actual = kernels.conv2d_backward_weight_gemm(x, grad_out, np.full_like(weight, np.nan), **options)
    np.testing.assert_allclose(actual, expected, **TOLERANCE[dtype])


@pytest.mark.parametrize("images", [2, 1])
def test_columns_are_chunked_under_the_budget(images, monkeypatch):
    """A chunk's columns fit the budget: whole images when one fits, else output rows; the results still match."""
    x, weight, bias, grad_out, options = _arrays(CASES[0], np.float32)
    batch, out_h, out_w, _ = grad_out.shape
    row_bytes = out_w * 25 * 4
    # two whole images, or three rows (less than an image); two cache lines of alignment slack
    budget = (2 * out_h if images == 2 else 3) * row_bytes + 2 * conv2d_workspace.CACHE_LINE
    monkeypatch.setattr(conv2d_workspace, "WORKSPACE_BYTES", budget)
    specs, rows = kernels.gemm_plan("forward", batch, out_h, out_w, 25, 6, np.dtype(np.float32), budget)
    assert rows == (2 * out_h if images == 2 else 3)
    assert conv2d_workspace.specs_bytes(specs) <= budget
    workspace = conv2d_workspace.new_workspace(kernels.gemm_workspace_bytes("forward", batch, out_h, out_w, 25, 6,
                                                                           np.float32))
    expected = reference.conv2d_forward(x, weight, bias, np.empty_like(grad_out), **options)
    actual = kernels.conv2d_forward_gemm(x, weight, bias, np.empty_like(grad_out), workspace=workspace, **options)
    np.testing.assert_allclose(actual, expected, **TOLERANCE[np.float32])


def test_relu_is_applied_to_the_output():
    x, weight, bias, grad_out, options = _arrays(CASES[1], np.float64)
    expected = reference.conv2d_forward(x, weight, bias, np.empty_like(grad_out), relu=True, **options)
    actual = kernels.conv2d_forward_gemm(x, weight, bias, np.empty_like(grad_out), relu=True, **options)
    np.testing.assert_allclose(actual, expected, **TOLERANCE[np.float64])
    assert (actual == 0).any() and (actual > 0).any()
