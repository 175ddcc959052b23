"""Winograd F(2x2, 3x3) and F(4x4, 3x3) forward and backward-input (kernels/conv2d_winograd.py,
conv2d_winograd4.py) against kernels/reference.py."""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba.kernels import conv2d, conv2d_winograd, conv2d_winograd4, conv2d_workspace
from cnnnumba import reference
from cnnnumba.kernels.conv2d_workspace import carve, specs_bytes

# (batch, height, width, C_in, C_out, padding): odd and even output sizes, images of fewer tiles than one GEMM
# register tile (1x1 and 2x3 outputs), padding 0/1/2, batch 1, 16/32/48/64/80 channels (48 and 80 make the
# last channel tile overlap its neighbour), and images wider than one job's tiles (see _small_jobs)
CASES = [
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
]

# Measured over these cases against a float64 reference: the largest |Winograd - exact| was 3.3e-5, 3.3e-7 of the
# largest |output| (inputs and weights standard normal, outputs up to ~96), about what float32 accumulation of
# 144-576 products gives. F(2x2, 3x3) adds the transforms' additions (coefficients +-1 and +-1/2, exact in binary)
# to the products' rounding: a few ulps of the output scale. test_conv2d.py's float32 tolerance (2e-4 + 2e-4 of
# the value) is 6x that worst case and still far below what a wrong tap, tile or channel gives (errors of O(1)).
# F(4x4, 3x3) (transform coefficients up to 8, 36 products per output pixel summed back) errs 5-8x more: up to
# 1.5e-4 with the 16-32-channel reductions it takes, 1.8-2.4e-4 with 64 (which take F(2x2): see
# conv2d_winograd4.MAX_REDUCTION); test_f4_error_stays_within_the_tolerance measures it at the ResNet-20 shapes.
TOLERANCE = dict(rtol=2e-4, atol=2e-4)

VARIANTS = {"F2": conv2d_winograd, "F4": conv2d_winograd4}


@pytest.fixture(params=VARIANTS)
def winograd(request):
    """The Winograd module a test runs: F(2x2) or F(4x4)."""
    return VARIANTS[request.param]


def _arrays(case, seed=0):
    batch, height, width, channels_in, channels_out, pad = case
    out_h, out_w = height + 2 * pad - 2, width + 2 * pad - 2
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, height, width, channels_in), dtype=np.float32)
    weight = rng.standard_normal((3, 3, channels_in, channels_out), dtype=np.float32)
    bias = rng.standard_normal(channels_out, dtype=np.float32)
    grad_out = rng.standard_normal((batch, out_h, out_w, channels_out), dtype=np.float32)
    return x, weight, bias, grad_out


def _forward(winograd, x, weight, bias, pad, relu=False, workspace=None):
    out = np.empty((x.shape[0], x.shape[1] + 2 * pad - 2, x.shape[2] + 2 * pad - 2, weight.shape[3]), np.float32)
    specs, details = winograd.plan(np.dtype(np.float32), x.shape, weight.shape[3], out.shape[1:3],
                                   conv2d_workspace.WORKSPACE_BYTES, False)
    return winograd.forward(x, weight, bias, out, (pad, pad), relu, carve(workspace, specs), details)


def _backward_input(winograd, grad_out, weight, x_shape, pad, workspace=None):
    out = np.empty(x_shape, np.float32)
    specs, details = winograd.plan(np.dtype(np.float32), grad_out.shape, weight.shape[2], x_shape[1:3],
                                   conv2d_workspace.WORKSPACE_BYTES, True)
    return winograd.backward_input(grad_out, weight, out, (pad, pad), carve(workspace, specs), details)


def _reference_forward(x, weight, bias, pad, relu=False):
    out = np.empty((x.shape[0], x.shape[1] + 2 * pad - 2, x.shape[2] + 2 * pad - 2, weight.shape[3]), np.float32)
    return reference.conv2d_forward(x, weight, bias, out, padding=(pad, pad), relu=relu)


