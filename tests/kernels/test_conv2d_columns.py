"""The column-matrix weight gradient of conv2d.py (layers with few input channels: all kH * kW * C_in values under
an output pixel side by side, one reduction padded once to a whole tile) against the reference."""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba.kernels import conv2d as kernels
from cnnnumba import reference

# (x shape NHWC, weight shape (kH, kW, C_in, C_out), stride, (pad_top, pad_left), dilation)
COLUMNS = [
    ((2, 12, 10, 3), (3, 3, 3, 16), (1, 1), (1, 1), (1, 1)),     # a first layer: 27 -> 32 rows of 16-row tiles
    ((3, 9, 11, 3), (3, 3, 3, 32), (1, 1), (1, 1), (1, 1)),      # 27 -> 32 rows of 8-row tiles
    ((2, 9, 18, 3), (3, 3, 3, 64), (2, 2), (1, 1), (1, 1)),      # stride 2, 4-row tiles of 64 channels
    ((2, 10, 12, 1), (3, 3, 1, 16), (1, 1), (0, 0), (1, 1)),     # one channel, no padding
    ((2, 13, 9, 3), (3, 3, 3, 16), (2, 1), (2, 1), (2, 1)),      # stride and dilation along the height only
    ((1, 8, 70, 2), (5, 3, 2, 32), (1, 1), (2, 0), (1, 1)),      # more than a block's pixels in one row
    ((2, 5, 6, 3), (2, 4, 3, 32), (1, 2), (1, 2), (1, 1)),       # non-square kernel, stride along the width
]


def _output_shape(x_shape, weight_shape, stride, padding, dilation):
    out_h = (x_shape[1] + 2 * padding[0] - dilation[0] * (weight_shape[0] - 1) - 1) // stride[0] + 1
    out_w = (x_shape[2] + 2 * padding[1] - dilation[1] * (weight_shape[1] - 1) - 1) // stride[1] + 1
    return x_shape[0], out_h, out_w, weight_shape[3]


def _arrays(case, seed=0):
    x_shape, weight_shape, stride, padding, dilation = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(np.float32)
    grad_out = rng.standard_normal(_output_shape(*case)).astype(np.float32)
    return x, grad_out, dict(stride=stride, padding=padding, dilation=dilation)


def _uses_columns(case):
    x_shape, weight_shape, stride, padding, dilation = case
    _, specs, _ = kernels._plan("backward_weight", np.float32, x_shape, weight_shape, _output_shape(*case), stride,
                                padding, dilation, 1)
    return any(name == "columns" for name, _, _ in specs)


@pytest.mark.parametrize("case", COLUMNS)
def test_the_column_weight_gradient_matches_the_reference(case):
    assert _uses_columns(case)
    x, grad_out, options = _arrays(case)
    got = kernels.conv2d_backward_weight(x, grad_out, np.empty(case[1], np.float32), **options)
    want = reference.conv2d_backward_weight(x.astype(np.float64), grad_out.astype(np.float64),
                                            np.empty(case[1]), **options)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


def test_layers_whose_kernel_rows_fill_whole_tiles_keep_the_row_path():
    # 16 input channels: every kernel row is a whole number of tiles, so folding the rows saves nothing
    assert not _uses_columns(((2, 8, 16, 16), (3, 3, 16, 32), (2, 2), (1, 1), (1, 1)))
    # 8 channels under a 5-wide row: 40 rows per kernel row, 200 either way
    assert not _uses_columns(((1, 12, 12, 8), (5, 5, 8, 32), (2, 2), (2, 2), (1, 1)))
    # dilation along the width: the kW taps are not side by side in a padded row
    assert not _uses_columns(((2, 9, 12, 8), (3, 3, 8, 32), (1, 1), (1, 1), (1, 2)))


@pytest.mark.parametrize("case", [COLUMNS[1], COLUMNS[4]])
def test_the_column_weight_gradient_does_not_depend_on_thread_count_or_bands(case, monkeypatch):
    x, grad_out, options = _arrays(case, seed=1)
    saved = cn.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            cn.set_num_threads(threads)
            results.append(kernels.conv2d_backward_weight(x, grad_out, np.empty(case[1], np.float32), **options))
        # one output row per band: the strip is refilled for every row, the sums keep their order
        monkeypatch.setattr(kernels, "WEIGHT_STRIP_BYTES", 1)
        kernels._backward_weight_plan.cache_clear()
        assert kernels._plan("backward_weight", np.float32, x.shape, case[1], grad_out.shape, case[2], case[3],
                             case[4], 1)[2][2] == 1
        results.append(kernels.conv2d_backward_weight(x, grad_out, np.empty(case[1], np.float32), **options))
    finally:
        cn.set_num_threads(saved)
        kernels._backward_weight_plan.cache_clear()
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])


def test_the_column_weight_gradient_reads_operands_at_any_alignment():
    case = COLUMNS[0]
    x, grad_out, options = _arrays(case, seed=2)
    want = kernels.conv2d_backward_weight(x, grad_out, np.empty(case[1], np.float32), **options)
    for offset in (1, 3):
        shifted = []
        for array in (x, grad_out):
            buffer = np.empty(array.size + offset, np.float32)
            shifted.append(buffer[offset:].reshape(array.shape))
            shifted[-1][...] = array
        got = kernels.conv2d_backward_weight(*shifted, np.empty(case[1], np.float32), **options)
        np.testing.assert_array_equal(got, want)
