"""The Winograd F(2x2, 3x3) and F(4x4, 3x3) weight gradients (kernels/conv2d_winograd_weight.py,
conv2d_winograd4_weight.py, reached through conv2d.py) against kernels/reference.py, their workspace, thread
independence, and inf/NaN inputs."""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba.kernels import conv2d as kernels
from cnnnumba.kernels import conv2d_winograd4
from cnnnumba.kernels import conv2d_winograd4_weight
from cnnnumba.kernels import conv2d_winograd_weight as winograd
from cnnnumba import reference
from cnnnumba.kernels.conv2d_workspace import WORKSPACE_BYTES, specs_bytes

# (batch, height, width, C_in, C_out, padding): odd and even output sizes, padding 0/1/2, batch 1, C 16/32/48/64
CASES = [
    (2, 8, 8, 16, 16, (1, 1)),      # even output, one 16 x 16 tile kind
    (1, 7, 9, 16, 32, (1, 1)),      # batch 1, odd output height: the last tile row hangs over the edge
    (2, 6, 5, 32, 16, (0, 0)),      # no padding, odd output width
    (1, 5, 7, 16, 48, (2, 2)),      # padding 2: outputs wider than the input
    (3, 9, 10, 48, 64, (1, 0)),     # 4 x 64 tiles, unequal padding
    (2, 11, 6, 64, 32, (2, 1)),     # odd output, 8 x 32 tiles
    (1, 3, 3, 16, 16, (0, 0)),      # a single output pixel: one tile, mostly past the edge
    (5, 12, 12, 32, 64, (1, 1)),    # several chunks
]


@pytest.fixture(params=["F2", "F4"])
def variant(request, monkeypatch):
    """Every layer on F(2x2) or every layer on F(4x4), whatever its channel counts (plans made afresh)."""
    monkeypatch.setattr(winograd, "uses_f4", lambda channels_in, channels_out: request.param == "F4")
    kernels._backward_weight_plan.cache_clear()
    yield request.param
    kernels._backward_weight_plan.cache_clear()


def _arrays(case, seed=0):
    batch, height, width, channels_in, channels_out, padding = case
    out_h, out_w = height + 2 * padding[0] - 2, width + 2 * padding[1] - 2
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, height, width, channels_in)).astype(np.float32)
    grad_out = rng.standard_normal((batch, out_h, out_w, channels_out)).astype(np.float32)
    return x, grad_out, np.empty((3, 3, channels_in, channels_out), np.float32)


def _plan(x, grad_out, out, padding):
    return kernels._plan("backward_weight", np.float32, x.shape, out.shape, grad_out.shape, (1, 1), padding, (1, 1), 1)


def _direct(x, grad_out, padding):
    """The register-tiled direct gradient the Winograd plan carries along (its inf/NaN fallback)."""
    out = np.empty((3, 3, x.shape[3], grad_out.shape[3]), np.float32)
    _, _, (_, specs, details) = _plan(x, grad_out, out, padding)
    kernels._backward_weight_fast(x, grad_out, out, (1, 1), padding, (1, 1), kernels.carve(None, specs), details)
    return out


# Winograd forms each position's sum from transformed values (sums and differences of up to 4 inputs per axis) and
# spreads it back with coefficients 1/2 and 1/4, so its float32 rounding is not the direct products': measured
# against float64, at most 4.1e-7 x max|dW| over CASES, and 0.8-1.2e-6 x max|dW| at the cifar-cnn and ResNet-20
# shapes at batch 64 (the direct tiles: 0.6-1.3e-6 there; sums of 4096-65536 products). The bound, 4e-6 x max|dW|
# plus 2e-4 relative, is 10x what CASES gave and 3x the batch-64 sums, and still fails on any wrong tap, channel or
# edge tile (those err by O(1) x max|dW|). F(4x4) (A's coefficients up to 8, G's 16/15) errs about 3x more: at
# batch 64, 3.0e-6 (64x32x32x16), 3.6e-6 (64x16x16x32) and 3.9e-6 (64x32x32x32) x max|dW|, the layers it takes;
# 5.3e-6 at 64x16x16x64, which it does not take (conv2d_winograd_weight.uses_f4).
def _assert_close(got, want):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=4e-6 * np.abs(want).max())