@pytest.fixture(params=[False, True], ids=["one-job-per-image", "small-jobs"])
def job_size(request, monkeypatch):
    """Small jobs: 16 tiles (the least) per job, so images split into several jobs of unequal tile counts."""
    if request.param:
        monkeypatch.setattr(conv2d_winograd, "JOB_BYTES", 1)
    return request.param


@pytest.mark.parametrize("case", CASES)
def test_forward_matches_reference(case, job_size, winograd):
    x, weight, bias, _ = _arrays(case)
    pad = case[5]
    for b in (bias, None):
        for relu in (False, True):
            np.testing.assert_allclose(_forward(winograd, x, weight, b, pad, relu),
                                       _reference_forward(x, weight, b, pad, relu), **TOLERANCE)


@pytest.mark.parametrize("case", CASES)
def test_backward_input_matches_reference(case, job_size, winograd):
    x, weight, _, grad_out = _arrays(case)
    pad = case[5]
    want = reference.conv2d_backward_input(grad_out, weight, np.empty_like(x), padding=(pad, pad))
    np.testing.assert_allclose(_backward_input(winograd, grad_out, weight, x.shape, pad), want, **TOLERANCE)


def test_small_jobs_split_images_unevenly(monkeypatch):
    """The small-jobs runs above really split images: CASES[7]'s 10 x 13 outputs are 5 x 7 tiles, in 3 jobs of
    11, 12 and 12 tiles (not whole 4-tile GEMM groups), each with room for 16."""
    monkeypatch.setattr(conv2d_winograd, "JOB_BYTES", 1)
    specs, (bands, _) = conv2d_winograd.plan(np.dtype(np.float32), (1, 10, 13, 32), 80, (10, 13), 1 << 25, False)
    assert bands == 3 and dict((name, shape) for name, shape, _ in specs)["v"][2] == 16


@pytest.mark.parametrize("pads", [(0, 2, 2, 1), (2, 0, 1, 2), (1, 2, 0, 0)])
def test_asymmetric_padding_matches_reference(pads, winograd):
    """Padding (top, bottom, left, right): only top and left reach the kernels, the output size implies the rest;
    the backward-input pads grad_out by 2 - top and 2 - left and reads zeros past its bottom and right edges."""
    top, bottom, left, right = pads
    x, weight, bias, _ = _arrays((2, 7, 9, 32, 48, 0))
    out_hw = (7 + top + bottom - 2, 9 + left + right - 2)
    grad_out = np.random.default_rng(1).standard_normal((2, *out_hw, 48), dtype=np.float32)
    f32 = np.dtype(np.float32)
    specs, details = winograd.plan(f32, x.shape, 48, out_hw, conv2d_workspace.WORKSPACE_BYTES, False)
    got = winograd.forward(x, weight, bias, np.empty_like(grad_out), (top, left), True, carve(None, specs), details)
    want = reference.conv2d_forward(x, weight, bias, np.empty_like(grad_out), padding=(top, left), relu=True)
    np.testing.assert_allclose(got, want, **TOLERANCE)
    specs, details = winograd.plan(f32, grad_out.shape, 32, x.shape[1:3], conv2d_workspace.WORKSPACE_BYTES, True)
    got = winograd.backward_input(grad_out, weight, np.empty_like(x), (top, left), carve(None, specs), details)
    want = reference.conv2d_backward_input(grad_out, weight, np.empty_like(x), padding=(top, left))
    np.testing.assert_allclose(got, want, **TOLERANCE)


def _dirty_workspace(size):
    """size bytes that start 3 bytes past a cache line, every float in them NaN."""
    return np.full(size + 67, 0xFF, np.uint8)[3:3 + size]


