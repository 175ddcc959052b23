"""Variant.DEPTHWISE (depthwise.py): one filter per channel, any kernel, stride, padding and dilation, float32 and
float64; every pass against the NumPy twin, the input gradient's stride phases against brute force, and the weight
gradient bit for bit on any thread count and in a dirty workspace."""
import numpy as np
import pytest

from cnnnumba.kernels.conv2d import Variant, depthwise
from cnnnumba.kernels.conv2d.depthwise import TILE_PIXELS
from tests.kernels.conv2d.common import (arrays, assert_close, case_id, check_passes, ConvCase, dirty_workspace,
                                         expected_pass, on_threads, run_pass, workspace_bytes)

PASS_NAMES = ("forward", "backward_input", "backward_weight")
DTYPES = [np.float32, np.float64]


def depthwise_case(batch, h, w, channels, **options):
    return ConvCase(batch, h, w, channels, channels, groups=channels, **options)


CASES = [
    depthwise_case(2, 7, 7, 5, padding=1),                                   # fewer channels than a vector
    depthwise_case(2, 9, 23, 16, padding=1),                                 # one whole vector; tiles + remainder
    depthwise_case(2, 11, 21, 21, stride=2, padding=1),                      # stride 2, odd sizes, a masked tail
    depthwise_case(1, 8, 19, 40, kernel=5, padding=2),                       # 5x5
    depthwise_case(2, 6, 17, 33, kernel=(1, 3), padding=(0, 1)),             # 1x3
    depthwise_case(1, 10, 13, 18, stride=(1, 2), padding=(1, 0, 2, 1)),      # asymmetric padding
    depthwise_case(1, 9, 12, 24),                                            # no padding
    depthwise_case(2, 11, 14, 17, stride=2, padding=2, dilation=2),          # stride 2, dilation 2: tapless phases
    depthwise_case(1, 12, 15, 20, kernel=(3, 2), stride=(3, 2), padding=(2, 1), dilation=(2, 1)),
    depthwise_case(1, 3, 4, 8, padding=3),                                   # padding past the kernel: bias rows
    depthwise_case(3, 4, 4, 64, stride=2, padding=1),                        # MobileNetV2's late layers, scaled
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_depthwise_matches_the_reference(case, dtype):
    case = case.cast(dtype)
    for name in PASS_NAMES:
        assert case.selected(name) is Variant.DEPTHWISE, name
    data = arrays(case)
    check_passes(case, data, names=PASS_NAMES)
    check_passes(case, data, names=("forward",), bias=False)
    relu = check_passes(case, data, names=("forward",), relu=True)["forward"]
    assert (relu == 0).any() and (relu > 0).any()


def test_the_cases_run_whole_tiles_and_single_pixels():
    """The forward rows' interiors (every tap inside the input) run whole tiles, then single pixels for what is
    left; the cases have both, and padded borders."""
    interiors = []
    for case in CASES:
        first, last = depthwise._interior(case.out_shape[2], case.stride[1], case.padding[2], case.dilation[1],
                                          case.kernel[1], case.w)
        interiors.append(last - first)
    assert any(count >= TILE_PIXELS for count in interiors)
    assert any(count % TILE_PIXELS for count in interiors)
    assert any(count < case.out_shape[2] for count, case in zip(interiors, CASES))


@pytest.mark.parametrize("stride, padding, dilation, kernel", [
    (1, 1, 1, 3), (2, 1, 1, 3), (2, 0, 1, 3), (2, 2, 2, 3), (3, 2, 2, 3), (2, 3, 1, 5), (4, 1, 2, 3), (3, 0, 3, 4),
    (2, 1, 1, 1), (3, 4, 1, 2),
])
def test_phase_taps_are_the_taps_that_reach_each_input_position(stride, padding, dilation, kernel):
    """For every input position i = phase + j * stride: the (grad_out position, kernel index) pairs phase_taps
    gives, in order, are those of the brute-force adjoint (o * stride - padding + k * dilation = i), k descending."""
    for phase in range(stride):
        pad, spacing, taps, first, step = depthwise.phase_taps(phase, stride, padding, dilation, kernel)
        for j in range(-3, 6):
            position = phase + j * stride
            want = [((position + padding - k * dilation) // stride, k) for k in reversed(range(kernel))
                    if (position + padding - k * dilation) % stride == 0]
            got = [(j - pad + m * spacing, first + m * step) for m in range(taps)]
            assert got == want, (phase, j)


@pytest.mark.parametrize("case", [CASES[2], CASES[7], CASES[10].cast(np.float64)], ids=case_id)
def test_results_do_not_depend_on_thread_count(case):
    """The weight gradient's chunks are a function of the shape: 1 and 2 threads give the same bits (and every
    pixel of the other passes is written by one job, in one order)."""
    data = arrays(case)
    one, two = on_threads(lambda: [run_pass(name, case, data) for name in PASS_NAMES])
    for name, a, b in zip(PASS_NAMES, one, two):
        np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("case", [CASES[1], CASES[9]], ids=case_id)
def test_weight_gradient_in_a_dirty_workspace_of_exactly_its_size(case):
    """The per-chunk partials are carved from the caller's workspace; the forward and input gradient need none."""
    data = arrays(case)
    size = workspace_bytes("backward_weight", case)
    assert size > 0
    np.testing.assert_array_equal(run_pass("backward_weight", case, data, workspace=dirty_workspace(size)),
                                  run_pass("backward_weight", case, data))
    with pytest.raises(ValueError, match=f"workspace of {size - 1} bytes"):
        run_pass("backward_weight", case, data, workspace=np.empty(size - 1, np.uint8))
    assert workspace_bytes("forward", case) == workspace_bytes("backward_input", case) == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_inf_reach_their_outputs(dtype):
    """A NaN input poisons the windows over it (the ReLU keeps it) and its channel's weight gradient; an inf
    gives inf or NaN where the twin does."""
    case = CASES[2].cast(dtype)
    data = arrays(case)
    data.x[0, 3, 4, 5] = np.nan
    data.x[1, 6, 9, 20] = np.inf  # the masked tail vector
    data.grad_out[0, 2, 3, 7] = -np.inf
    for name, relu in (("forward", True), ("backward_input", False), ("backward_weight", False)):
        got = run_pass(name, case, data, relu=relu)
        want = expected_pass(name, case, data, relu=relu)
        assert np.isnan(got).any() or np.isinf(got).any(), name
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want), err_msg=name)
        assert_close(got, want, err_msg=name)


def test_a_channel_multiplier_stays_on_the_general_loops():
    case = ConvCase(1, 6, 6, 4, 8, padding=1, groups=4)
    for name in PASS_NAMES:
        assert case.selected(name) is Variant.GENERAL, name