@pytest.mark.parametrize("case", CASES)
def test_matches_reference(case, variant):
    x, grad_out, out = _arrays(case)
    padding = case[5]
    assert _plan(x, grad_out, out, padding)[0] == "winograd"
    got = kernels.conv2d_backward_weight(x, grad_out, out, padding=padding)
    want = reference.conv2d_backward_weight(x.astype(np.float64), grad_out.astype(np.float64),
                                            np.empty(out.shape), padding=padding)
    _assert_close(got, want)


def test_only_3x3_stride_1_float32_with_whole_channel_blocks_take_it():
    dtype = np.dtype(np.float32)
    assert kernels.uses_winograd(dtype, (3, 3, 32, 64), (1, 1), (1, 1), (1, 1), 1)
    for weight_shape, stride, dilation, groups in [((3, 3, 24, 32), (1, 1), (1, 1), 1),
                                                   ((3, 3, 32, 40), (1, 1), (1, 1), 1),
                                                   ((3, 3, 32, 32), (2, 2), (1, 1), 1),
                                                   ((3, 3, 32, 32), (1, 1), (2, 2), 1),
                                                   ((3, 3, 16, 32), (1, 1), (1, 1), 2),
                                                   ((5, 5, 32, 32), (1, 1), (1, 1), 1)]:
        assert not kernels.uses_winograd(dtype, weight_shape, stride, (1, 1), dilation, groups)
    assert not kernels.uses_winograd(np.dtype(np.float64), (3, 3, 32, 64), (1, 1), (1, 1), (1, 1), 1)
    assert not kernels.uses_winograd(dtype, (3, 3, 32, 64), (1, 1), (3, 3), (1, 1), 1)  # padding past the kernel


@pytest.mark.parametrize("case", [CASES[1], CASES[4], CASES[7]])
def test_a_given_workspace_gives_the_same_result(case, variant):
    """A workspace of exactly conv2d_workspace_bytes, one byte past a cache line, full of NaN-like garbage."""
    x, grad_out, out = _arrays(case)
    padding = case[5]
    size = kernels.conv2d_workspace_bytes("backward_weight", x.shape, out.shape, grad_out.shape, np.float32,
                                          padding=padding)
    assert size <= WORKSPACE_BYTES
    workspace = np.full(size + 1, 0xFF, np.uint8)[1:]
    want = kernels.conv2d_backward_weight(x, grad_out, out.copy(), padding=padding)
    got = kernels.conv2d_backward_weight(x, grad_out, out, padding=padding, workspace=workspace)
    np.testing.assert_array_equal(got, want)


def test_the_plan_leaves_room_for_the_direct_fallback(variant):
    for case in CASES:
        x, grad_out, out = _arrays(case)
        path, specs, (_, direct_specs, _) = _plan(x, grad_out, out, case[5])
        assert path == "winograd" and specs_bytes(specs) >= specs_bytes(direct_specs)


def test_bit_identical_on_1_and_2_threads(variant):
    case = CASES[7]
    x, grad_out, out = _arrays(case)
    chunks = _plan(x, grad_out, out, case[5])[1][0][1][0]
    assert chunks == 2  # the chunk split, not the thread count, decides which tiles each partial sums
    saved = cn.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            cn.set_num_threads(threads)
            results.append(kernels.conv2d_backward_weight(x, grad_out, out.copy(), padding=case[5]))
    finally:
        cn.set_num_threads(saved)
    np.testing.assert_array_equal(results[0], results[1])


