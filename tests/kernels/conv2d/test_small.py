"""The few-channel stride-1 variants (small.py): Variant.SMALL_BANDS (channel-planar frames vectorised over
pixels, any dtype and dilation) and Variant.SMALL_ROWS (float32 kernel rows read as contiguous NHWC runs: the
input gradient as a scatter, the forward and weight gradient vectorised over output channels), against the
reference and PyTorch."""
import numpy as np
import pytest

from cnnnumba.kernels._runtime.vector import LANES
from cnnnumba.kernels.conv2d import Pass, Variant, plan, small, small_bands, workspace
from tests.helpers import requires_torch, torch
from tests.kernels.conv2d.common import (PASS_OF, ConvCase, arrays, assert_close, case_id, check_passes,
                                         expected_pass, forced, on_threads, run_pass, select_module,
                                         workspace_bytes)

CASES = [
    ConvCase(2, 12, 12, 1, 6, kernel=5, padding=2),                  # LeNet-5's first layer, smaller images
    ConvCase(3, 9, 9, 6, 16, kernel=5),                              # LeNet-5's second layer
    ConvCase(1, 7, 5, 3, 2, padding=1),                              # batch 1: bands of rows, odd width
    ConvCase(2, 6, 7, 2, 3, kernel=1),                               # 1x1 kernel
    ConvCase(1, 9, 11, 4, 5, kernel=7, padding=3),                   # 7x7 kernel, "same" padding
    ConvCase(2, 8, 9, 16, 16, padding=1),                            # 16 channels, rows narrower than a tile
    ConvCase(2, 10, 9, 3, 4, kernel=(2, 4), padding=(1, 0, 0, 2)),   # non-square kernel, asymmetric padding
    ConvCase(2, 11, 12, 2, 3, padding=2, dilation=(2, 3)),           # dilation
    ConvCase(1, 6, 6, 2, 2, kernel=2, padding=3),                    # padding past the kernel: backward pads negative
    ConvCase(2, 5, 13, 5, 1, kernel=(3, 2), padding=(0, 1, 1, 0), dilation=(1, 2)),  # one output, width dilation
    ConvCase(17, 4, 4, 2, 3, padding=1),                             # more images than weight-gradient chunks
    ConvCase(1, 7, 7, 3, 5, kernel=7),                               # one output pixel: shorter than a vector
    ConvCase(3, 4, 30, 2, 7, kernel=(1, 3), padding=(0, 0, 1, 1)),   # 7 outputs: tiles of 4, 2 and 1; wide rows
    ConvCase(2, 6, 6, 1, 16, kernel=(6, 1), padding=(2, 3, 0, 0)),   # kernel as tall as the image, one channel
]
SMALL = (Variant.SMALL_ROWS, Variant.SMALL_BANDS)
PASS_NAMES = ("forward", "backward_input", "backward_weight")


def applicable(case, names=PASS_NAMES, variants=SMALL):
    """[(variant, [pass names it can run])] for the small variants that can run some of `names` for the case."""
    found = []
    for variant in variants:
        runnable = [name for name in names
                    if select_module.applies(PASS_OF[name], variant, case.dtype, case.geometry)]
        if runnable:
            found.append((variant, runnable))
    return found


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_small_variants_match_the_reference(case, dtype):
    case = case.cast(dtype)
    found = applicable(case)
    assert dict(found).get(Variant.SMALL_BANDS) == list(PASS_NAMES)  # bands run every stride-1 layer
    assert (Variant.SMALL_ROWS in dict(found)) == (dtype == np.float32 and case.dilation[1] == 1
                                                   and case is not CASES[8].cast(dtype))  # not negative padding
    data = arrays(case)
    for variant, names in found:
        with forced(variant, *names):
            check_passes(case, data, names=names)
            if "forward" in names:
                check_passes(case, data, names=("forward",), bias=False)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES[:3], ids=case_id)
