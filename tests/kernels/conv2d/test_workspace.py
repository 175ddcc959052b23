"""The workspace convention (workspace.py): every pass of every variant runs in a caller's workspace of exactly
conv2d_workspace_bytes, misaligned and dirty, with the results of a fresh one; a smaller or wrong one is refused;
sum_partials split over the threads gives the serial bits."""
import numpy as np
import pytest

from cnnnumba.kernels.conv2d import Variant, workspace
from tests.kernels.conv2d import test_small, test_winograd
from tests.kernels.conv2d.common import (CASES, PASS_OF, PASSES, arrays, case_id, dirty_workspace, forced, on_threads,
                                         run_pass,
                                         select_module, workspace_bytes)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", [CASES[i] for i in (0, 5, 12, 17, 18, 19, 20, 22, 23, 26, 27, 28)], ids=case_id)
def test_a_given_workspace_gives_the_same_results_and_is_reused(case, dtype):
    """Each pass in a workspace of exactly conv2d_workspace_bytes, at a misaligned start, dirty from other passes."""
    case = case.cast(dtype)
    data = arrays(case)
    sizes = {name: workspace_bytes(name, case) for name in PASSES}
    shared = dirty_workspace(max(sizes.values()), misalign=1)
    for name in PASSES:
        want = run_pass(name, case, data, relu=name == "forward")
        got = run_pass(name, case, data, relu=name == "forward", workspace=shared[:sizes[name]])
        np.testing.assert_array_equal(got, want, err_msg=name)


VARIANT_CASES = [
    (Variant.WINOGRAD_F4, test_winograd.CASES[0]), (Variant.WINOGRAD_F4, test_winograd.CASES[4]),
    (Variant.WINOGRAD_F4, test_winograd.CASES[5]), (Variant.WINOGRAD_F2, test_winograd.CASES[0]),
    (Variant.WINOGRAD_F2, test_winograd.CASES[4]), (Variant.WINOGRAD_F2, test_winograd.CASES[5]),
    (Variant.WINOGRAD_F4X2, test_winograd.CASES[0]), (Variant.WINOGRAD_F4X2, test_winograd.CASES[4]),
    (Variant.POINTWISE, CASES[27]), (Variant.DIRECT, CASES[22]), (Variant.DIRECT, CASES[16]),
    (Variant.DIRECT_COLUMNS, CASES[18]), (Variant.GEMM, CASES[2]), (Variant.GENERAL, CASES[5]),
] + [(variant, case.cast(dtype)) for case in [test_small.CASES[i] for i in (0, 2, 8, 10, 12)]
     for variant, dtype in ((Variant.SMALL_ROWS, np.float32), (Variant.SMALL_BANDS, np.float32),
                            (Variant.SMALL_BANDS, np.float64))]


@pytest.mark.parametrize("variant, case", VARIANT_CASES, ids=lambda p: p.name if isinstance(p, Variant) else str(p))
def test_every_variant_runs_in_a_dirty_workspace_of_exactly_its_size(variant, case):
    """The scratch is carved from the caller's workspace: one of exactly conv2d_workspace_bytes, misaligned and
    full of NaN, gives the values of a fresh one; one byte less is refused."""
    names = [name for name in PASSES[:3] if select_module.applies(PASS_OF[name], variant, case.dtype, case.geometry)]
    assert names, variant
    data = arrays(case)
    with forced(variant, *names):
        for name in names:
            size = workspace_bytes(name, case)
            assert 0 < size <= workspace.WORKSPACE_BYTES, name
            np.testing.assert_array_equal(run_pass(name, case, data, relu=True, workspace=dirty_workspace(size)),
                                          run_pass(name, case, data, relu=True), err_msg=name)
            with pytest.raises(ValueError, match=f"workspace of {size - 1} bytes, but this pass needs {size}"):
                run_pass(name, case, data, workspace=np.empty(size - 1, np.uint8))


def test_a_workspace_of_the_wrong_kind_is_refused():
    case = CASES[16]
    size = workspace_bytes("forward", case)
    with pytest.raises(TypeError, match="workspace must be a writeable 1-D C-contiguous uint8 array"):
        run_pass("forward", case, arrays(case), workspace=np.empty(size, np.float32))


# 6144 output elements: 1 gives 64 shares of 96, 1100 five uneven shares (1228 or 1229), 1 << 40 one share
@pytest.mark.parametrize("share_elements", [1, 1100, 1 << 40], ids=["most shares", "uneven", "serial"])
def test_the_partials_sum_split_over_threads_gives_the_serial_bits(share_elements, monkeypatch):
    """sum_partials takes contiguous shares of its output: any split, on 1 or 2 threads, gives the bits of the
    serial sum in chunk order (sum_partials_serial), within float32 rounding of the float64 sum."""
    partials = np.random.default_rng(5).standard_normal((3, 4, 4, 16, 24)).astype(np.float32)
    expected = np.full((4, 4, 16, 24), np.nan, np.float32)
    workspace.sum_partials_serial(partials, expected)
    np.testing.assert_allclose(expected, partials.astype(np.float64).sum(axis=0), rtol=1e-6, atol=1e-6)
    monkeypatch.setattr(workspace, "SHARE_ELEMENTS", share_elements)

    def summed():
        got = np.full_like(expected, np.nan)
        workspace.sum_partials(partials, got)
        return got

    for got in on_threads(summed):
        np.testing.assert_array_equal(got, expected)