def test_the_f4_inverse_transform_is_g_transposed_s_g():
    # dW = G^T s G for each (C_in, C_out) pair, s the 6 x 6 products summed over tiles, formed in float64 and
    # rounded once: against the matrix product in float64 it may differ by that one rounding only
    rng = np.random.default_rng(3)
    summed = rng.standard_normal((6, 6, 16, 32)).astype(np.float32)
    out = np.empty((3, 3, 16, 32), np.float32)
    conv2d_winograd4_weight.inverse_transform_weight_grad(summed, out)
    g = conv2d_winograd4.KERNEL_MATRIX
    expected = np.einsum("ia,ijkl,jb->abkl", g, summed.astype(np.float64), g)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())


def test_chunks_follow_the_tile_count_and_stay_within_the_budget():
    dtype = np.dtype(np.float32)
    # 32 x 32 outputs: 256 F(2x2) tiles an image at 64 channels, 64 F(4x4) tiles at 16 (TILES_PER_CHUNK each)
    for batch, chunks, channels, positions in ((1, 2, 64, (4, 4)), (16, 8, 64, (4, 4)), (64, 16, 64, (4, 4)),
                                               (16, 2, 16, (6, 6)), (64, 8, 16, (6, 6))):
        specs, _ = winograd.backward_weight_plan(dtype, (batch, 32, 32, channels), (3, 3, channels, channels),
                                                 (batch, 32, 32, channels), (1, 1), WORKSPACE_BYTES)
        assert dict((name, shape) for name, shape, _ in specs)["partials"] == (chunks, *positions, channels, channels)
    # one partial of 16 x 512 x 512 float32 is 16 MiB, half the budget: too large, the direct path runs
    assert winograd.backward_weight_plan(dtype, (1, 8, 8, 512), (3, 3, 512, 512), (1, 8, 8, 512), (1, 1),
                                         WORKSPACE_BYTES) is not None
    assert winograd.backward_weight_plan(dtype, (1, 8, 8, 1024), (3, 3, 1024, 512), (1, 8, 8, 512), (1, 1),
                                         WORKSPACE_BYTES) is None


# (which array, position as fractions of its height and width): interior pixels, the border, the overhanging edge
NON_FINITE_PLACES = [("x", 0.5, 0.5), ("x", 0.0, 0.0), ("x", 1.0, 1.0), ("grad_out", 0.5, 0.5),
                     ("grad_out", 1.0, 1.0), ("grad_out", 0.0, 1.0)]


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("place", NON_FINITE_PLACES)
@pytest.mark.parametrize("case", [CASES[1], CASES[2], CASES[3]])
def test_inf_or_nan_inputs_give_the_direct_gradient(case, place, value, variant):
    """Winograd's differences turn one inf into NaN (inf - inf, inf x 0) at taps where the direct products give
    inf; such a result is recomputed directly, so the NaN and inf entries are the reference's, and the whole
    result is the direct path's, bit for bit, in a workspace of exactly the planned size."""
    x, grad_out, out = _arrays(case)
    padding = case[5]
    name, row, column = place
    target = x if name == "x" else grad_out
    target[-1, round(row * (target.shape[1] - 1)), round(column * (target.shape[2] - 1)), -1] = value
    size = kernels.conv2d_workspace_bytes("backward_weight", x.shape, out.shape, grad_out.shape, np.float32,
                                          padding=padding)
    got = kernels.conv2d_backward_weight(x, grad_out, out, padding=padding,
                                         workspace=np.full(size, 0xFF, np.uint8))
    with np.errstate(invalid="ignore"):
        want = reference.conv2d_backward_weight(x.astype(np.float64), grad_out.astype(np.float64),
                                                np.empty(out.shape), padding=padding)
    assert not np.isfinite(want).all() and np.isfinite(want).any()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)  # infinities equal, with their sign
    np.testing.assert_array_equal(got, _direct(x, grad_out, padding))