@pytest.mark.parametrize("case", [CASES[0], CASES[4], CASES[5]])
def test_a_given_workspace_gives_the_same_results(case, winograd):
    """A workspace of exactly the planned size, misaligned and full of NaN, gives the values of a fresh one; one
    byte less is refused."""
    x, weight, bias, grad_out = _arrays(case)
    pad = case[5]
    out_hw = grad_out.shape[1:3]
    for flipped, run in ((False, lambda ws: _forward(winograd, x, weight, bias, pad, True, ws)),
                         (True, lambda ws: _backward_input(winograd, grad_out, weight, x.shape, pad, ws))):
        source, channels_out = (grad_out, weight.shape[2]) if flipped else (x, weight.shape[3])
        size = specs_bytes(winograd.plan(np.dtype(np.float32), source.shape, channels_out,
                                         x.shape[1:3] if flipped else out_hw, conv2d_workspace.WORKSPACE_BYTES,
                                         flipped)[0])
        np.testing.assert_array_equal(run(_dirty_workspace(size)), run(None))
        with pytest.raises(ValueError, match="workspace of"):
            run(np.empty(size - 1, np.uint8))


@pytest.mark.parametrize("case", [CASES[4], CASES[7]])
def test_results_do_not_depend_on_thread_count(case, job_size, winograd):
    x, weight, bias, grad_out = _arrays(case)
    saved = cn.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            cn.set_num_threads(threads)
            results.append((_forward(winograd, x, weight, bias, case[5], True),
                            _backward_input(winograd, grad_out, weight, x.shape, case[5])))
    finally:
        cn.set_num_threads(saved)
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def _assert_same_non_finite(got, want):
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, **TOLERANCE)  # infinities equal, with their sign