def test_forward_relu_clamps_and_keeps_nan(case, dtype):
    case = case.cast(dtype)
    data = arrays(case)
    data.x[0, 0, 0, 0] = np.nan
    for variant, _ in applicable(case, ("forward",)):
        with forced(variant, "forward"):
            got = check_passes(case, data, names=("forward",), relu=True)["forward"]
        assert np.isnan(got).any(), variant


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_select_reaches_the_small_variants_below_the_tiles(case):
    """A Winograd or register-tiled variant takes the layers it covers; every other one of these runs a small
    variant."""
    assert select_module.small_applies(case.weight_shape, case.stride, case.groups)
    for name in PASS_NAMES:
        variant = case.selected(name)
        tiled = {Variant.WINOGRAD_F4, Variant.WINOGRAD_F2, Variant.DIRECT, Variant.DIRECT_COLUMNS}
        assert variant in set(SMALL) | tiled, (name, variant)
        covered = any(select_module.applies(PASS_OF[name], v, case.dtype, case.geometry)
                      for v in tiled if v is not Variant.DIRECT_COLUMNS)
        # 16-channel rows under NARROW_ROW_MIN_PIXELS stay few-channel though a narrow tier's tiles fit them
        narrow = name == "forward" and select_module.narrow_row(case.c_out, case.geometry.out_shape[2])
        assert (variant in tiled) == (covered and not (narrow and variant is not Variant.WINOGRAD_F4
                                                       and variant is not Variant.WINOGRAD_F2)), name
        assert case.cast(np.float64).selected(name) is Variant.SMALL_BANDS


@pytest.mark.parametrize("weight_shape, stride, groups, small_", [
    ((5, 5, 1, 6), (1, 1), 1, True),
    ((5, 5, 6, 16), (1, 1), 1, True),
    ((3, 3, 6, 16), (2, 1), 1, False),    # strided: im2col + GEMM
    ((3, 3, 4, 6), (1, 1), 2, False),     # grouped: the general loops
    ((3, 3, 17, 6), (1, 1), 1, False),    # too many channels for direct loops
    ((3, 3, 6, 32), (1, 1), 1, False),
])
def test_small_applies(weight_shape, stride, groups, small_):
    assert select_module.small_applies(weight_shape, stride, groups) is small_


def torch_passes(case, data):
    """Forward, input gradient and weight gradient of PyTorch's conv2d on the case's arrays, in NHWC."""
    top, bottom, left, right = case.padding
    xt = torch.tensor(data.x.transpose(0, 3, 1, 2).copy(), requires_grad=True)
    wt = torch.tensor(data.weight.transpose(3, 2, 0, 1).copy(), requires_grad=True)
    padded = torch.nn.functional.pad(xt, (left, right, top, bottom))
    yt = torch.nn.functional.conv2d(padded, wt, torch.tensor(data.bias), dilation=case.dilation)
    yt.backward(torch.tensor(data.grad_out.transpose(0, 3, 1, 2).copy()))
    return {"forward": yt.detach().numpy().transpose(0, 2, 3, 1),
            "backward_input": xt.grad.numpy().transpose(0, 2, 3, 1),
            "backward_weight": wt.grad.numpy().transpose(2, 3, 1, 0)}


@requires_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_passes_match_torch(case, dtype):
    case = case.cast(dtype)
    data = arrays(case)
    want = torch_passes(case, data)
    for name in PASS_NAMES:
        assert_close(run_pass(name, case, data), want[name], err_msg=name)


@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[10]], ids=case_id)
def test_results_do_not_depend_on_thread_count(case):
    data = arrays(case)
    for variant, names in applicable(case):
        with forced(variant, *names):
            one, two = on_threads(lambda: [run_pass(name, case, data) for name in names])
        for name, a, b in zip(names, one, two):
            np.testing.assert_array_equal(a, b, err_msg=f"{variant} {name}")


def test_weight_chunks_depend_on_the_batch_and_budget_only():
    budget = 32 << 20
    big = small.CHUNK_POSITIONS  # one image fills a chunk
    assert [small.weight_chunks(batch, big, 4096, budget) for batch in (1, 2, 16, 64, 256)] == [1, 2, 16, 16, 16]
    # small planes: whole images up to CHUNK_POSITIONS per chunk (LeNet-5's 6->16 layer: 14x14 planes)
    assert small.weight_chunks(64, 196, 4096, budget) == 64 * 196 // small.CHUNK_POSITIONS
    assert small.weight_chunks(4, 196, 4096, budget) == 1
    # the partials take at most half the budget; one chunk (the output itself) when not even two fit
    assert small.weight_chunks(256, big, 1 << 20, budget) == 16
    assert small.weight_chunks(256, big, 3 << 20, budget) == 5
    assert small.weight_chunks(256, big, 20 << 20, budget) == 1


@pytest.mark.parametrize("case", [CASES[1], CASES[10], CASES[12]], ids=case_id)
def test_small_job_budget_splits_bands_and_image_blocks(case, plan_constant):
    plan_constant(small, "JOB_BYTES", 256)
    _, out_h, out_w, _ = case.out_shape
    row_bytes = 4 * (case.c_in + case.c_out) * (out_w + case.kernel[1] - 1)
    assert small.band_rows(64, out_h, row_bytes) < out_h or out_h == 1
    assert small.block_images(row_bytes * out_h) == 1
    with forced(Variant.SMALL_BANDS, "forward", "backward_weight"):
        assert plan(Pass.FORWARD, case.geometry, case.dtype).details[4] == small.band_rows(case.batch, out_h,
                                                                                            row_bytes)
        check_passes(case, names=("forward", "backward_weight"))


