"""Few-channel stride-1 convolution (kernels/conv2d_small.py) against the conv2d twin in kernels/reference.py and
against PyTorch, through its own functions and through conv2d.py's dispatch."""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import shapes
from cnnnumba.kernels import conv2d, conv2d_workspace
from cnnnumba import reference
from cnnnumba.kernels import conv2d_small
from tests.helpers import requires_torch

try:
    import torch
except ImportError:
    torch = None

# (batch, height, width, C_in, C_out, (kH, kW), (pad_top, pad_bottom, pad_left, pad_right), dilation)
CASES = [
    (2, 12, 12, 1, 6, (5, 5), (2, 2, 2, 2), (1, 1)),      # LeNet-5's first layer, smaller images
    (3, 9, 9, 6, 16, (5, 5), (0, 0, 0, 0), (1, 1)),       # LeNet-5's second layer
    (1, 7, 5, 3, 2, (3, 3), (1, 1, 1, 1), (1, 1)),        # batch 1: bands of rows, odd width
    (2, 6, 7, 2, 3, (1, 1), (0, 0, 0, 0), (1, 1)),        # 1x1 kernel
    (1, 9, 11, 4, 5, (7, 7), (3, 3, 3, 3), (1, 1)),       # 7x7 kernel, "same" padding
    (2, 8, 9, 16, 16, (3, 3), (1, 1, 1, 1), (1, 1)),      # 16 channels, rows narrower than a tile
    (2, 10, 9, 3, 4, (2, 4), (1, 0, 0, 2), (1, 1)),       # non-square kernel, asymmetric padding
    (2, 11, 12, 2, 3, (3, 3), (2, 2, 2, 2), (2, 3)),      # dilation
    (1, 6, 6, 2, 2, (2, 2), (3, 3, 3, 3), (1, 1)),        # padding past the kernel: backward pads negative
    (2, 5, 13, 5, 1, (3, 2), (0, 1, 1, 0), (1, 2)),       # one output channel, dilation along the width only
    (17, 4, 4, 2, 3, (3, 3), (1, 1, 1, 1), (1, 1)),       # more images than weight-gradient chunks
    (1, 7, 7, 3, 5, (7, 7), (0, 0, 0, 0), (1, 1)),        # one output pixel: shorter than a tile or a vector
    (3, 4, 30, 2, 7, (1, 3), (0, 0, 1, 1), (1, 1)),       # 7 output channels: tiles of 4, 2 and 1; wide rows
    (2, 6, 6, 1, 16, (6, 1), (2, 3, 0, 0), (1, 1)),       # kernel as tall as the image, one input channel
]


def _geometry(case):
    batch, height, width, cin, cout, kernel, pad, dilation = case
    out_h = shapes.conv_output_size(height, kernel[0], 1, pad[0], pad[1], dilation[0])
    out_w = shapes.conv_output_size(width, kernel[1], 1, pad[2], pad[3], dilation[1])
    return (batch, height, width, cin), (*kernel, cin, cout), (batch, out_h, out_w, cout)