# an interior pixel, the first and last pixels of the image, a pixel on the right edge of an odd-sized output
POSITIONS = {"interior": lambda h, w: (h // 2, w // 2), "top-left": lambda h, w: (0, 0),
             "bottom-right": lambda h, w: (h - 1, w - 1), "right": lambda h, w: (h // 2, w - 1)}


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("where", POSITIONS)
@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[6]])
def test_non_finite_inputs_give_what_the_direct_sum_gives(case, where, value, winograd):
    """inf - inf inside the transforms turns an inf the direct sum keeps into NaN: tiles whose outputs are not
    all finite are recomputed directly, so inf stays inf (with its sign), NaN stays NaN, and the rest is
    untouched. With an inf at an interior pixel the reference has infinite outputs the plain Winograd sums would
    have made NaN."""
    x, weight, bias, grad_out = _arrays(case)
    pad = case[5]
    x[0, *POSITIONS[where](*x.shape[1:3]), 1] = value
    grad_out[-1, *POSITIONS[where](*grad_out.shape[1:3]), 2] = value
    for relu in (False, True):
        want = _reference_forward(x, weight, bias, pad, relu)
        assert np.isfinite(want).any()
        _assert_same_non_finite(_forward(winograd, x, weight, bias, pad, relu), want)
        if not np.isnan(value) and where == "interior" and not relu:
            assert np.isinf(want).any()
    want = reference.conv2d_backward_input(grad_out, weight, np.empty_like(x), padding=(pad, pad))
    _assert_same_non_finite(_backward_input(winograd, grad_out, weight, x.shape, pad), want)


def _direct_passes(monkeypatch, x, weight, bias, grad_out, pad):
    """The forward and backward-input of the register-tiled direct path, which Winograd replaces."""
    monkeypatch.setattr(conv2d, "uses_winograd", lambda *args: False)
    options = dict(stride=(1, 1), padding=(pad, pad), dilation=(1, 1), groups=1)
    try:
        conv2d._forward_plan.cache_clear()
        conv2d._backward_input_plan.cache_clear()
        assert conv2d._plan("forward", np.float32, x.shape, weight.shape, grad_out.shape, **options)[0] == "fast"
        return (conv2d.conv2d_forward(x, weight, bias, np.empty_like(grad_out), **options),
                conv2d.conv2d_backward_input(grad_out, weight, np.empty_like(x), **options))
    finally:
        conv2d._forward_plan.cache_clear()
        conv2d._backward_input_plan.cache_clear()


@pytest.mark.parametrize("value", [np.inf, np.nan])
def test_a_non_finite_weight_gives_what_the_direct_path_gives(value, monkeypatch, winograd):
    """A whole output channel turns non-finite; padding taps multiply the inf by zero (NaN), as the direct
    path's padded strips do (the reference's backward-input never forms those products, so it is not the
    yardstick here)."""
    x, weight, bias, grad_out = _arrays(CASES[4])
    weight[1, 2, 3, 4] = value
    want = _direct_passes(monkeypatch, x, weight, bias, grad_out, 1)
    assert not np.isfinite(want[0]).all() and not np.isfinite(want[1]).all()
    _assert_same_non_finite(_forward(winograd, x, weight, bias, 1), want[0])
    _assert_same_non_finite(_backward_input(winograd, grad_out, weight, x.shape, 1), want[1])


def test_the_conv2d_entry_points_take_the_winograd_path_and_size_its_workspace():
    """A 3x3 stride-1 layer the rule picks runs through conv2d_forward / conv2d_backward_input on this path, with
    a workspace of conv2d_workspace_bytes, and matches the reference; a layer that breaks any condition does not."""
    x, weight, bias, grad_out = _arrays((4, 16, 16, 64, 64, 1))
    options = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)
    for name in ("forward", "backward_input"):
        assert conv2d._plan(name, np.float32, x.shape, weight.shape, grad_out.shape, **options)[0] == "winograd"
    ws = _dirty_workspace(conv2d.conv2d_workspace_bytes("forward", x.shape, weight.shape, grad_out.shape,
                                                        np.float32, **options))
    got = conv2d.conv2d_forward(x, weight, bias, np.empty_like(grad_out), relu=True, workspace=ws, **options)
    np.testing.assert_allclose(got, _reference_forward(x, weight, bias, 1, True), **TOLERANCE)
    ws = _dirty_workspace(conv2d.conv2d_workspace_bytes("backward_input", x.shape, weight.shape, grad_out.shape,
                                                        np.float32, **options))
    got = conv2d.conv2d_backward_input(grad_out, weight, np.empty_like(x), workspace=ws, **options)
    np.testing.assert_allclose(got, reference.conv2d_backward_input(grad_out, weight, np.empty_like(x),
                                                                    padding=(1, 1)), **TOLERANCE)
    dtype, shape = np.float32, (3, 3, 64, 64)
    assert conv2d.uses_winograd(dtype, shape, (1, 1), (1, 1), (1, 1), 1)
    for args in ((np.float64, shape, (1, 1), (1, 1), (1, 1), 1), (dtype, shape, (2, 2), (1, 1), (1, 1), 1),
                 (dtype, shape, (1, 1), (1, 1), (2, 2), 1), (dtype, shape, (1, 1), (3, 3), (1, 1), 1),
                 (dtype, shape, (1, 1), (1, 1), (1, 1), 2), (dtype, (3, 3, 24, 64), (1, 1), (1, 1), (1, 1), 1),
                 (dtype, (3, 3, 64, 40), (1, 1), (1, 1), (1, 1), 1),
                 (dtype, (5, 5, 64, 64), (1, 1), (1, 1), (1, 1), 1)):
        assert not conv2d.uses_winograd(*args), args


def test_f4_runs_16_and_32_channel_passes_in_place_in_jobs_of_one_register_tile():
    """The in-place CASES really are: no m scratch, jobs of 16 (16 channels) or 8 (32 channels) tiles; a pass whose
    channel counts differ keeps m and shares each image's tiles evenly."""
    f32 = np.dtype(np.float32)
    for case, bands, band_tiles in ((CASES[9], 2, 16), (CASES[10], 2, 8), (CASES[0], 1, 0)):
        batch, height, width, channels_in, channels_out, pad = case
        out_hw = (height + 2 * pad - 2, width + 2 * pad - 2)
        specs, details = conv2d_winograd4.plan(f32, (batch, height, width, channels_in), channels_out, out_hw,
                                               conv2d_workspace.WORKSPACE_BYTES, False)
        assert (details[0], details[2]) == (bands, band_tiles)
        assert ("m" in dict((name, shape) for name, shape, _ in specs)) == (band_tiles == 0)