BORDERS = {"right": lambda h, w: (h // 2, w - 1), "left": lambda h, w: (h // 2, 0),
           "bottom-right": lambda h, w: (h - 1, w - 1), "top-left": lambda h, w: (0, 0)}


@requires_torch
@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", [CASES[i] for i in (0, 1, 4, 7, 9, 10)], ids=case_id)
def test_inf_or_nan_at_image_borders_matches_torch(case, dtype, border, value):
    """Positions computed past each row's end multiply real pixels (the row's last columns, the next row's first
    ones) by a zero gradient: with inf or NaN there, inf * 0 = NaN must not reach taps PyTorch keeps finite."""
    case = case.cast(dtype)
    data = arrays(case)
    data.x[-1, *BORDERS[border](case.h, case.w), -1] = value
    want = torch_passes(case, data)
    for variant, names in applicable(case, ("forward", "backward_weight")):
        with forced(variant, *names):
            for name in names:
                assert np.isfinite(want[name]).any(), name  # some values the pixel does not reach
                assert_close(run_pass(name, case, data), want[name], err_msg=f"{variant} {name}")


@pytest.mark.parametrize("case", [CASES[1], CASES[10]], ids=case_id)
def test_partials_shrink_under_a_small_budget_and_stay_thread_count_independent(case, plan_constant):
    plan_constant(small, "CHUNK_POSITIONS", 1)  # the budget alone limits the partials here
    data = arrays(case)
    for variant, _ in applicable(case, ("backward_weight",)):
        # the row variant's partials pad C_out to whole vectors
        channels = -(-case.c_out // LANES) * LANES if variant is Variant.SMALL_ROWS else case.c_out
        plan_constant(workspace, "WORKSPACE_BYTES", 5 * int(np.prod(case.weight_shape[:3])) * channels * 4)
        with forced(variant, "backward_weight"):
            specs = plan(Pass.BACKWARD_WEIGHT, case.geometry, case.dtype).specs
            partials = dict((name, shape) for name, shape, _ in specs).get("partials", (1,))
            assert partials[0] == min(case.batch, 2), variant  # half of a budget of 5 partials holds 2
            one, two = on_threads(lambda: run_pass("backward_weight", case, data))
        np.testing.assert_array_equal(one, two)
        assert_close(one, expected_pass("backward_weight", case, data), err_msg=str(variant))


@pytest.mark.parametrize("kernel, width", [((1, 1), 5), ((5, 5), 14), ((2, 1), 3), ((1, 3), 40)])
def test_weight_frames_leave_a_vector_of_zeros_after_each_images_last_output(kernel, width):
    out_w = width - kernel[1] + 1
    rows = small_bands.weight_frame_rows(4, out_w, *kernel, 1, 1)
    frame_w = width
    last_output = (4 - 1) * frame_w + out_w  # one past the last output position of the plane
    assert rows >= 4 + kernel[0] - 1
    assert rows * frame_w - last_output - (kernel[0] - 1) * frame_w - (kernel[1] - 1) >= 0
    assert rows * frame_w - last_output >= LANES


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[3], CASES[12]], ids=case_id)  # fewer than 12 outputs
def test_weight_gradient_blocks_shorter_than_the_last_leave_nothing_behind(case, plan_constant):
    # five images in one chunk, two per block: the last block has one image and the slot's planes still hold
    # the previous block's second image, which the whole-vector runs must not read as gradient
    plan_constant(small, "CHUNK_POSITIONS", 1 << 30)
    case = case._replace(batch=5)
    _, out_h, out_w, _ = case.out_shape
    frame_w = out_w + case.kernel[1] - 1
    plane = small_bands.weight_frame_rows(out_h, out_w, *case.kernel, 1, 1) * frame_w
    plan_constant(small, "JOB_BYTES", 2 * (case.c_in + case.c_out) * plane * 4)
    data = arrays(case)
    with forced(Variant.SMALL_BANDS, "backward_weight"):
        assert plan(Pass.BACKWARD_WEIGHT, case.geometry, case.dtype).details[4] == 2
        # zeros, not a huge fill: an inf or NaN product would send the chunk down the exact path and hide a misread
        zeros = np.zeros(workspace_bytes("backward_weight", case), np.uint8)
        got = run_pass("backward_weight", case, data, workspace=zeros)
    assert_close(got, expected_pass("backward_weight", case, data))


