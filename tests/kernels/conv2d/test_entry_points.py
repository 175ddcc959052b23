"""The public conv2d entry points (cnnnumba.kernels.conv2d) on the shared case table, every pass against its NumPy
twin, whichever variant select() picks; what every variant must do alike (ReLU epilogue, any alignment or
layout of the operands, thread-count independence, refusing bad geometry)."""
import numpy as np
import pytest

from cnnnumba import functional as F
from cnnnumba import reference
from cnnnumba.kernels import conv2d as kernels
from cnnnumba.kernels.conv2d import Pass, Variant
from tests.helpers import compare_with_torch, requires_torch, torch
from tests.kernels.conv2d.common import (CASES, POINTWISE_CASES, ConvCase, arrays, assert_close,
                                         assert_conv_then_normalized, case_id, check_passes, expected_pass, forced,
                                         normalized_case_data, on_threads, output_like, run_pass, select_module,
                                         shifted)

DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_every_pass_matches_the_reference(case, dtype):
    case = case.cast(dtype)
    data = arrays(case)
    check_passes(case, data)
    check_passes(case, data, names=("forward",), bias=False)


def test_the_table_reaches_every_variant_of_every_pass():
    """The table keeps exercising each variant select() can pick for the shapes (the Winograd, few-channel and
    1x1 tests add their own shapes)."""
    reached = {name: {case.cast(dtype).selected(name) for case in CASES for dtype in DTYPES}
               for name in ("forward", "backward_input", "backward_weight")}
    V = kernels.Variant
    common = {V.POINTWISE, V.DIRECT, V.GEMM, V.GENERAL, V.DEPTHWISE, V.SMALL_BANDS, V.WINOGRAD_F4, V.WINOGRAD_F2}
    assert reached["forward"] >= common - {V.WINOGRAD_F2} | {V.WINOGRAD_F4}
    assert reached["backward_input"] >= common | {V.SMALL_ROWS}
    assert reached["backward_weight"] >= common | {V.DIRECT_COLUMNS}


