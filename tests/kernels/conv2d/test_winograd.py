"""Winograd F(2x2, 3x3), F(4x4, 3x3) and F(4x2, 3x3) forward and input gradient (winograd/f2.py, f4.py), forced
through the entry points, against the reference; the weight gradients are in test_winograd_weight.py."""
import numpy as np
import pytest

from cnnnumba.kernels.conv2d import Pass, Variant, plan, tiles
from cnnnumba.kernels.conv2d.winograd import f2 as winograd_f2
from cnnnumba.kernels.conv2d.winograd import f4 as winograd_f4
from tests.kernels.conv2d.common import (ConvCase, arrays, assert_close, case_id, check_passes, expected_pass,
                                         forced, on_threads, run_pass)

# (batch, height, width, C_in, C_out, padding): odd and even output sizes, images of fewer tiles than one GEMM
# register tile (1x1 and 2x3 outputs), padding 0/1/2, batch 1, 16/32/48/64/80 channels (48 and 80 make the
# last channel tile overlap its neighbour), and images wider than one job's tiles (see small_jobs)
CASES = [ConvCase(b, h, w, ci, co, padding=p) for b, h, w, ci, co, p in [
    (2, 7, 9, 16, 32, 1),
    (1, 8, 8, 16, 16, 1),
    (2, 6, 5, 32, 16, 0),
    (1, 5, 7, 16, 48, 2),
    (3, 12, 11, 64, 64, 1),
    (1, 3, 3, 16, 16, 0),      # a single 1x1 output
    (2, 4, 5, 48, 32, 0),      # 2x3 outputs: one tile row
    (1, 10, 13, 32, 80, 1),
    (2, 17, 6, 64, 16, 2),
    (1, 18, 22, 16, 16, 1),    # F(4x4) in place: 30 tiles in jobs of 16 and 14
    (2, 13, 10, 32, 32, 1),    # F(4x4) in place: 12 tiles in jobs of 8 and 4
]]
PASS_NAMES = ("forward", "backward_input")


@pytest.fixture(params=[Variant.WINOGRAD_F2, Variant.WINOGRAD_F4, Variant.WINOGRAD_F4X2], ids=["F2", "F4", "F4x2"])
def winograd(request):
    """Both passes forced to F(2x2), F(4x4) or F(4x2), whatever the channel counts."""
    with forced(request.param, *PASS_NAMES):
        yield request.param


@pytest.fixture(params=[False, True], ids=["one-job-per-image", "small-jobs"])
def small_jobs(request, plan_constant):
    """Small jobs: 16 tiles (the least) per job, so images split into several jobs of unequal tile counts."""
    if request.param:
        plan_constant(winograd_f2, "JOB_BYTES", 1)  # F(4x4) reads F(2x2)'s
    return request.param


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_passes_match_the_reference(case, small_jobs, winograd):
    data = arrays(case)
    for bias in (True, False):
        for relu in (False, True):
            check_passes(case, data, names=("forward",), bias=bias, relu=relu)
    check_passes(case, data, names=("backward_input",))


