"""The Winograd F(2x2, 3x3), F(4x4, 3x3) and F(4x2, 3x3) weight gradients (winograd/weight.py, weight_f2.py,
weight_f4.py), forced through conv2d_backward_weight, against the reference; their plan, thread independence, and
inf/NaN inputs (recomputed by the direct variant)."""
import numpy as np
import pytest

from cnnnumba.kernels.conv2d import WORKSPACE_BYTES, Pass, Variant, plan
from cnnnumba.kernels.conv2d.select import TINY_WINOGRAD_WEIGHT_MAX_PIXELS, tiny_output
from cnnnumba.kernels.conv2d.winograd import f4 as winograd_f4
from cnnnumba.kernels.conv2d.winograd import weight as winograd_weight
from cnnnumba.kernels.conv2d.winograd import weight_f4
from cnnnumba.kernels.conv2d.workspace import specs_bytes
from tests.kernels.conv2d.common import (ConvCase, arrays, assert_close, case_id, check_passes, expected_pass,
                                         forced, on_threads, run_pass, workspace_bytes)

# (batch, height, width, C_in, C_out, padding): odd and even output sizes, padding 0/1/2, batch 1, C 16/32/48/64
CASES = [ConvCase(b, h, w, ci, co, padding=p) for b, h, w, ci, co, p in [
    (2, 8, 8, 16, 16, (1, 1)),      # even output, one 16 x 16 tile kind
    (1, 7, 9, 16, 32, (1, 1)),      # batch 1, odd output height: the last tile row hangs over the edge
    (2, 6, 5, 32, 16, (0, 0)),      # no padding, odd output width
    (1, 5, 7, 16, 48, (2, 2)),      # padding 2: outputs wider than the input
    (3, 9, 10, 48, 64, (1, 0)),     # 4 x 64 tiles, unequal padding
    (2, 11, 6, 64, 32, (2, 1)),     # odd output, 8 x 32 tiles
    (1, 3, 3, 16, 16, (0, 0)),      # a single output pixel: one tile, mostly past the edge
    (5, 12, 12, 32, 64, (1, 1)),    # several chunks
]]


@pytest.fixture(params=[Variant.WINOGRAD_F2, Variant.WINOGRAD_F4, Variant.WINOGRAD_F4X2], ids=["F2", "F4", "F4x2"])
def variant(request):
    """Every layer's weight gradient on F(2x2), F(4x4) or F(4x2), whatever its channel counts."""
    with forced(request.param, "backward_weight"):
        yield request.param


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_the_reference(case, variant):
    assert case.selected("backward_weight") is variant
    check_passes(case, names=("backward_weight",))


@pytest.mark.parametrize("forced_variant, batch, size, channels", [(Variant.WINOGRAD_F4, 8, 12, 128),
                                                                    (Variant.WINOGRAD_F4X2, 4, 8, 256)],
                         ids=["F4-128", "F4x2-256"])
def test_error_stays_level_as_channels_grow(forced_variant, batch, size, channels):
    """The weight gradient's sums run over the batch's tiles, not channels: forced F(4x4) (F(4x2)), its largest
    error over max |dW| against float64 at 128 (256) channels stays within what it is at 32, both under 1e-5, which
    is what lets select take it past 32 (128) channels. Measured: F(4x4) at batch 64, 3.8-4.4e-6 and 5.0-5.4e-6;
    F(4x2) here 5.4e-7 at both, against the direct variant at batch 16 1.3-3.4e-6."""
    errors = {}
    for width in (32, channels):
        case = ConvCase(batch, size, size, width, width, padding=1)
        data = arrays(case)
        with forced(forced_variant, "backward_weight"):
            got = run_pass("backward_weight", case, data)
        want = expected_pass("backward_weight", case, data)
        errors[width] = np.abs(got - want).max() / np.abs(want).max()
    assert errors[32] < 1e-5 and errors[channels] < 1e-5, errors


def test_select_takes_winograd_for_these_cases_f4_up_to_32_channels():
    """(Each case has fewer than select.WINOGRAD_F4_WEIGHT_MIN_PIXELS output pixels: past 32 channels F(2x2).)
    ... except outputs of at most TINY_WINOGRAD_WEIGHT_MAX_PIXELS pixels past 16 channels, which run as GEMM."""
    for case in CASES:
        use_f4 = case.c_in <= 32 and case.c_out <= 32
        expected = Variant.WINOGRAD_F4 if use_f4 else Variant.WINOGRAD_F2
        geometry = case.geometry
        if tiny_output(geometry.weight_shape, geometry.out_shape, geometry.groups) \
                and geometry.out_shape[1] * geometry.out_shape[2] <= TINY_WINOGRAD_WEIGHT_MAX_PIXELS:
            expected = Variant.GEMM
        assert case.selected("backward_weight") is expected, case


@pytest.mark.parametrize("case", [CASES[1], CASES[4], CASES[7]], ids=case_id)
def test_a_given_workspace_gives_the_same_result(case, variant):
    """A workspace of exactly conv2d_workspace_bytes, one byte past a cache line, full of NaN-like garbage."""
    size = workspace_bytes("backward_weight", case)
    assert size <= WORKSPACE_BYTES
    data = arrays(case)
    want = run_pass("backward_weight", case, data)
    got = run_pass("backward_weight", case, data, workspace=np.full(size + 1, 0xFF, np.uint8)[1:])
    np.testing.assert_array_equal(got, want)