@requires_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POINTWISE_CASES + [CASES[22], CASES[23]], ids=case_id)
def test_public_conv2d_on_the_1x1_and_strided_phase_paths_matches_torch(case, dtype):
    """Through F.conv2d (NCHW) in float32 these cases reach the 1x1 kernels and the one-region stride phases."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((case.batch, case.c_in, case.h, case.w))
    weight = rng.standard_normal((case.c_out, case.c_in // case.groups, *case.kernel))
    bias = rng.standard_normal(case.c_out)
    options = case.options
    compare_with_torch(lambda *a: F.conv2d(*a, **options), lambda *a: torch.nn.functional.conv2d(*a, **options),
                       [x, weight, bias], dtype=dtype)


# the direct tiles, the 1x1 tiles, the column weight gradient, Winograd, the few-channel kernels, depthwise
ALIGNMENT_CASES = [CASES[16], CASES[27], ConvCase(2, 12, 10, 3, 16, padding=1), CASES[20], CASES[0], CASES[6]]


@pytest.mark.parametrize("offset", [1, 3, 4])
@pytest.mark.parametrize("case", ALIGNMENT_CASES, ids=case_id)
def test_operands_at_any_alignment_give_the_aligned_results(offset, case):
    """Weights are copied to a cache-line-aligned buffer when they start elsewhere; grad_out blocks likewise; the
    tiles that read activations where they lie load them unaligned: the results are the aligned ones, bit for
    bit."""
    data = arrays(case)
    moved = type(data)(*(shifted(a, offset) for a in data))
    for name in ("forward", "backward_input", "backward_weight"):
        np.testing.assert_array_equal(run_pass(name, case, moved), run_pass(name, case, data), err_msg=name)


def test_non_contiguous_operands_are_accepted():
    for case in (CASES[0].cast(np.float64), ConvCase(3, 9, 9, 6, 16, kernel=5)):
        data = arrays(case)
        strided = data._replace(x=np.asfortranarray(data.x),
                                weight=data.weight[:, ::-1].copy()[:, ::-1])  # a negative-stride view of the same values
        assert not strided.x.flags.c_contiguous and not strided.weight.flags.c_contiguous
        for name in ("forward", "backward_input", "backward_weight"):
            np.testing.assert_array_equal(run_pass(name, case, strided), run_pass(name, case, data), err_msg=name)


@pytest.mark.parametrize("case", [CASES[i] for i in (5, 6, 11, 18, 19, 20, 27, 28)], ids=case_id)
def test_weight_and_bias_gradients_do_not_depend_on_thread_count(case):
    data = arrays(case)
    one, two = on_threads(lambda: [run_pass(name, case, data) for name in ("backward_weight", "backward_bias")])
    for name, a, b in zip(("backward_weight", "backward_bias"), one, two):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_out_of_bounds_geometry_is_refused():
    x, w, b, y = arrays(CASES[0])
    with pytest.raises(ValueError, match="input channels"):
        kernels.conv2d_forward(x[..., :2], w, b, np.empty_like(y))
    with pytest.raises(ValueError, match="out has shape"):
        kernels.conv2d_forward(x, w, b, np.empty((2, 5, 4, 3), np.float32))


# ---- ReLU in the forward's epilogue ----

# general, groups, depthwise, tiled with edge tiles, narrow, broad, 1x1, Winograd, few channels
RELU_CASES = [CASES[i] for i in (0, 5, 6, 9, 11, 16, 20, 21, 26, 27, 28)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", RELU_CASES, ids=case_id)
def test_forward_relu_equals_forward_then_relu(case, dtype):
    case = case.cast(dtype)
    data = arrays(case)
    got = run_pass("forward", case, data, relu=True)
    plain = run_pass("forward", case, data)
    np.testing.assert_array_equal(got, np.where(plain < 0, 0, plain))
    assert (got == 0).any() and (got > 0).any()
    assert_close(got, expected_pass("forward", case, data, relu=True))


# ReLU6: the STORE_RELU6 variants clamp as their tiles store, the others in a pass after; tiled with edge tiles,
# 1x1, few pixels, depthwise (float32 and float64), Winograd
RELU6_CASES = [CASES[16], CASES[27], ConvCase(1, 5, 5, 32, 64, padding=1), CASES[6], CASES[6].cast(np.float64),
               CASES[11]]


@pytest.mark.parametrize("case", RELU6_CASES, ids=case_id)
def test_forward_relu6_equals_forward_then_clamp_in_every_variant(case):
    data = arrays(case)
    data.x[0, 2, 2, 0] = np.nan  # an even pixel: read by the strided cases too
    data.x[...] *= 3  # sums past 6
    ran = set()
    for variant in Variant:
        if not select_module.applies(Pass.FORWARD, variant, case.dtype, case.geometry):
            continue
        with forced(variant, "forward"):
            plain = run_pass("forward", case, data)
            out = np.full_like(plain, np.nan)
            got = kernels.conv2d_forward(data.x, data.weight, data.bias, out, relu6=True, **case.options)
        clamped = np.where(plain < 0, 0, plain)
        np.testing.assert_array_equal(got, np.where(clamped > 6, 6, clamped), err_msg=variant.name)
        assert (got == 6).any() and (got == 0).any() and np.isnan(got).any(), variant.name
        ran.add(variant)
    assert ran & kernels.STORE_RELU6 and ran - kernels.STORE_RELU6, ran  # clamped as stored, and after
    want = reference.conv2d_forward(*(a.astype(np.float64) for a in (data.x, data.weight, data.bias)),
                                    np.empty(got.shape), relu6=True, **case.options)
    assert_close(got, want)


@pytest.mark.parametrize("case", [CASES[16], ConvCase(1, 5, 5, 32, 64, padding=1), CASES[6].cast(np.float64)],
                         ids=case_id)
@pytest.mark.parametrize("activation", [None, "relu", "relu6"])
def test_forward_normalize_is_the_conv_then_the_batch_norm_pass(case, activation):
    data, coefficients = normalized_case_data(case)
    assert_conv_then_normalized(case, data, coefficients, activation)


def test_normalize_checks_its_shape():
    case = CASES[16]
    data = arrays(case)
    with pytest.raises(ValueError, match="normalize shape"):
        kernels.conv2d_forward(data.x, data.weight, data.bias, np.empty(case.out_shape, case.dtype),
                               normalize=np.ones((3, case.c_out + 1), case.dtype), **case.options)


@pytest.mark.parametrize("case", [CASES[16], CASES[0], CASES[0].cast(np.float64), CASES[20], CASES[14], CASES[6]],
                         ids=case_id)
def test_forward_relu_keeps_nan(case):
    data = arrays(case)
    data.x[0, 2, 3, 0] = np.nan
    got = run_pass("forward", case, data, relu=True)
    assert np.isnan(got).any()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected_pass("forward", case, data)))


def _bind(name, case, data, out, workspace):
    if name == "forward":
        return kernels.bind_forward(data.x, data.weight, data.bias, out, relu=True, workspace=workspace,
                                    **case.options)
    if name == "backward_input":
        return kernels.bind_backward_input(data.grad_out, data.weight, out, workspace=workspace, **case.options)
    return kernels.bind_backward_weight(data.x, data.grad_out, out, workspace=workspace, **case.options)


# the direct tiles and the kernel-row weight gradient, Winograd (with its finite check), 1x1, few channels, GEMM
BIND_CASES = [CASES[16], ConvCase(2, 12, 10, 3, 16, padding=1), CASES[20], CASES[27], CASES[0], CASES[22]]


@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("name", ["forward", "backward_input", "backward_weight"])
@pytest.mark.parametrize("case", BIND_CASES, ids=case_id)
def test_a_bound_pass_reads_its_arrays_anew_at_every_call(case, name, offset):
    """A bound pass (the captured graph's conv nodes call them at every step) gives the entry point's result, bit
    for bit, for whatever its arrays hold when it is called; a weight off its cache line is copied to an aligned
    buffer at every call (offset 1), not once."""
    data = type(arrays(case))(*(shifted(a, offset) for a in arrays(case, seed=4)))
    workspace = np.empty(kernels.conv2d_workspace_bytes(name, case.x_shape, case.weight_shape, case.out_shape,
                                                        case.dtype, **case.options), np.uint8)
    out = output_like(name, data)
    bound = _bind(name, case, data, out, workspace)
    for seed in (5, 6):
        assert bound() is out
        expected = run_pass(name, case, data, relu=name == "forward")
        np.testing.assert_array_equal(out, expected)
        fresh = arrays(case, seed=seed)
        for held, new in zip(data, fresh):
            held[...] = new  # the same arrays, new values


def test_bind_refuses_arrays_it_cannot_read_in_place():
    case = CASES[16]
    data = arrays(case)
    x = np.asfortranarray(data.x)
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        kernels.bind_forward(x, data.weight, data.bias, output_like("forward", data), **case.options)
    with pytest.raises(ValueError, match="grad_out must be C-contiguous"):
        kernels.bind_backward_weight(data.x, data.grad_out[:, ::-1], output_like("backward_weight", data),
                                     **case.options)
    # the entry points still take them, as copies
    check_passes(case, data._replace(x=x), names=("forward",))