def test_small_jobs_split_images_unevenly(plan_constant):
    """The small-jobs runs above really split images: CASES[7]'s 10 x 13 outputs are 5 x 7 = 35 tiles, shared
    evenly among the fewest jobs of at most the least a job holds (the widest register tile's rows: 16 on AVX-512,
    3 jobs of 12), rounded up to whole register tiles of the pass's GEMM rows."""
    plan_constant(winograd_f2, "JOB_BYTES", 1)
    with forced(Variant.WINOGRAD_F2, "forward"):
        specs, (job_tiles, _) = plan(Pass.FORWARD, CASES[7].geometry, np.float32)[1:]
    even = -(-35 // -(-35 // tiles.MAX_TILE_PIXELS))
    rows = tiles.forward_tile(CASES[7].c_out)[1]
    assert job_tiles == -(-even // rows) * rows < 35
    assert dict((name, shape) for name, shape, _ in specs)["v"][2] >= job_tiles


def test_jobs_are_whole_register_tiles_that_cross_images(winograd):
    """A job's tiles fill whole register tiles of GEMM rows and run on into the next image: 9 x 9 outputs are an odd
    number of tiles per image (25 for F(2x2), 9 for F(4x4), 15 for F(4x2)), which no even job size divides; the
    passes still match the reference."""
    case = ConvCase(2, 9, 9, 16, 32, padding=1)
    job_tiles = plan(Pass.FORWARD, case.geometry, np.float32).details[0]
    per_image = {Variant.WINOGRAD_F2: 25, Variant.WINOGRAD_F4: 9, Variant.WINOGRAD_F4X2: 15}[winograd]
    assert job_tiles % tiles.forward_tile(case.c_out)[1] == 0
    assert per_image % job_tiles != 0 and job_tiles < case.batch * per_image
    check_passes(case, names=("forward",), relu=True)
    check_passes(case, names=("backward_input",))


@pytest.mark.parametrize("pads", [(0, 2, 2, 1), (2, 0, 1, 2), (1, 2, 0, 0)])
def test_asymmetric_padding_matches_the_reference(pads, winograd):
    """Padding (top, bottom, left, right): only top and left reach the kernels, the output size implies the rest;
    the backward-input pads grad_out by 2 - top and 2 - left and reads zeros past its bottom and right edges."""
    case = ConvCase(2, 7, 9, 32, 48, padding=pads)
    check_passes(case, names=("forward",), relu=True)
    check_passes(case, names=("backward_input",))


@pytest.mark.parametrize("case", [CASES[4], CASES[7]], ids=case_id)
def test_results_do_not_depend_on_thread_count(case, small_jobs, winograd):
    data = arrays(case)
    one, two = on_threads(lambda: [run_pass("forward", case, data, relu=True),
                                   run_pass("backward_input", case, data)])
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


# an interior pixel, the first and last pixels of the image, a pixel on the right edge of an odd-sized output
POSITIONS = {"interior": lambda h, w: (h // 2, w // 2), "top-left": lambda h, w: (0, 0),
             "bottom-right": lambda h, w: (h - 1, w - 1), "right": lambda h, w: (h // 2, w - 1)}


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("where", POSITIONS)
@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[6]], ids=case_id)
def test_non_finite_inputs_give_what_the_direct_sum_gives(case, where, value, winograd):
    """inf - inf inside the transforms turns an inf the direct sum keeps into NaN: tiles whose outputs are not
    all finite are recomputed directly, so inf stays inf (with its sign), NaN stays NaN, and the rest is
    untouched. With an inf at an interior pixel the reference has infinite outputs the plain Winograd sums would
    have made NaN."""
    data = arrays(case)
    data.x[0, *POSITIONS[where](*data.x.shape[1:3]), 1] = value
    data.grad_out[-1, *POSITIONS[where](*data.grad_out.shape[1:3]), 2] = value
    for relu in (False, True):
        want = expected_pass("forward", case, data, relu=relu)
        assert np.isfinite(want).any()
        assert_close(run_pass("forward", case, data, relu=relu), want)
        if not np.isnan(value) and where == "interior" and not relu:
            assert np.isinf(want).any()
    assert_close(run_pass("backward_input", case, data), expected_pass("backward_input", case, data))


@pytest.mark.parametrize("value", [np.inf, np.nan])
def test_a_non_finite_weight_gives_what_the_direct_variant_gives(value, winograd):
    """A whole output channel turns non-finite; padding taps multiply the inf by zero (NaN), as the direct
    variant's padded strips do (the reference's backward-input never forms those products, so it is not the
    yardstick here)."""
    case = CASES[4]
    data = arrays(case)
    data.weight[1, 2, 3, 4] = value
    with forced(Variant.DIRECT, *PASS_NAMES):
        want = [run_pass(name, case, data) for name in PASS_NAMES]
    assert not np.isfinite(want[0]).all() and not np.isfinite(want[1]).all()
    for name, expected in zip(PASS_NAMES, want):
        assert_close(run_pass(name, case, data), expected, err_msg=name)


def test_f4_runs_16_and_32_channel_passes_in_place_in_jobs_of_one_register_tile():
    """The in-place CASES really are: no m scratch, jobs of one register tile's rows (16 or 8 tiles on AVX-512); a
    pass whose channel counts differ keeps m, and so does a 64-channel one (AVX-512's tiles hold all 64 channels,
    but their 4-tile jobs ran slower)."""
    for variant in (Variant.WINOGRAD_F4, Variant.WINOGRAD_F4X2):
        with forced(variant, "forward"):
            specs = plan(Pass.FORWARD, CASES[4].geometry, np.float32).specs
        assert "m" in dict((name, shape) for name, shape, _ in specs), variant
    with forced(Variant.WINOGRAD_F4, "forward"):
        for case in (CASES[9], CASES[10], CASES[0]):
            _, specs, details = plan(Pass.FORWARD, case.geometry, np.float32)
            channels_in, channels_out = case.c_in, case.c_out
            _, rows, tile_channels = tiles.forward_tile(channels_out)
            in_place = channels_in == channels_out == tile_channels <= 32
            if in_place:
                assert details[0] == rows, case
            assert ("m" in dict((name, shape) for name, shape, _ in specs)) == (not in_place), case


@pytest.mark.parametrize("columns", [4, 2])
def test_f4_matrices_give_the_convolution_exactly(columns):
    """In float64, A^T [(G g G'^T) . (B^T d B')] A' is the 4 x `columns` correlation of a 6 x (columns + 2) patch d
    with a 3x3 kernel g: F(4,3)'s matrices down the columns, F(4,3)'s or F(2,3)'s (primed) along the rows."""
    rng = np.random.default_rng(3)
    d, g = rng.standard_normal((6, columns + 2)), rng.standard_normal((3, 3))
    a_t, b_t, kernel = (np.array(winograd_f4.OUTPUT_MATRIX), np.array(winograd_f4.INPUT_MATRIX),
                        winograd_f4.KERNEL_MATRIX)
    across = (a_t, b_t, kernel) if columns == 4 else (np.array(winograd_f4.NARROW_OUTPUT_MATRIX),
                                                      np.array(winograd_f4.NARROW_INPUT_MATRIX),
                                                      winograd_f4.NARROW_KERNEL_MATRIX)
    got = a_t @ ((kernel @ g @ across[2].T) * (b_t @ d @ across[1].T)) @ across[0].T
    want = np.array([[np.sum(d[i:i + 3, j:j + 3] * g) for j in range(columns)] for i in range(4)])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("channels", [16, 32])
def test_f4_error_stays_within_the_tolerance(channels):
    """At ResNet-20's 16- and 32-channel shapes (4 images), standard-normal data: F(4x4)'s largest error against
    float64 stays under 1e-4 at 16 channels and 2e-4 at 32 (measured over 3 seeds: 0.66-0.80e-4 and 1.3-1.5e-4;
    F(2x2) 1.0-1.8e-5; the points 0, +-1, +-2 gave 2.7e-4 and 3.5e-4 at 8 images)."""
    size = 32 if channels == 16 else 16
    case = ConvCase(4, size, size, channels, channels, padding=1)
    assert case.selected("forward") is Variant.WINOGRAD_F4
    data = arrays(case)
    error = np.abs(run_pass("forward", case, data, bias=False)
                   - expected_pass("forward", case, data, bias=False)).max()
    assert error < 1e-4 * channels / 16


@pytest.mark.parametrize("channels", [64, 128])
def test_f4x2_error_is_about_the_direct_sums(channels):
    """The reductions F(4x2) takes (select.WINOGRAD_F4X2_MAX_REDUCTION), standard-normal data, 4 images: its largest
    error against float64 stays within 1.5x the direct variant's (measured over 3 seeds: 0.87-1.16x at 64 and 128
    channels, 0.9-2.3e-4; F(4x4) 2.1-3.2x, F(2x2) 0.3-0.6x)."""
    case = ConvCase(4, 16, 16, channels, 64, padding=1)
    assert case.selected("forward") is Variant.WINOGRAD_F4X2
    data = arrays(case)
    want = expected_pass("forward", case, data, bias=False)
    error = np.abs(run_pass("forward", case, data, bias=False) - want).max()
    with forced(Variant.DIRECT, "forward"):
        direct_error = np.abs(run_pass("forward", case, data, bias=False) - want).max()
    assert error < 1.5 * direct_error
