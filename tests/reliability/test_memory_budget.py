"""Every conv pass keeps its scratch within one fixed budget (conv2d workspace.WORKSPACE_BYTES), whatever the
batch and channel count: the workspace size function over a table of shapes up to ImageNet scale, and the traced
peak of forward + both backward passes at a large batch, measured in a fresh process, which stays under the
budget and does not grow with the batch."""
import json
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest

from cnnnumba.kernels import conv2d as kernels
from cnnnumba.kernels.conv2d import Variant
from cnnnumba.kernels.conv2d import workspace as conv2d_workspace

PASSES = ("forward", "backward_input", "backward_weight", "backward_bias")
# (batch, C_in, C_out, input size, kernel, stride, padding)
HUGE = [
    (4096, 3, 64, 224, 7, 2, 3),      # a ResNet's first layer on ImageNet
    (4096, 64, 64, 56, 3, 1, 1),
    (4096, 512, 512, 14, 3, 1, 1),
    (4096, 512, 512, 7, 3, 1, 1),
    (4096, 256, 512, 28, 3, 2, 1),
    (256, 512, 512, 14, 7, 1, 3),     # a 7x7 kernel over 512 channels: 51 MB of float32 weight
    (4096, 16, 16, 224, 3, 1, 1),
    (1, 3, 32, 4096, 3, 1, 1),        # one huge image
    (4096, 256, 512, 56, 1, 2, 0),    # 1x1 projection shortcuts (the 1x1 path)
    (4096, 1024, 2048, 14, 1, 2, 0),  # a 1x1 weight of a quarter of the budget: two partial weight gradients
    (4096, 1, 6, 28, 5, 1, 2),        # LeNet-5's few-channel layers: the few-channel variants of small.py
    (4096, 6, 16, 14, 5, 1, 0),
    (4096, 3, 8, 224, 3, 1, 1),
]


def _shapes(batch, channels_in, channels_out, size, kernel, stride, padding):
    out = (size + 2 * padding - kernel) // stride + 1
    x_shape, y_shape = (batch, size, size, channels_in), (batch, out, out, channels_out)
    return x_shape, (kernel, kernel, channels_in, channels_out), y_shape


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", HUGE)
def test_workspace_of_every_pass_fits_the_budget(shape, dtype):
    x_shape, w_shape, y_shape = _shapes(*shape)
    options = dict(stride=(shape[5],) * 2, padding=(shape[6],) * 2)
    for name in PASSES:
        size = kernels.conv2d_workspace_bytes(name, x_shape, w_shape, y_shape, dtype, **options)
        assert size <= conv2d_workspace.WORKSPACE_BYTES, (name, size)


PROGRAM = textwrap.dedent("""
    import json, sys, tracemalloc
    import numpy as np
    from cnnnumba.kernels import conv2d as kernels
    from cnnnumba.kernels.conv2d import workspace

    dtype = np.dtype(sys.argv[1])
    channels_in, channels_out, size, groups = map(int, sys.argv[2:6])
    batches = [int(b) for b in sys.argv[6].split(",")]
    if len(sys.argv) > 7:
        workspace.WORKSPACE_BYTES = int(sys.argv[7])
    report = []
    for batch in [2] + batches:  # batch 2 compiles (or loads) the kernels outside the measurement
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch, size, size, channels_in)).astype(dtype)
        weight = rng.standard_normal((3, 3, channels_in // groups, channels_out)).astype(dtype)
        bias = np.zeros(channels_out, dtype)
        y = np.empty((batch, size, size, channels_out), dtype)
        grad_x, grad_weight, grad_bias = np.empty_like(x), np.empty_like(weight), np.empty_like(bias)
        options = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=groups)
        tracemalloc.start()
        kernels.conv2d_forward(x, weight, bias, y, relu=True, **options)
        kernels.conv2d_backward_input(y, weight, grad_x, **options)
        kernels.conv2d_backward_weight(x, y, grad_weight, **options)
        kernels.conv2d_backward_bias(y, grad_bias)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        report.append({"batch": batch, "peak": peak, "io_bytes": x.nbytes + y.nbytes})
    print(json.dumps(report[1:]))
""")