def test_f4_matrices_give_the_convolution_exactly():
    """In float64, A^T [(G g G^T) . (B^T d B)] A is the 4x4 correlation of a 6x6 patch d with a 3x3 kernel g."""
    rng = np.random.default_rng(3)
    d, g = rng.standard_normal((6, 6)), rng.standard_normal((3, 3))
    a_t, b_t, kernel = (np.array(conv2d_winograd4.OUTPUT_MATRIX), np.array(conv2d_winograd4.INPUT_MATRIX),
                        conv2d_winograd4.KERNEL_MATRIX)
    got = a_t @ ((kernel @ g @ kernel.T) * (b_t @ d @ b_t.T)) @ a_t.T
    want = np.array([[np.sum(d[i:i + 3, j:j + 3] * g) for j in range(4)] for i in range(4)])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def _exact_forward(x, weight, pad):
    x64 = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out_h, out_w = x64.shape[1] - 2, x64.shape[2] - 2
    return sum(x64[:, i:i + out_h, j:j + out_w] @ weight[i, j].astype(np.float64) for i in range(3) for j in range(3))


@pytest.mark.parametrize("channels", [16, 32])
def test_f4_error_stays_within_the_tolerance(channels):
    """At ResNet-20's 16- and 32-channel shapes (4 images), standard-normal data: F(4x4)'s largest error against
    float64 stays under 1e-4 at 16 channels and 2e-4 at 32 (measured over 3 seeds: 0.66-0.80e-4 and 1.3-1.5e-4;
    F(2x2) 1.0-1.8e-5; the points 0, +-1, +-2 gave 2.7e-4 and 3.5e-4 at 8 images)."""
    size = 32 if channels == 16 else 16
    x, weight, _, _ = _arrays((4, size, size, channels, channels, 1))
    error = np.abs(_forward(conv2d_winograd4, x, weight, None, 1) - _exact_forward(x, weight, 1)).max()
    assert error < 1e-4 * channels / 16


def test_the_conv2d_entry_points_take_f4_for_reductions_up_to_32_channels():
    """The forward reduces over C_in, the backward-input over C_out: each pass takes F(4x4) while its reduction is
    at most conv2d_winograd4.MAX_REDUCTION channels, F(2x2) beyond."""
    options = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)
    for channels_in, channels_out, forward, backward_input in ((16, 16, "winograd4", "winograd4"),
                                                               (32, 64, "winograd4", "winograd"),
                                                               (64, 32, "winograd", "winograd4"),
                                                               (64, 64, "winograd", "winograd")):
        x_shape, weight_shape, out_shape = (2, 8, 8, channels_in), (3, 3, channels_in, channels_out), \
            (2, 8, 8, channels_out)
        assert conv2d._plan("forward", np.float32, x_shape, weight_shape, out_shape, **options)[0] == forward
        assert conv2d._plan("backward_input", np.float32, x_shape, weight_shape, out_shape,
                            **options)[0] == backward_input
    x, weight, bias, grad_out = _arrays((2, 9, 10, 16, 32, 1))
    got = conv2d.conv2d_forward(x, weight, bias, np.empty_like(grad_out), relu=True, **options)
    np.testing.assert_allclose(got, _reference_forward(x, weight, bias, 1, True), **TOLERANCE)
    got = conv2d.conv2d_backward_input(grad_out, weight, np.empty_like(x), **options)
    np.testing.assert_allclose(got, reference.conv2d_backward_input(grad_out, weight, np.empty_like(x),
                                                                    padding=(1, 1)), **TOLERANCE)