def test_the_plan_leaves_room_for_the_direct_fallback(variant):
    for case in CASES:
        chosen, specs, (_, direct_specs, _) = plan(Pass.BACKWARD_WEIGHT, case.geometry, case.dtype)
        assert chosen is variant and specs_bytes(specs) >= specs_bytes(direct_specs)


def test_bit_identical_on_1_and_2_threads(variant):
    case = CASES[7]
    specs = plan(Pass.BACKWARD_WEIGHT, case.geometry, case.dtype).specs
    chunks = dict((name, shape) for name, shape, _ in specs)["partials"][0]
    assert chunks == 2  # the chunk split, not the thread count, decides which tiles each partial sums
    data = arrays(case)
    one, two = on_threads(lambda: run_pass("backward_weight", case, data))
    np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("columns", [4, 2])
def test_the_f4_finish_is_g_transposed_s_g(columns):
    """dW = G^T s G' for each (C_in, C_out) pair, s the chunks' 6 x P partials summed in chunk order (in float32, as
    workspace.sum_partials sums them), the transforms formed in float64 and rounded once: against the matrix
    product in float64 of that sum it may differ by the one rounding only. 300 x 2 pairs: a last block of 88."""
    rng = np.random.default_rng(3)
    partials = rng.standard_normal((3, 6, columns + 2, 300, 2)).astype(np.float32)
    out = np.empty((3, 3, 300, 2), np.float32)
    blocks = weight_f4.FINISH_BLOCK_PAIRS
    weight_f4.finish(partials, out, np.full((2, 6 * (columns + 2), blocks), np.nan, np.float32),
                     np.full((2, 6, 3, blocks), np.nan))
    summed = partials[0] + partials[1] + partials[2]
    g = winograd_f4.KERNEL_MATRIX
    across = g if columns == 4 else winograd_f4.NARROW_KERNEL_MATRIX
    expected = np.einsum("ia,ijkl,jb->abkl", g, summed.astype(np.float64), across)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())


def test_chunks_follow_the_tile_count_and_stay_within_the_budget():
    dtype = np.dtype(np.float32)
    # 32 x 32 outputs: 256 F(2x2) tiles an image at 64 channels, 64 F(4x4) tiles at 16 (TILES_PER_CHUNK each)
    for batch, chunks, channels, positions in ((1, 2, 64, (4, 4)), (16, 8, 64, (4, 4)), (64, 16, 64, (4, 4)),
                                               (16, 2, 16, (6, 6)), (64, 8, 16, (6, 6))):
        specs, _ = winograd_weight.backward_weight_plan(dtype, (batch, 32, 32, channels), (3, 3, channels, channels),
                                                        (batch, 32, 32, channels), (1, 1), WORKSPACE_BYTES,
                                                        4 if channels <= 32 else None)
        assert dict((name, shape) for name, shape, _ in specs)["partials"] == (chunks, *positions, channels, channels)
    # one partial of 16 x 512 x 512 float32 is 16 MiB, half the budget: too large, the direct variant runs
    assert winograd_weight.backward_weight_plan(dtype, (1, 8, 8, 512), (3, 3, 512, 512), (1, 8, 8, 512), (1, 1),
                                                WORKSPACE_BYTES, None) is not None
    assert winograd_weight.backward_weight_plan(dtype, (1, 8, 8, 1024), (3, 3, 1024, 512), (1, 8, 8, 512), (1, 1),
                                                WORKSPACE_BYTES, None) is None
    # F(4x2)'s 24 positions at 512 x 512 are 24 MiB: select falls back to F(2x2) there
    assert winograd_weight.backward_weight_plan(dtype, (16, 8, 8, 512), (3, 3, 512, 512), (16, 8, 8, 512), (1, 1),
                                                WORKSPACE_BYTES, 2) is None
    assert ConvCase(16, 8, 8, 512, 512, padding=1).selected("backward_weight") is Variant.WINOGRAD_F2
    big = ConvCase(1, 8, 8, 1024, 512, padding=1)
    assert big.selected("backward_weight") is Variant.DIRECT


# (which array, position as fractions of its height and width): interior pixels, the border, the overhanging edge
NON_FINITE_PLACES = [("x", 0.5, 0.5), ("x", 0.0, 0.0), ("x", 1.0, 1.0), ("grad_out", 0.5, 0.5),
                     ("grad_out", 1.0, 1.0), ("grad_out", 0.0, 1.0)]


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("place", NON_FINITE_PLACES)
@pytest.mark.parametrize("case", [CASES[1], CASES[2], CASES[3]], ids=case_id)
def test_inf_or_nan_inputs_give_the_direct_gradient(case, place, value, variant):
    """Winograd's differences turn one inf into NaN (inf - inf, inf x 0) at taps where the direct products give
    inf; such a result is recomputed directly, so the NaN and inf entries are the reference's, and the whole
    result is the direct variant's, bit for bit, in a workspace of exactly the planned size."""
    data = arrays(case)
    name, row, column = place
    target = data.x if name == "x" else data.grad_out
    target[-1, round(row * (target.shape[1] - 1)), round(column * (target.shape[2] - 1)), -1] = value
    size = workspace_bytes("backward_weight", case)
    got = run_pass("backward_weight", case, data, workspace=np.full(size, 0xFF, np.uint8))
    want = expected_pass("backward_weight", case, data)
    assert not np.isfinite(want).all() and np.isfinite(want).any()
    assert_close(got, want)
    with forced(Variant.DIRECT, "backward_weight"):
        np.testing.assert_array_equal(got, run_pass("backward_weight", case, data))
