"""Variant.FEW_PIXELS (few_pixels.py): a forward whose whole batch has a few output pixels, as im2col rows times
the register tiles over shares of the weight's rows, summed after."""
import numpy as np
import pytest

from cnnnumba.kernels import conv2d as kernels
from cnnnumba.kernels.conv2d import Pass, Variant, few_pixels, plan, tiles
from cnnnumba.kernels.conv2d.few_pixels import REDUCTION_SHARES, reduction_block
from tests.kernels.conv2d.common import (ConvCase, arrays, assert_close, assert_conv_then_normalized, case_id,
                                         check_passes, expected_pass, forced, normalized_case_data, on_threads,
                                         run_pass, select_module, shifted)

CASES = [
    ConvCase(1, 2, 2, 512, 512, padding=1),                       # ResNet-18's last stage at 64x64, batch 1
    ConvCase(1, 5, 5, 32, 64, padding=1),                         # 25 pixels; a reduction past one block (288)
    ConvCase(2, 3, 3, 20, 96, kernel=3),                          # 1x1 outputs of two images; 96: 32-channel strips
    ConvCase(1, 8, 8, 24, 48, stride=2, padding=1),               # stride 2; 48: 16-channel strips, padded rows
    ConvCase(1, 4, 4, 32, 64, kernel=1, stride=2),                # 1x1 stride 2 (a projection shortcut)
    ConvCase(1, 5, 7, 18, 32, padding=(2, 1, 0, 2), dilation=(2, 1)),  # dilation, asymmetric padding, 5 x 7 pixels
]


def test_the_cases_select_few_pixels_in_float32_only():
    assert reduction_block(25) < 3 * 3 * 32 // REDUCTION_SHARES  # CASES[1] runs in two blocks, also in shares
    # CASES[0] (4 pixels) in blocks of FEW_ROWS_REDUCTION_BLOCK rows, several in each of its two shares
    assert reduction_block(4) < reduction_block(25) and 3 * 3 * 512 // REDUCTION_SHARES > 2 * reduction_block(4)
    for case in CASES:
        assert case.out_shape[0] * case.out_shape[1] * case.out_shape[2] <= select_module.FEW_PIXELS_MAX, case
        assert case.selected("forward") is Variant.FEW_PIXELS, case
        assert case.cast(np.float64).selected("forward") is Variant.GEMM, case
        assert case.selected("backward_input") is not Variant.FEW_PIXELS, case


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("relu", [False, True])
def test_few_pixels_matches_the_reference(case, bias, relu):
    got = check_passes(case, names=("forward",), bias=bias, relu=relu)["forward"]
    if relu:
        assert (got == 0).any() and (got > 0).any()


@pytest.mark.parametrize("case", [CASES[0], CASES[3]], ids=case_id)
def test_the_threads_change_no_bit(case):
    """The reduction's shares do not depend on the threads and add in order: 1 and 2 threads agree."""
    data = arrays(case)
    one, two = on_threads(lambda: run_pass("forward", case, data))
    np.testing.assert_array_equal(one, two)


def test_a_misaligned_weight_gives_the_same_result():
    case = CASES[1]
    data = arrays(case)
    aligned = run_pass("forward", case, data)
    misaligned = run_pass("forward", case, data._replace(weight=shifted(data.weight, 3)))
    np.testing.assert_array_equal(aligned, misaligned)


def test_forcing_few_pixels_on_a_larger_output_is_refused():
    case = ConvCase(3, 14, 14, 16, 32, padding=1)  # 588 output pixels
    assert not select_module.applies(Pass.FORWARD, Variant.FEW_PIXELS, case.dtype, case.geometry)
    with forced(Variant.FEW_PIXELS, "forward"), pytest.raises(ValueError, match="FEW_PIXELS"):
        run_pass("forward", case, arrays(case))