def test_row_runs_cover_lenet_and_leave_negative_padding_and_dilated_widths_to_the_bands():
    rule = select_module.row_runs_apply
    assert rule(np.float32, (64, 14, 14, 6), (5, 5, 6, 16), (64, 10, 10, 16), (0, 0), (1, 1))
    assert not rule(np.float64, (64, 14, 14, 6), (5, 5, 6, 16), (64, 10, 10, 16), (0, 0), (1, 1))
    assert not rule(np.float32, (2, 11, 12, 2), (3, 3, 2, 3), (2, 11, 10, 3), (2, 2), (2, 3))
    # padding -1 on the right: the frame (out_w + kW - 1 wide) ends inside the input
    assert not rule(np.float32, (1, 6, 8, 2), (3, 3, 2, 2), (1, 4, 5, 2), (0, 0), (1, 1))


@pytest.mark.parametrize("batch", [1, 8, 11])
def test_input_gradient_scatter_keeps_inf_and_nan_where_the_gradient_has_them(batch):
    case = ConvCase(batch, 14, 14, 6, 16, kernel=5)
    assert case.selected("backward_input") is Variant.SMALL_ROWS
    data = arrays(case, seed=9)
    data.grad_out[0, 3, 4, 2] = np.inf
    data.grad_out[-1, 9, 9, 15] = np.nan
    data.grad_out[0, 0, 0, 0] = -np.inf
    got = run_pass("backward_input", case, data)
    want = expected_pass("backward_input", case, data)
    assert np.isinf(want).any() and np.isnan(want).any()
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    assert_close(got, want)


# (batch, size, C_in, C_out, kernel, padding): channel vectors of the row variant, whole and masked
CHANNEL_CASES = [
    ConvCase(11, 14, 14, 6, 16, kernel=5),                       # LeNet-5's second layer; last block of 3 images
    ConvCase(3, 9, 9, 1, 13, kernel=5, padding=2),               # 13 channels: one masked vector
    ConvCase(2, 6, 6, 3, 33, kernel=(3, 2), padding=(1, 0)),     # three vectors, the last with one channel
    ConvCase(1, 5, 5, 16, 12, kernel=1),                         # 1x1, one image
    ConvCase(20, 5, 5, 16, 12, kernel=1),                        # 1x1, more images than partials
]


@pytest.fixture
def wide_small_layers(plan_constant):
    """The small variants for up to 64 channels (select stops at 16, the kernels do not)."""
    plan_constant(select_module, "SMALL_MAX_CHANNELS", 64)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("case", CHANNEL_CASES[:4], ids=case_id)
def test_forward_over_channels_matches_the_reference_and_keeps_nan(case, relu, wide_small_layers):
    data = arrays(case, seed=4)
    data.x[-1, 0, 0, 0] = np.nan
    with forced(Variant.SMALL_ROWS, "forward"):
        got = check_passes(case, data, names=("forward",), relu=relu)["forward"]
    assert np.isnan(got).any()


@pytest.mark.parametrize("case", [CHANNEL_CASES[i] for i in (0, 1, 2, 4)], ids=case_id)
def test_weight_gradient_over_channels_matches_the_reference_on_one_and_two_threads(case, wide_small_layers):
    data = arrays(case, seed=6)
    with forced(Variant.SMALL_ROWS, "backward_weight"):
        one, two = on_threads(lambda: run_pass("backward_weight", case, data))
    np.testing.assert_array_equal(one, two)
    assert_close(one, expected_pass("backward_weight", case, data))


@pytest.mark.parametrize("cout", range(1, 9))
def test_forward_stores_pixel_tiles_as_nhwc_for_every_narrow_channel_count(cout):
    # 37 output columns: two whole runs of 16 pixels and a tail of 5 per row; relu with a NaN kept
    case = ConvCase(2, 5, 39, 2, cout)
    assert case.selected("forward") is Variant.SMALL_BANDS
    data = arrays(case, seed=cout)
    data.x[1, 2, 20, 1] = np.nan
    check_passes(case, data, names=("forward",), relu=True)


@pytest.mark.parametrize("cout", range(1, 9))
def test_weight_gradient_lays_out_narrow_grad_out_in_planes_for_every_channel_count(cout):
    # 37 output columns: two runs of 16 pixels and a tail of 5 per row, through the planar weight gradient
    case = ConvCase(3, 5, 39, 2, cout)
    assert case.selected("backward_weight") is Variant.SMALL_BANDS
    check_passes(case, arrays(case, seed=cout), names=("backward_weight",))
