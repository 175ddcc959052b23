"""Variant.POINTWISE (pointwise.py): 1x1 kernels without padding on the register tiles, reading and writing the
NHWC rows where they lie, any stride."""
import numpy as np
import pytest

from cnnnumba.kernels.conv2d import Variant
from tests.kernels.conv2d.common import CASES, POINTWISE_CASES, case_id, check_passes, forced

PASS_NAMES = ("forward", "backward_input", "backward_weight")


@pytest.mark.parametrize("case", POINTWISE_CASES, ids=case_id)
def test_pointwise_cases_take_the_pointwise_variant(case):
    for name in PASS_NAMES:
        assert case.selected(name) is Variant.POINTWISE, name
        assert case.cast(np.float64).selected(name) is not Variant.POINTWISE, name
    # padded 1x1: the output grid leaves the input, so the direct tiles' padded strips take it
    assert CASES[30].selected("forward") is Variant.DIRECT


@pytest.mark.parametrize("case", POINTWISE_CASES + [CASES[14]], ids=case_id)
def test_forced_pointwise_matches_the_reference(case):
    names = ("forward", "backward_weight") if case is CASES[14] else PASS_NAMES  # 16 input rows: no whole tile
    with forced(Variant.POINTWISE, *names):
        check_passes(case, names=names)
        check_passes(case, names=("forward",), bias=False, relu=True)


def test_reduction_blocks_add_up(small_reduction_blocks):
    """Blocks of 8 input channels accumulate in out, the ReLU after the last one only."""
    case = CASES[28]
    with forced(Variant.POINTWISE):
        check_passes(case, names=PASS_NAMES)
        check_passes(case, names=("forward",), relu=True)
