"""im2col + GEMM convolution kernels against their NumPy twins, including the chunked workspace."""
import numpy as np
import pytest

from cnnnumba import shapes
from cnnnumba.kernels import conv2d_gemm as kernels
from cnnnumba.kernels import reference

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
@pytest.mark.parametrize("workspace", [kernels.WORKSPACE_BYTES, 1])  # 1 byte: one image per chunk
def test_gemm_kernels_match_reference(case, dtype, workspace, monkeypatch):
    monkeypatch.setattr(kernels, "WORKSPACE_BYTES", workspace)
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


def test_workspace_is_chunked_under_the_budget(monkeypatch):
    """Each chunk's column buffer fits WORKSPACE_BYTES (unless one image alone exceeds it)."""
    sizes = []
    real_empty = np.empty

    def recording_empty(shape, dtype=float, *args, **kwargs):
        array = real_empty(shape, dtype, *args, **kwargs)
        if len(shape) == 4 and shape[0] == 5 * 5 * 1:
            sizes.append(array.nbytes)
        return array

    x, weight, bias, grad_out, options = _arrays(CASES[0], np.float32)
    per_image = grad_out.shape[1] * grad_out.shape[2] * 25 * 4
    monkeypatch.setattr(kernels, "WORKSPACE_BYTES", 2 * per_image)
    monkeypatch.setattr(kernels.np, "empty", recording_empty)
    kernels.conv2d_forward_gemm(x, weight, bias, np.empty_like(grad_out), **options)
    assert sizes == [2 * per_image, per_image]
