"""conv2d kernels (general and fast paths) against their NumPy twins in kernels/reference.py."""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import functional as F
from cnnnumba import shapes
from cnnnumba.kernels import conv2d as kernels
from cnnnumba import reference
from tests.helpers import compare_with_torch, requires_torch, torch

# (batch, height, width, C_in, C_out, (kH, kW), stride, (pad_top, pad_bottom, pad_left, pad_right), dilation, groups)
CASES = [
    (2, 7, 6, 3, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (1, 5, 5, 2, 3, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    (2, 9, 8, 3, 2, (2, 2), (3, 3), (0, 0, 0, 0), (1, 1), 1),            # stride > kernel
    (1, 6, 9, 2, 5, (2, 4), (2, 1), (1, 1, 0, 2), (1, 1), 1),            # non-square kernel, asymmetric padding
    (2, 9, 9, 2, 3, (3, 3), (1, 2), (2, 2, 2, 2), (2, 2), 1),            # dilation
    (2, 8, 7, 4, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2),            # groups
    (2, 7, 7, 5, 5, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 5),            # depthwise
    (1, 6, 6, 3, 6, (3, 2), (1, 1), (0, 1, 1, 0), (1, 2), 3),            # channel multiplier 2, asymmetric pad
    (1, 5, 4, 2, 2, (2, 2), (1, 1), (1, 0, 0, 1), (1, 1), 1),            # "same"-style bottom/right pad
    (3, 11, 13, 3, 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),         # fast-path shapes (odd width)
    (2, 10, 12, 16, 48, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (2, 9, 17, 32, 40, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (1, 12, 12, 8, 32, (5, 5), (2, 2), (2, 2, 2, 2), (1, 1), 1),         # fast-path shape, stride 2
    (1, 10, 11, 9, 33, (3, 3), (1, 1), (2, 1, 1, 2), (2, 1), 1),         # fast-path shape, dilation, asym pad
    (2, 8, 8, 16, 32, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    (1, 9, 10, 32, 32, (3, 2), (1, 1), (1, 0, 0, 1), (2, 1), 1),         # fast backward-input, dilation, asym
    (2, 6, 9, 40, 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),          # fast paths, overlapping edge tiles
    (2, 9, 12, 2, 32, (3, 3), (2, 1), (1, 0, 2, 1), (1, 2), 1),          # few channels, width dilation 2
    (2, 9, 18, 3, 64, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),          # few channels, stride 2: kW taps folded
    (3, 5, 9, 32, 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),          # several images per weight-grad chunk
    (2, 6, 17, 16, 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),         # 16 channels: narrow tiles, edge tile
    (1, 5, 20, 24, 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),         # narrow tiles, overlapping channel tile
    (1, 6, 32, 16, 32, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),         # stride 2: backward-input by phases
    (2, 7, 17, 32, 64, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),         # stride 2, odd sizes: unequal phases
    (2, 6, 18, 32, 64, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1),         # 1x1 stride 2: phases without taps
    (1, 9, 10, 32, 32, (3, 2), (3, 1), (2, 2, 2, 2), (1, 1), 1),         # padding past the kernel, stride 3
    (1, 5, 10, 8, 96, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),          # 4 x 64 tiles: channel overlap, edge tile
    (2, 7, 35, 16, 32, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1),         # 1x1 path: odd sizes, narrow edge tiles
    (1, 9, 20, 32, 96, (1, 1), (3, 2), (0, 0, 0, 0), (1, 1), 1),         # 1x1 path: stride 3x2, 4 x 64 tiles overlap
    (2, 5, 17, 16, 16, (1, 1), (1, 1), (0, 0, 0, 0), (2, 2), 1),         # 1x1 path: stride 1, dilation ignored
    (2, 6, 34, 32, 64, (1, 1), (2, 2), (1, 1, 1, 1), (1, 1), 1),         # 1x1 padded: phases without taps
]
FAST_FORWARD = [CASES[i] for i in (9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29,
                                    30)]
FAST_BACKWARD_INPUT = [CASES[i] for i in (11, 15, 16, 19, 20, 21, 22, 23, 24, 25, 27, 28, 29, 30)]
FAST_BACKWARD_WEIGHT = [CASES[i] for i in (9, 10, 12, 14, 15, 16, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29,
                                           30)]
# 1x1 kernels without padding whose rows hold whole tiles: every pass on the 1x1 path
POINTWISE = [CASES[i] for i in (24, 27, 28, 29)]


def _geometry(case):
    batch, height, width, cin, cout, kernel, stride, pad, dilation, groups = case
    out_h = shapes.conv_output_size(height, kernel[0], stride[0], pad[0], pad[1], dilation[0])
    out_w = shapes.conv_output_size(width, kernel[1], stride[1], pad[2], pad[3], dilation[1])
    return (batch, height, width, cin), (*kernel, cin // groups, cout), (batch, out_h, out_w, cout)


def _arrays(case, dtype, seed=0):
    x_shape, w_shape, y_shape = _geometry(case)
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in (x_shape, w_shape, (w_shape[3],), y_shape)]


def _options(case):
    _, _, _, _, _, _, stride, pad, dilation, groups = case
    return dict(stride=stride, padding=(pad[0], pad[2]), dilation=dilation, groups=groups)


def _tolerance(dtype):
    return dict(rtol=2e-4, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_forward_matches_reference(case, dtype):
    x, w, b, y = _arrays(case, dtype)
    for bias in (b, None):
        got = kernels.conv2d_forward(x, w, bias, np.empty_like(y), **_options(case))
        want = reference.conv2d_forward(x, w, bias, np.empty_like(y), **_options(case))
        np.testing.assert_allclose(got, want, **_tolerance(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_backward_input_matches_reference(case, dtype):
    x, w, _, dy = _arrays(case, dtype)
    got = kernels.conv2d_backward_input(dy, w, np.empty_like(x), **_options(case))
    want = reference.conv2d_backward_input(dy, w, np.empty_like(x), **_options(case))
    np.testing.assert_allclose(got, want, **_tolerance(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_backward_weight_matches_reference(case, dtype):
    x, w, _, dy = _arrays(case, dtype)
    got = kernels.conv2d_backward_weight(x, dy, np.empty_like(w), **_options(case))
    want = reference.conv2d_backward_weight(x, dy, np.empty_like(w), **_options(case))
    np.testing.assert_allclose(got, want, **_tolerance(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_bias_matches_reference(dtype):
    dy = np.random.default_rng(1).standard_normal((3, 5, 7, 6)).astype(dtype)
    got = kernels.conv2d_backward_bias(dy, np.empty(6, dtype))
    np.testing.assert_allclose(got, reference.conv2d_backward_bias(dy, np.empty(6, dtype)), **_tolerance(dtype))


def test_fast_path_cases_take_the_fast_paths():
    """The table above must keep exercising the register-tiled kernels, not only the general ones."""
    for case in CASES:
        x_shape, w_shape, y_shape = _geometry(case)
        options = _options(case)
        assert kernels.uses_fast_forward(np.float32, w_shape, y_shape, options["groups"]) == (case in FAST_FORWARD)
        assert kernels.uses_fast_backward_input(np.float32, w_shape, x_shape, options["stride"], options["padding"],
                                                options["dilation"], options["groups"]) == (case in FAST_BACKWARD_INPUT)
        assert kernels.uses_fast_backward_weight(np.float32, w_shape, options["groups"],
                                                 options["dilation"]) == (case in FAST_BACKWARD_WEIGHT)
        assert not kernels.uses_fast_forward(np.float64, w_shape, y_shape, options["groups"])


@pytest.mark.parametrize("case", POINTWISE)
def test_pointwise_cases_take_the_pointwise_path(case):
    x_shape, w_shape, y_shape = _geometry(case)
    for name in ("forward", "backward_input", "backward_weight"):
        assert kernels._plan(name, np.float32, x_shape, w_shape, y_shape, **_options(case))[0] == "pointwise"
        assert kernels._plan(name, np.float64, x_shape, w_shape, y_shape, **_options(case))[0] != "pointwise"
    assert kernels._plan("forward", np.float32, x_shape, w_shape, y_shape, **_options(CASES[30]))[0] == "fast"


@requires_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", POINTWISE + [CASES[22], CASES[23]])
def test_public_conv2d_on_the_1x1_and_strided_phase_paths_matches_torch(case, dtype):
    """Through F.conv2d (NCHW) in float32 these cases reach the 1x1 kernels and the one-region stride phases."""
    x_shape, w_shape, _ = _geometry(case)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((x_shape[0], x_shape[3], x_shape[1], x_shape[2]))
    weight = rng.standard_normal((w_shape[3], w_shape[2], w_shape[0], w_shape[1]))
    bias = rng.standard_normal(w_shape[3])
    options = _options(case)
    compare_with_torch(lambda *a: F.conv2d(*a, **options), lambda *a: torch.nn.functional.conv2d(*a, **options),
                       [x, weight, bias], dtype=dtype)


@pytest.mark.parametrize("case", [CASES[11], CASES[16], CASES[21], CASES[23], CASES[26], CASES[28]])
def test_forward_reduction_blocks_add_up(case, monkeypatch):
    """Wide layers split the reduction into blocks that accumulate in out; small blocks make these cases do it."""
    monkeypatch.setattr(kernels, "REDUCTION_BLOCK", 8)
    x, w, b, y = _arrays(case, np.float32)
    got = kernels.conv2d_forward(x, w, b, np.empty_like(y), **_options(case))
    np.testing.assert_allclose(got, reference.conv2d_forward(x, w, b, np.empty_like(y), **_options(case)),
                               **_tolerance(np.float32))
    got = kernels.conv2d_backward_input(y, w, np.empty_like(x), **_options(case))
    np.testing.assert_allclose(got, reference.conv2d_backward_input(y, w, np.empty_like(x), **_options(case)),
                               **_tolerance(np.float32))


@pytest.mark.parametrize("case", [CASES[16], CASES[27]])
@pytest.mark.parametrize("offset", [0, 1, 4])
def test_fast_paths_accept_operands_at_any_alignment(offset, case):
    """Weights are copied to a cache-line-aligned buffer when they start elsewhere; grad_out blocks likewise."""
    x, w, b, y = _arrays(case, np.float32)

    def shifted(array):
        buffer = np.empty(array.size + offset, np.float32)
        view = buffer[offset:].reshape(array.shape)
        view[...] = array
        return view

    options = _options(case)
    got = kernels.conv2d_forward(shifted(x), shifted(w), b, np.empty_like(y), **options)
    np.testing.assert_allclose(got, reference.conv2d_forward(x, w, b, np.empty_like(y), **options),
                               **_tolerance(np.float32))
    got = kernels.conv2d_backward_input(shifted(y), shifted(w), np.empty_like(x), **options)
    np.testing.assert_allclose(got, reference.conv2d_backward_input(y, w, np.empty_like(x), **options),
                               **_tolerance(np.float32))
    got = kernels.conv2d_backward_weight(shifted(x), shifted(y), np.empty_like(w), **options)
    np.testing.assert_allclose(got, reference.conv2d_backward_weight(x, y, np.empty_like(w), **options),
                               **_tolerance(np.float32))


def test_non_contiguous_operands_are_accepted():
    case = CASES[0]
    x, w, b, y = _arrays(case, np.float64)
    x_strided = np.asfortranarray(x)
    got = kernels.conv2d_forward(x_strided, w, b, np.empty_like(y), **_options(case))
    np.testing.assert_allclose(got, reference.conv2d_forward(x, w, b, np.empty_like(y), **_options(case)), rtol=1e-12)


@pytest.mark.parametrize("case", [CASES[5], CASES[11], CASES[18], CASES[19], CASES[20], CASES[27], CASES[28]])
def test_weight_and_bias_gradients_do_not_depend_on_thread_count(case):
    x, w, _, dy = _arrays(case, np.float32)
    saved = cn.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            cn.set_num_threads(threads)
            results.append((kernels.conv2d_backward_weight(x, dy, np.empty_like(w), **_options(case)),
                            kernels.conv2d_backward_bias(dy, np.empty(dy.shape[3], np.float32))))
    finally:
        cn.set_num_threads(saved)
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_out_of_bounds_geometry_is_refused():
    x, w, b, y = _arrays(CASES[0], np.float32)
    with pytest.raises(ValueError, match="input channels"):
        kernels.conv2d_forward(x[..., :2], w, b, np.empty_like(y))
    with pytest.raises(ValueError, match="out has shape"):
        kernels.conv2d_forward(x, w, b, np.empty((2, 5, 4, 3), np.float32))


# ---- ReLU in the forward's epilogue ----

# general, groups, fast with edge tiles, narrow, broad, 1x1
RELU_CASES = [CASES[i] for i in (0, 5, 9, 11, 16, 20, 21, 26, 27, 28)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", RELU_CASES)
def test_forward_relu_equals_forward_then_relu(case, dtype):
    x, w, b, y = _arrays(case, dtype)
    got = kernels.conv2d_forward(x, w, b, np.full_like(y, np.nan), relu=True, **_options(case))
    plain = kernels.conv2d_forward(x, w, b, np.empty_like(y), **_options(case))
    np.testing.assert_array_equal(got, np.where(plain < 0, 0, plain))
    assert (got == 0).any() and (got > 0).any()
    np.testing.assert_allclose(got, reference.conv2d_forward(x, w, b, np.empty_like(y), relu=True, **_options(case)),
                               **_tolerance(dtype))


@pytest.mark.parametrize("case", [CASES[11], CASES[16], CASES[26], CASES[28]])
def test_forward_relu_clamps_only_the_last_reduction_block(case, monkeypatch):
    """Blocks after the first add to partial sums in out: a clamp before the last block would lose negatives."""
    monkeypatch.setattr(kernels, "REDUCTION_BLOCK", 8)
    x, w, b, y = _arrays(case, np.float32)
    got = kernels.conv2d_forward(x, w, b, np.empty_like(y), relu=True, **_options(case))
    np.testing.assert_allclose(got, reference.conv2d_forward(x, w, b, np.empty_like(y), relu=True, **_options(case)),
                               **_tolerance(np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_relu_keeps_nan(dtype):
    case = CASES[16] if dtype == np.float32 else CASES[0]
    x, w, b, y = _arrays(case, dtype)
    x[0, 2, 3, 0] = np.nan
    got = kernels.conv2d_forward(x, w, b, np.empty_like(y), relu=True, **_options(case))
    assert np.isnan(got).any()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(reference.conv2d_forward(x, w, b, np.empty_like(y),
                                                                                   **_options(case))))


# ---- workspaces ----

PASSES = ("forward", "backward_input", "backward_weight", "backward_bias")


def _run_pass(name, case, arrays, out, workspace):
    x, w, b, y = arrays
    options = _options(case)
    if name == "forward":
        return kernels.conv2d_forward(x, w, b, out, workspace=workspace, **options)
    if name == "backward_input":
        return kernels.conv2d_backward_input(y, w, out, workspace=workspace, **options)
    if name == "backward_weight":
        return kernels.conv2d_backward_weight(x, y, out, workspace=workspace, **options)
    return kernels.conv2d_backward_bias(y, out, workspace=workspace)


def _pass_out(name, arrays):
    x, w, b, y = arrays
    return np.empty_like({"forward": y, "backward_input": x, "backward_weight": w, "backward_bias": b}[name])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", [CASES[i] for i in (0, 5, 12, 17, 18, 22, 23, 26, 27, 28)])
def test_a_given_workspace_gives_the_same_results_and_is_reused(case, dtype):
    """Each pass in a workspace of exactly conv2d_workspace_bytes, at a misaligned start, dirty from other passes."""
    arrays = _arrays(case, dtype)
    x_shape, w_shape, y_shape = _geometry(case)
    sizes = {name: kernels.conv2d_workspace_bytes(name, x_shape, w_shape, y_shape, dtype, **_options(case))
             for name in PASSES}
    shared = np.full(max(sizes.values()) + 1, 0xFF, np.uint8)[1:]  # NaN-like garbage, 1 byte past alignment
    for name in PASSES:
        want = _run_pass(name, case, arrays, _pass_out(name, arrays), None)
        got = _run_pass(name, case, arrays, _pass_out(name, arrays), shared[:sizes[name]])
        np.testing.assert_array_equal(got, want)


def test_a_workspace_too_small_or_of_the_wrong_kind_is_refused():
    case = CASES[16]
    arrays = _arrays(case, np.float32)
    x_shape, w_shape, y_shape = _geometry(case)
    size = kernels.conv2d_workspace_bytes("forward", x_shape, w_shape, y_shape, np.float32, **_options(case))
    with pytest.raises(ValueError, match=f"workspace of {size - 1} bytes, but this pass needs {size}"):
        _run_pass("forward", case, arrays, _pass_out("forward", arrays), np.empty(size - 1, np.uint8))
    with pytest.raises(TypeError, match="workspace must be a writeable 1-D C-contiguous uint8 array"):
        _run_pass("forward", case, arrays, _pass_out("forward", arrays), np.empty(size, np.float32))


def test_weight_gradient_partials_shrink_under_a_small_budget_and_stay_thread_independent(monkeypatch):
    """With a budget that holds two partials instead of the usual count, the result still matches the reference
    and is bit-identical on 1 and 2 threads (the chunk count depends on the shape and the budget only)."""
    case = CASES[19]
    x, w, _, dy = _arrays(case, np.float32)
    x_shape, w_shape, y_shape = _geometry(case)
    options = _options(case)
    partial = 3 * 96 * 32 * 4  # kH x (kW * C_in) x C_out, the folded layout
    monkeypatch.setattr(kernels.conv2d_workspace, "WORKSPACE_BYTES", 2 * (2 * partial + 256))
    path, specs, (shape, chunks, band_rows) = kernels._plan("backward_weight", np.float32, x_shape, w_shape, y_shape,
                                                            **options)
    assert path == "fast" and chunks == 2
    saved = cn.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            cn.set_num_threads(threads)
            results.append(kernels.conv2d_backward_weight(x, dy, np.empty_like(w), **options))
    finally:
        cn.set_num_threads(saved)
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_allclose(results[0], reference.conv2d_backward_weight(x, dy, np.empty_like(w), **options),
                               **_tolerance(np.float32))


def test_backward_weight_strips_hold_bands_of_rows(monkeypatch):
    """Tall images are padded into a chunk's strip a band of rows at a time; the result does not change."""
    case = CASES[20]
    x, w, _, dy = _arrays(case, np.float32)
    monkeypatch.setattr(kernels, "uses_winograd", lambda *args: False)  # the direct tiles' strips
    kernels._backward_weight_plan.cache_clear()
    want = kernels.conv2d_backward_weight(x, dy, np.empty_like(w), **_options(case))
    monkeypatch.setattr(kernels, "WEIGHT_STRIP_BYTES", 1)  # one output row per band
    kernels._backward_weight_plan.cache_clear()
    try:
        got = kernels.conv2d_backward_weight(x, dy, np.empty_like(w), **_options(case))
    finally:
        kernels._backward_weight_plan.cache_clear()
    np.testing.assert_array_equal(got, want)