def _arrays(case, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x_shape, w_shape, y_shape = _geometry(case)
    return [rng.standard_normal(s).astype(dtype) for s in (x_shape, w_shape, (w_shape[3],), y_shape)]


def _padding(case):
    return case[6][0], case[6][2]


def _tolerance(dtype):
    return dict(rtol=2e-4, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_forward_matches_reference(case, dtype):
    x, w, b, y = _arrays(case, dtype)
    for bias in (b, None):
        got = conv2d_small.conv2d_forward_small(x, w, bias, np.empty_like(y), _padding(case), case[7])
        want = reference.conv2d_forward(x, w, bias, np.empty_like(y), (1, 1), _padding(case), case[7])
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, **_tolerance(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES[:3])
def test_forward_relu_clamps_and_keeps_nan(case, dtype):
    x, w, b, y = _arrays(case, dtype)
    x[0, 0, 0, 0] = np.nan
    got = conv2d_small.conv2d_forward_small(x, w, b, np.empty_like(y), _padding(case), case[7], relu=True)
    plain = reference.conv2d_forward(x, w, b, np.empty_like(y), (1, 1), _padding(case), case[7])
    assert np.isnan(got).any()
    np.testing.assert_allclose(got, np.where(plain < 0, 0.0, plain), **_tolerance(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_backward_input_matches_reference(case, dtype):
    x, w, _, dy = _arrays(case, dtype)
    got = conv2d_small.conv2d_backward_input_small(dy, w, np.empty_like(x), _padding(case), case[7])
    want = reference.conv2d_backward_input(dy, w, np.empty_like(x), (1, 1), _padding(case), case[7])
    np.testing.assert_allclose(got, want, **_tolerance(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_backward_weight_matches_reference(case, dtype):
    x, w, _, dy = _arrays(case, dtype)
    got = conv2d_small.conv2d_backward_weight_small(x, dy, np.empty_like(w), _padding(case), case[7])
    want = reference.conv2d_backward_weight(x, dy, np.empty_like(w), (1, 1), _padding(case), case[7])
    np.testing.assert_allclose(got, want, **_tolerance(dtype))


@pytest.mark.parametrize("case", CASES)
def test_dispatch_reaches_the_small_path_below_the_tiles(case):
    x_shape, w_shape, y_shape = _geometry(case)
    assert conv2d.uses_small(w_shape, (1, 1), 1)
    path = conv2d._plan("forward", np.dtype(np.float32), x_shape, w_shape, y_shape, (1, 1), _padding(case), case[7],
                        1)[0]
    # a register-tiled or Winograd path takes the layers it covers; every other one of these comes here
    assert path in ("small", "winograd", "winograd4", "fast")
    assert (path == "fast") == conv2d.uses_fast_forward(np.float32, w_shape, y_shape, 1)
    if path == "small":
        x, w, b, y = _arrays(case, np.float32)
        got = conv2d.conv2d_forward(x, w, b, np.empty_like(y), padding=_padding(case), dilation=case[7])
        np.testing.assert_array_equal(got, conv2d_small.conv2d_forward_small(x, w, b, np.empty_like(y),
                                                                             _padding(case), case[7]))


@pytest.mark.parametrize("weight_shape, stride, groups, small", [
    ((5, 5, 1, 6), (1, 1), 1, True),
    ((5, 5, 6, 16), (1, 1), 1, True),
    ((3, 3, 6, 16), (2, 1), 1, False),    # strided: im2col + GEMM
    ((3, 3, 4, 6), (1, 1), 2, False),     # grouped: the general loops
    ((3, 3, 17, 6), (1, 1), 1, False),    # too many channels for direct loops
    ((3, 3, 6, 32), (1, 1), 1, False),
])
def test_uses_small_predicate(weight_shape, stride, groups, small):
    assert conv2d.uses_small(weight_shape, stride, groups) is small


def _torch_passes(case, dtype, arrays=None):
    """Forward, input gradient and weight gradient of PyTorch's conv2d on the case's arrays, in NHWC."""
    x, w, b, dy = arrays or _arrays(case, dtype)
    pad_top, pad_bottom, pad_left, pad_right = case[6]
    xt = torch.tensor(x.transpose(0, 3, 1, 2).copy(), requires_grad=True)
    wt = torch.tensor(w.transpose(3, 2, 0, 1).copy(), requires_grad=True)
    padded = torch.nn.functional.pad(xt, (pad_left, pad_right, pad_top, pad_bottom))
    yt = torch.nn.functional.conv2d(padded, wt, torch.tensor(b), dilation=case[7])
    yt.backward(torch.tensor(dy.transpose(0, 3, 1, 2).copy()))
    return (yt.detach().numpy().transpose(0, 2, 3, 1), xt.grad.numpy().transpose(0, 2, 3, 1),
            wt.grad.numpy().transpose(2, 3, 1, 0))


@requires_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_passes_match_torch(case, dtype):
    x, w, b, dy = _arrays(case, dtype)
    options = dict(padding=_padding(case), dilation=case[7])
    got = (conv2d.conv2d_forward(x, w, b, np.empty_like(dy), **options),
           conv2d.conv2d_backward_input(dy, w, np.empty_like(x), **options),
           conv2d.conv2d_backward_weight(x, dy, np.empty_like(w), **options))
    tolerance = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    for name, mine, theirs in zip(("forward", "backward-input", "backward-weight"), got, _torch_passes(case, dtype)):
        np.testing.assert_allclose(mine, theirs, err_msg=name, **tolerance)


def test_non_contiguous_operands():
    x, w, b, y = _arrays(CASES[1], np.float32)
    strided_x = np.asfortranarray(x)
    strided_w = w[:, ::-1][:, ::-1]  # a negative-stride view of the same values
    got = conv2d.conv2d_forward(strided_x, strided_w, b, np.empty_like(y))
    np.testing.assert_allclose(got, reference.conv2d_forward(x, w, b, np.empty_like(y)), rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[10]])
def test_results_do_not_depend_on_thread_count(case):
    x, w, b, dy = _arrays(case, np.float32)
    options = (_padding(case), case[7])
    saved = cn.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            cn.set_num_threads(threads)
            results.append((conv2d_small.conv2d_forward_small(x, w, b, np.empty_like(dy), *options),
                            conv2d_small.conv2d_backward_input_small(dy, w, np.empty_like(x), *options),
                            conv2d_small.conv2d_backward_weight_small(x, dy, np.empty_like(w), *options)))
    finally:
        cn.set_num_threads(saved)
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


def test_weight_chunks_depend_on_the_batch_and_budget_only():
    budget = 32 << 20
    big = conv2d_small.CHUNK_POSITIONS  # one image fills a chunk
    assert [conv2d_small.weight_chunks(batch, big, 4096, budget) for batch in (1, 2, 16, 64, 256)] == [1, 2, 16, 16,
                                                                                                         16]
    # small planes: whole images up to CHUNK_POSITIONS per chunk (LeNet-5's 6->16 layer: 14x14 planes)
    assert conv2d_small.weight_chunks(64, 196, 4096, budget) == 64 * 196 // conv2d_small.CHUNK_POSITIONS
    assert conv2d_small.weight_chunks(4, 196, 4096, budget) == 1
    # the partials take at most half the budget; one chunk (the output itself) when not even two fit
    assert conv2d_small.weight_chunks(256, big, 1 << 20, budget) == 16
    assert conv2d_small.weight_chunks(256, big, 3 << 20, budget) == 5
    assert conv2d_small.weight_chunks(256, big, 20 << 20, budget) == 1


@pytest.mark.parametrize("case", [CASES[1], CASES[10], CASES[12]])
def test_small_job_budget_splits_bands_and_image_blocks(case, monkeypatch):
    monkeypatch.setattr(conv2d_small, "JOB_BYTES", 256)
    x_shape, w_shape, y_shape = _geometry(case)
    row_bytes = 4 * (w_shape[2] + w_shape[3]) * (y_shape[2] + w_shape[1] - 1)
    assert conv2d_small.band_rows(64, y_shape[1], row_bytes) < y_shape[1] or y_shape[1] == 1
    assert conv2d_small.block_images(row_bytes * y_shape[1]) == 1
    x, w, b, dy = _arrays(case, np.float32)
    options = (_padding(case), case[7])
    np.testing.assert_allclose(conv2d_small.conv2d_forward_small(x, w, b, np.empty_like(dy), *options),
                               reference.conv2d_forward(x, w, b, np.empty_like(dy), (1, 1), *options),
                               rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(conv2d_small.conv2d_backward_weight_small(x, dy, np.empty_like(w), *options),
                               reference.conv2d_backward_weight(x, dy, np.empty_like(w), (1, 1), *options),
                               rtol=2e-4, atol=2e-4)


BORDERS = {"right": lambda h, w: (h // 2, w - 1), "left": lambda h, w: (h // 2, 0),
           "bottom-right": lambda h, w: (h - 1, w - 1), "top-left": lambda h, w: (0, 0)}


@requires_torch
@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[4], CASES[7], CASES[9], CASES[10]])
def test_inf_or_nan_at_image_borders_matches_torch(case, dtype, border, value):
    """Positions computed past each row's end multiply real pixels (the row's last columns, the next row's first
    ones) by a zero gradient: with inf or NaN there, inf * 0 = NaN must not reach taps PyTorch keeps finite."""
    x, w, b, dy = _arrays(case, dtype)
    batch, height, width, channels = x.shape
    x[batch - 1, *BORDERS[border](height, width), channels - 1] = value
    options = (_padding(case), case[7])
    got = (conv2d_small.conv2d_forward_small(x, w, b, np.empty_like(dy), *options),
           conv2d_small.conv2d_backward_weight_small(x, dy, np.empty_like(w), *options))
    want = _torch_passes(case, dtype, (x, w, b, dy))
    tolerance = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    for name, mine, theirs in zip(("forward", "backward-weight"), got, (want[0], want[2])):
        assert np.isfinite(theirs).any(), name  # some values the pixel does not reach
        np.testing.assert_array_equal(np.isnan(mine), np.isnan(theirs), err_msg=name)
        np.testing.assert_allclose(mine, theirs, err_msg=name, **tolerance)  # infinities equal, with their sign


PASSES = ("forward", "backward_input", "backward_weight")


def _run_pass(name, arrays, case, workspace):
    x, w, b, dy = arrays
    options = dict(padding=_padding(case), dilation=case[7], workspace=workspace)
    if name == "forward":
        return conv2d.conv2d_forward(x, w, b, np.empty_like(dy), relu=True, **options)
    if name == "backward_input":
        return conv2d.conv2d_backward_input(dy, w, np.empty_like(x), **options)
    return conv2d.conv2d_backward_weight(x, dy, np.empty_like(w), **options)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[8], CASES[10], CASES[12]])
def test_passes_run_in_a_dirty_workspace_of_exactly_the_planned_size(case, dtype):
    """The small path's scratch is carved from the caller's workspace: one of exactly conv2d_workspace_bytes,
    misaligned and full of NaN, gives the same values as a fresh one; one byte less is refused."""
    x_shape, w_shape, y_shape = _geometry(case)
    arrays = _arrays(case, dtype)
    for name in PASSES:
        if name == "forward" and conv2d.uses_fast_forward(dtype, w_shape, y_shape, 1):
            continue
        size = conv2d.conv2d_workspace_bytes(name, x_shape, w_shape, y_shape, dtype, padding=_padding(case),
                                             dilation=case[7])
        assert size > 0, name
        dirty = np.frombuffer(np.full(size // 4 + 1, np.nan, np.float32).tobytes(), np.uint8)[3:3 + size].copy()
        np.testing.assert_array_equal(_run_pass(name, arrays, case, dirty), _run_pass(name, arrays, case, None),
                                      err_msg=name)
        with pytest.raises(ValueError, match="workspace of"):
            _run_pass(name, arrays, case, np.empty(size - 1, np.uint8))


@pytest.mark.parametrize("case", [CASES[1], CASES[10]])
def test_partials_shrink_under_a_small_budget_and_stay_thread_count_independent(case, monkeypatch):
    monkeypatch.setattr(conv2d_small, "CHUNK_POSITIONS", 1)  # the budget alone limits the partials here
    x, w, b, dy = _arrays(case, np.float32)
    weight_bytes = w.nbytes
    specs, geometry = conv2d_small.backward_weight_plan(np.float32, x.shape, w.shape, dy.shape, _padding(case),
                                                        case[7], 5 * weight_bytes)
    partials = dict((name, shape) for name, shape, _ in specs).get("partials", (1,))
    assert partials[0] == min(x.shape[0], 2)  # half of a budget of 5 weights holds 2 partials
    scratch = conv2d_workspace.carve(None, specs)
    saved = cn.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            cn.set_num_threads(threads)
            results.append(conv2d_small.conv2d_backward_weight_small(x, dy, np.empty_like(w), _padding(case),
                                                                     case[7], scratch, geometry))
    finally:
        cn.set_num_threads(saved)
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_allclose(results[0], reference.conv2d_backward_weight(x, dy, np.empty_like(w), (1, 1),
                                                                            _padding(case), case[7]),
                               rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("kernel, width", [((1, 1), 5), ((5, 5), 14), ((2, 1), 3), ((1, 3), 40)])
def test_weight_frames_leave_a_vector_of_zeros_after_each_images_last_output(kernel, width):
    out_w = width - kernel[1] + 1
    rows = conv2d_small.weight_frame_rows(4, out_w, *kernel, 1, 1)
    frame_w = width
    last_output = (4 - 1) * frame_w + out_w  # one past the last output position of the plane
    assert rows >= 4 + kernel[0] - 1
    assert rows * frame_w - last_output - (kernel[0] - 1) * frame_w - (kernel[1] - 1) >= 0
    assert rows * frame_w - last_output >= conv2d_small.LANES


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[3], CASES[12]])  # the planar path (< 12 outputs)
def test_weight_gradient_blocks_shorter_than_the_last_leave_nothing_behind(case, monkeypatch):
    # five images in one chunk, two per block: the last block has one image and the slot's planes still hold
    # the previous block's second image, which the whole-vector runs must not read as gradient
    monkeypatch.setattr(conv2d_small, "CHUNK_POSITIONS", 1 << 30)
    case = (5,) + case[1:]
    x, w, b, dy = _arrays(case, np.float32)
    x_shape, w_shape, y_shape = _geometry(case)
    frame_w = y_shape[2] + w_shape[1] - 1
    plane = conv2d_small.weight_frame_rows(y_shape[1], y_shape[2], *w_shape[:2], 1, 1) * frame_w
    monkeypatch.setattr(conv2d_small, "JOB_BYTES", 2 * (w_shape[2] + w_shape[3]) * plane * 4)
    specs, geometry = conv2d_small.backward_weight_plan(np.float32, x.shape, w.shape, dy.shape, _padding(case),
                                                        case[7], 32 << 20)
    assert geometry[4] == 2
    # zeros, not a huge fill: an inf or NaN product would send the chunk down the exact path and hide a misread
    workspace = np.zeros(conv2d_workspace.specs_bytes(specs), np.uint8)
    got = conv2d_small.conv2d_backward_weight_small(x, dy, np.empty_like(w), _padding(case), case[7],
                                                    conv2d_workspace.carve(workspace, specs), geometry)
    np.testing.assert_allclose(got, reference.conv2d_backward_weight(x, dy, np.empty_like(w), (1, 1),
                                                                     _padding(case), case[7]), rtol=2e-4, atol=2e-4)


def test_row_run_kernels_cover_lenet_and_leave_negative_padding_and_dilated_widths_to_the_others():
    assert conv2d_small.uses_row_runs(np.float32, (64, 14, 14, 6), (5, 5, 6, 16), (64, 10, 10, 16), (0, 0), (1, 1))
    assert not conv2d_small.uses_row_runs(np.float64, (64, 14, 14, 6), (5, 5, 6, 16), (64, 10, 10, 16), (0, 0),
                                         (1, 1))
    assert not conv2d_small.uses_row_runs(np.float32, (2, 11, 12, 2), (3, 3, 2, 3), (2, 11, 10, 3), (2, 2), (2, 3))
    # padding -1 on the right: the frame (out_w + kW - 1 wide) ends inside the input
    assert not conv2d_small.uses_row_runs(np.float32, (1, 6, 8, 2), (3, 3, 2, 2), (1, 4, 5, 2), (0, 0), (1, 1))


@pytest.mark.parametrize("batch", [1, 8, 11])
def test_input_gradient_scatter_keeps_inf_and_nan_where_the_gradient_has_them(batch):
    rng = np.random.default_rng(9)
    w = rng.standard_normal((5, 5, 6, 16)).astype(np.float32)
    dy = rng.standard_normal((batch, 10, 10, 16)).astype(np.float32)
    dy[0, 3, 4, 2] = np.inf
    dy[-1, 9, 9, 15] = np.nan
    dy[0, 0, 0, 0] = -np.inf
    got = conv2d_small.conv2d_backward_input_small(dy, w, np.empty((batch, 14, 14, 6), np.float32))
    with np.errstate(invalid="ignore"):  # inf - inf in the reference's sums
        expected = reference.conv2d_backward_input(dy, w, np.empty((batch, 14, 14, 6), np.float32), (1, 1), (0, 0),
                                                   (1, 1))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("batch, size, cin, cout, kernel, pad, relu", [
    (11, 14, 6, 16, (5, 5), (0, 0), True),    # LeNet-5's second layer; the last block holds 3 images
    (3, 9, 1, 13, (5, 5), (2, 2), False),     # 13 channels: one masked vector
    (2, 6, 3, 33, (3, 2), (1, 0), True),      # three vectors, the last with one channel; non-square kernel
    (1, 5, 16, 12, (1, 1), (0, 0), False),    # 1x1, one image
])
def test_forward_over_channels_matches_the_reference_and_keeps_nan(batch, size, cin, cout, kernel, pad, relu):
    x_shape, w_shape = (batch, size, size, cin), (*kernel, cin, cout)
    out_shape = (batch, size + 2 * pad[0] - kernel[0] + 1, size + 2 * pad[1] - kernel[1] + 1, cout)
    specs, _ = conv2d_small.forward_plan(np.float32, x_shape, w_shape, out_shape, pad, (1, 1), 32 << 20)
    assert "weight_rows" in dict((name, shape) for name, shape, _ in specs)
    rng = np.random.default_rng(4)
    x = rng.standard_normal(x_shape).astype(np.float32)
    x[-1, 0, 0, 0] = np.nan
    w, b = rng.standard_normal(w_shape).astype(np.float32), rng.standard_normal(cout).astype(np.float32)
    got = conv2d_small.conv2d_forward_small(x, w, b, np.empty(out_shape, np.float32), pad, (1, 1), relu)
    with np.errstate(invalid="ignore"):
        expected = reference.conv2d_forward(x, w, b, np.empty(out_shape, np.float32), (1, 1), pad, (1, 1))
    if relu:
        expected = np.where(expected < 0, 0, expected)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    assert np.isnan(got).any()
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("batch, size, cin, cout, kernel, pad", [
    (11, 14, 6, 16, (5, 5), (0, 0)),   # LeNet-5's second layer
    (3, 9, 1, 13, (5, 5), (2, 2)),     # one masked vector of channels
    (2, 6, 3, 33, (3, 2), (1, 0)),     # three vectors; non-square kernel; 6 = fewer than a tile's 15 rows
    (20, 5, 16, 12, (1, 1), (0, 0)),   # 1x1, more images than partials
])
def test_weight_gradient_over_channels_matches_the_reference_on_one_and_two_threads(batch, size, cin, cout, kernel,
                                                                                    pad):
    x_shape, w_shape = (batch, size, size, cin), (*kernel, cin, cout)
    out_shape = (batch, size + 2 * pad[0] - kernel[0] + 1, size + 2 * pad[1] - kernel[1] + 1, cout)
    specs, _ = conv2d_small.backward_weight_plan(np.float32, x_shape, w_shape, out_shape, pad, (1, 1), 32 << 20)
    assert "total" in dict((name, shape) for name, shape, _ in specs)
    rng = np.random.default_rng(6)
    x, dy = rng.standard_normal(x_shape).astype(np.float32), rng.standard_normal(out_shape).astype(np.float32)
    saved = cn.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            cn.set_num_threads(threads)
            results.append(conv2d_small.conv2d_backward_weight_small(x, dy, np.empty(w_shape, np.float32), pad))
    finally:
        cn.set_num_threads(saved)
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_allclose(results[0], reference.conv2d_backward_weight(x, dy, np.empty(w_shape, np.float32),
                                                                            (1, 1), pad, (1, 1)),
                               rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("cout", range(1, 9))
def test_forward_stores_pixel_tiles_as_nhwc_for_every_narrow_channel_count(cout):
    # 37 output columns: two whole runs of 16 pixels and a tail of 5 per row; relu with a NaN kept
    rng = np.random.default_rng(cout)
    x = rng.standard_normal((2, 5, 39, 2)).astype(np.float32)
    x[1, 2, 20, 1] = np.nan
    w, b = rng.standard_normal((3, 3, 2, cout)).astype(np.float32), rng.standard_normal(cout).astype(np.float32)
    got = conv2d_small.conv2d_forward_small(x, w, b, np.empty((2, 3, 37, cout), np.float32), (0, 0), (1, 1), True)
    with np.errstate(invalid="ignore"):
        expected = reference.conv2d_forward(x, w, b, np.empty((2, 3, 37, cout), np.float32), (1, 1), (0, 0), (1, 1))
    expected = np.where(expected < 0, 0, expected)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("cout", range(1, 9))
def test_weight_gradient_lays_out_narrow_grad_out_in_planes_for_every_channel_count(cout):
    # 37 output columns: two runs of 16 pixels and a tail of 5 per row, through the planar weight-gradient path
    rng = np.random.default_rng(cout)
    x = rng.standard_normal((3, 5, 39, 2)).astype(np.float32)
    dy = rng.standard_normal((3, 3, 37, cout)).astype(np.float32)
    got = conv2d_small.conv2d_backward_weight_small(x, dy, np.empty((3, 3, 2, cout), np.float32))
    expected = reference.conv2d_backward_weight(x, dy, np.empty((3, 3, 2, cout), np.float32), (1, 1), (0, 0), (1, 1))
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4)