SLACK = 256 << 10  # argument tuples, views, Numba's per-call objects
SMALL_BUDGET = 2 << 20  # filled by both batches; under one float64 image of im2col columns (2.4 MB)


def _measure(dtype, channels_in, channels_out, size, groups, budget=None):
    command = [sys.executable, "-c", PROGRAM, dtype, str(channels_in), str(channels_out), str(size), str(groups),
               "32,128"] + ([str(budget)] if budget else [])
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a subprocess per case keeps the peak clean")
@pytest.mark.parametrize("dtype, channels_in, channels_out, size, groups", [
    ("float32", 32, 32, 32, 1),    # register-tiled paths: strips, partial weight gradients
    ("float64", 32, 32, 32, 1),    # im2col + GEMM: its columns alone would be 2.4 MB per image
    ("float64", 16, 48, 32, 2),    # general path (groups)
    ("float32", 3, 32, 32, 1),     # few input channels: GEMM backward-input, folded taps
])
def test_scratch_peak_stays_under_the_budget_and_does_not_grow_with_the_batch(dtype, channels_in, channels_out,
                                                                              size, groups):
    # inputs and outputs are allocated before each measurement: the peak is the passes' own scratch
    small, large = _measure(dtype, channels_in, channels_out, size, groups)
    assert large["peak"] <= conv2d_workspace.WORKSPACE_BYTES + SLACK, large
    # large enough that unchunked scratch (im2col columns: 9 x C_in values per output pixel) would exceed the budget
    assert 9 * channels_in * large["io_bytes"] // 2 > conv2d_workspace.WORKSPACE_BYTES, large
    # under a budget that both batches fill, four times the batch takes no more scratch
    small, large = _measure(dtype, channels_in, channels_out, size, groups, SMALL_BUDGET)
    assert large["peak"] <= SMALL_BUDGET + SLACK, large
    assert large["peak"] <= small["peak"] + SLACK, (small, large)


# (batch, C_in, C_out, input size, kernel, padding): stride 1, few channels
FEW_CHANNELS = [(1024, 1, 6, 28, 5, 2), (1024, 6, 16, 14, 5, 0), (256, 3, 8, 32, 3, 1)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", FEW_CHANNELS)
def test_few_channel_passes_take_their_scratch_from_the_workspace(shape, dtype):
    """The few-channel variants (small.py) at a large batch: each pass's workspace is within the budget,
    and given it, forward + both backward passes allocate nothing more (no per-job frames, partials or weight
    copies of their own)."""
    batch, channels_in, channels_out, size, kernel, padding = shape
    x_shape, w_shape, y_shape = _shapes(batch, channels_in, channels_out, size, kernel, 1, padding)
    geometry = kernels.Geometry(x_shape, w_shape, y_shape, (1, 1), (padding, padding), (1, 1), 1)
    assert kernels.select(kernels.Pass.FORWARD, geometry, dtype) in (Variant.SMALL_ROWS, Variant.SMALL_BANDS)
    options = dict(padding=(padding, padding))
    sizes = [kernels.conv2d_workspace_bytes(name, x_shape, w_shape, y_shape, dtype, **options) for name in PASSES]
    assert 0 < max(sizes) <= conv2d_workspace.WORKSPACE_BYTES, sizes
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(dtype)
    weight = rng.standard_normal(w_shape).astype(dtype)
    bias, y = np.zeros(channels_out, dtype), np.empty(y_shape, dtype)
    grad_x, grad_weight = np.empty_like(x), np.empty_like(weight)
    workspace = conv2d_workspace.new_workspace(max(sizes))

    def passes():
        kernels.conv2d_forward(x, weight, bias, y, relu=True, workspace=workspace, **options)
        kernels.conv2d_backward_input(y, weight, grad_x, workspace=workspace, **options)
        kernels.conv2d_backward_weight(x, y, grad_weight, workspace=workspace, **options)

    passes()  # compiles (or loads) the kernels outside the measurement
    tracemalloc.start()
    try:
        passes()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # argument tuples, views and the carved workspace's views; with the workspace withheld from the small path
    # (its own scratch allocated per call) the peaks are 65-790 KB
    assert peak < 16384, peak
