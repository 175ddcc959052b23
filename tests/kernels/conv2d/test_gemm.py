"""Variant.GEMM (gemm.py): im2col + BLAS GEMM in chunks of output rows within the workspace budget."""
import numpy as np
import pytest

from cnnnumba.kernels.conv2d import Pass, Variant, gemm, plan, workspace
from cnnnumba.kernels.conv2d.workspace import CACHE_LINE, new_workspace, specs_bytes
from tests.kernels.conv2d.common import (ConvCase, arrays, case_id, check_passes, expected_pass, forced, run_pass,
                                         assert_close, workspace_bytes)

CASES = [
    ConvCase(3, 12, 12, 1, 6, kernel=5, padding=2),                           # LeNet-5's first layer, scaled down
    ConvCase(2, 7, 7, 6, 16, kernel=5),                                       # LeNet-5's second layer
    ConvCase(1, 9, 8, 3, 4, kernel=(2, 3), stride=(3, 2), padding=(1, 0, 2, 1)),  # stride > kernel, asymmetric pad
    ConvCase(2, 9, 9, 2, 3, stride=(1, 2), padding=2, dilation=2),            # dilation
    ConvCase(1, 5, 4, 2, 2, kernel=1),                                        # 1x1: x is the columns
    ConvCase(2, 6, 5, 3, 4, kernel=1, stride=2),                              # strided 1x1: im2col
    ConvCase(1, 4, 4, 2, 3, kernel=1, padding=1),                             # padded 1x1: im2col
]
PASS_NAMES = ("forward", "backward_input", "backward_weight")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("budget", ["default", "one row per chunk"])
@pytest.mark.parametrize("im2col", ["serial", "parallel"])
def test_gemm_matches_the_reference(case, dtype, budget, im2col, plan_constant, monkeypatch):
    # these shapes are all short enough for the serial im2col: force the parallel one too
    monkeypatch.setattr(gemm, "SERIAL_COLUMNS", 1 << 30 if im2col == "serial" else 0)
    if budget != "default":
        plan_constant(workspace, "WORKSPACE_BYTES", 1)
    case = case.cast(dtype)
    with forced(Variant.GEMM):
        if budget != "default":
            assert plan(Pass.FORWARD, case.geometry, dtype).details == 1
        check_passes(case, names=PASS_NAMES)
        check_passes(case, names=("forward",), bias=False)


@pytest.mark.parametrize("images", [2, 1])
def test_columns_are_chunked_under_the_budget(images, plan_constant):
    """A chunk's columns fit the budget: whole images when one fits, else output rows; the results still match."""
    case = CASES[0]
    batch, out_h, out_w, _ = case.out_shape
    row_bytes = out_w * 25 * 4
    # two whole images, or three rows (less than an image); two cache lines of alignment slack
    rows = 2 * out_h if images == 2 else 3
    budget = rows * row_bytes + 2 * CACHE_LINE
    specs, planned_rows = gemm.plan("forward", batch, out_h, out_w, 25, 6, np.dtype(np.float32), budget)
    assert planned_rows == rows and specs_bytes(specs) <= budget
    plan_constant(workspace, "WORKSPACE_BYTES", budget)
    data = arrays(case)
    with forced(Variant.GEMM, "forward"):
        assert plan(Pass.FORWARD, case.geometry, case.dtype).details == rows
        got = run_pass("forward", case, data, workspace=new_workspace(workspace_bytes("forward", case)))
    assert_close(got, expected_pass("forward", case, data))


def test_relu_is_applied_to_the_output():
    case = CASES[1].cast(np.float64)
    with forced(Variant.GEMM, "forward"):
        got = check_passes(case, names=("forward",), relu=True)["forward"]
    assert (got == 0).any() and (got > 0).any()