@pytest.mark.parametrize("rows", [1, 4, 8, 16, 32, 64])
@pytest.mark.parametrize("channels_out", [16, 48, 96, 512])
def test_the_product_tile_divides_the_channels(rows, channels_out):
    """Strips must not overlap (each adds its reduction blocks into out): the tier's product tile up to its rows,
    else the forward tile with the most channels that divide channels_out."""
    kind, pixels, channels = tiles.product_tile(rows, channels_out)
    assert channels_out % channels == 0
    product = tiles.TILES["product"]
    if product and rows <= product[1] and channels_out % (product[0][1] * 16) == 0:
        assert (kind, pixels, channels) == (tiles.PRODUCT, product[0][0], product[0][1] * 16)
        return
    assert kind != tiles.PRODUCT
    assert channels == max(c for _, c in tiles.tile_shapes()["forward"] if channels_out % c == 0)


def test_the_plan_pads_the_rows_to_whole_tiles():
    case = CASES[3]  # 16 pixels
    specs, (kind, pixels, channels) = plan(Pass.FORWARD, case.geometry, case.dtype)[1:]
    rows = dict((name, shape) for name, shape, _ in specs)["rows"]
    assert rows[1] % pixels == 0 and rows[1] >= 16 and rows[2] == 3 * 3 * 24
    assert_close(run_pass("forward", case, arrays(case)), expected_pass("forward", case, arrays(case)))


@pytest.fixture
def shares_everywhere(monkeypatch):
    """Every weight large enough to split its reduction into shares (only megabyte weights do by default)."""
    monkeypatch.setattr(few_pixels, "SHARE_WEIGHT_BYTES", 0)
    select_module.clear_plans()
    yield
    select_module.clear_plans()


def test_only_a_weight_from_beyond_l2_splits_its_reduction():
    assert few_pixels.reduction_shares(np.float32, (3, 3, 512, 512)) == REDUCTION_SHARES > 1  # 9.4 MB
    assert few_pixels.reduction_shares(np.float32, (1, 1, 320, 1280)) == 1  # 1.6 MB
    assert CASES[0].weight_shape == (3, 3, 512, 512)  # the default rule's shares are in the table above


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("relu", [False, True])
def test_the_reduction_in_shares_matches_the_reference(shares_everywhere, case, bias, relu):
    got = check_passes(case, names=("forward",), bias=bias, relu=relu)["forward"]
    if relu:
        assert (got == 0).any() and (got > 0).any()


@pytest.mark.parametrize("case", [CASES[1], CASES[3]], ids=case_id)
def test_shares_clamp_relu6_after_summing_and_keep_nan(shares_everywhere, case):
    data = arrays(case)
    data.x[0, 2, 2, 0] = np.nan
    data.x[...] *= 3  # sums past 6
    plain = run_pass("forward", case, data)
    got = kernels.conv2d_forward(data.x, data.weight, data.bias, np.full_like(plain, np.nan), relu6=True,
                                 **case.options)
    clamped = np.where(plain < 0, 0, plain)
    np.testing.assert_array_equal(got, np.where(clamped > 6, 6, clamped))
    assert (got == 6).any() and (got == 0).any() and np.isnan(got).any()


@pytest.mark.parametrize("case", [CASES[1], CASES[3]], ids=case_id)
def test_shares_change_no_bit_with_the_threads(shares_everywhere, case):
    data = arrays(case)
    one, two = on_threads(lambda: run_pass("forward", case, data))
    np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("case", [CASES[1], CASES[3], CASES[0]], ids=case_id)
@pytest.mark.parametrize("activation", [None, "relu", "relu6"])
def test_shares_apply_a_batch_norm_as_they_sum(shares_everywhere, case, activation):
    data, coefficients = normalized_case_data(case)
    assert few_pixels.normalizes(few_pixels_scratch(case))
    assert_conv_then_normalized(case, data, coefficients, activation, [Variant.FEW_PIXELS])


def few_pixels_scratch(case):
    specs = plan(Pass.FORWARD, case.geometry, case.dtype).specs
    return kernels.workspace.carve(None, specs)
