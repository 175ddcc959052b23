"""Variant.FEW_PIXELS (few_pixels.py): a forward whose whole batch has a few output pixels, as im2col rows times
the register tiles, one strip of output channels per slot."""
import numpy as np
import pytest

from cnnnumba.kernels.conv2d import Pass, Variant, plan, tiles
from cnnnumba.kernels.conv2d.direct import REDUCTION_BLOCK
from tests.kernels.conv2d.common import (ConvCase, arrays, assert_close, case_id, check_passes, expected_pass, forced,
                                         on_threads, run_pass, select_module, shifted)

CASES = [
    ConvCase(1, 2, 2, 512, 512, padding=1),                       # ResNet-18's last stage at 64x64, batch 1
    ConvCase(1, 5, 5, 32, 64, padding=1),                         # 25 pixels; a reduction past one block (288)
    ConvCase(2, 3, 3, 20, 96, kernel=3),                          # 1x1 outputs of two images; 96: 32-channel strips
    ConvCase(1, 8, 8, 24, 48, stride=2, padding=1),               # stride 2; 48: 16-channel strips, padded rows
    ConvCase(1, 4, 4, 32, 64, kernel=1, stride=2),                # 1x1 stride 2 (a projection shortcut)
    ConvCase(1, 5, 7, 18, 32, padding=(2, 1, 0, 2), dilation=(2, 1)),  # dilation, asymmetric padding, 5 x 7 pixels
]


def test_the_cases_select_few_pixels_in_float32_only():
    assert REDUCTION_BLOCK < 3 * 3 * 32  # CASES[1] runs the reduction in two blocks
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
    """Each strip of output channels sums its whole reduction in order on one thread: 1 and 2 threads agree."""
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
    else among the forward tiles that divide, the one with the most pixels it can fill."""
    kind, pixels, channels = tiles.product_tile(rows, channels_out)
    assert channels_out % channels == 0
    product = tiles.TILES["product"]
    if product and rows <= product[1] and channels_out % (product[0][1] * 16) == 0:
        assert (kind, pixels, channels) == (tiles.PRODUCT, product[0][0], product[0][1] * 16)
        return
    assert kind != tiles.PRODUCT
    shapes = [(p, c) for p, c in tiles.tile_shapes()["forward"][:2] if channels_out % c == 0]
    if any(p <= rows for p, _ in shapes):
        assert pixels == max(p for p, _ in shapes if p <= rows)


def test_the_plan_pads_the_rows_to_whole_tiles():
    case = CASES[3]  # 16 pixels
    specs, (kind, pixels, channels) = plan(Pass.FORWARD, case.geometry, case.dtype)[1:]
    rows = dict((name, shape) for name, shape, _ in specs)["rows"]
    assert rows[1] % pixels == 0 and rows[1] >= 16 and rows[2] == 3 * 3 * 24
    assert_close(run_pass("forward", case, arrays(case)), expected_pass("forward", case, arrays(case)))
