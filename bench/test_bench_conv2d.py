"""conv2d kernel throughput (forward, backward-input, backward-weight) at CIFAR-net shapes, against PyTorch.

Run: python -m pytest bench/test_bench_conv2d.py --benchmark-only
Each case checks its result against the NumPy reference once, compiles outside the timing, and reports
GFLOP/s = 2·N·H_out·W_out·C_out·C_in/groups·kH·kW / median time in benchmark.extra_info. The sgemm peak
(NumPy float32 matmul, 2048², same threads) runs in the same session, and a table of every pass's GFLOP/s
beside PyTorch's and the peak is printed at the end.
"""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba.kernels import conv2d as kernels
from cnnnumba import reference

try:
    import torch
except ImportError:  # the PyTorch baseline is optional
    torch = None

BATCH = 64
# (C_in, C_out, input height = width, stride, kernel), padding kernel // 2: the cifar-cnn's 3x3 layers, then
# ResNet-20's 16-channel stage, its stride-2 layers and its two 1x1 stride-2 projection shortcuts
SHAPES = [(3, 32, 32, 1, 3), (32, 32, 32, 1, 3), (32, 64, 16, 1, 3), (64, 64, 16, 1, 3), (64, 128, 8, 1, 3),
          (16, 16, 32, 1, 3), (16, 32, 32, 2, 3), (32, 64, 16, 2, 3), (16, 32, 32, 2, 1), (32, 64, 16, 2, 1)]
PASSES = ["forward", "backward_input", "backward_weight"]
SGEMM_SIZE = 2048
_RESULTS = {}


def _options(shape):
    return dict(stride=(shape[3], shape[3]), padding=(shape[4] // 2,) * 2, dilation=(1, 1), groups=1)


def _out_size(shape):
    return (shape[2] + 2 * (shape[4] // 2) - shape[4]) // shape[3] + 1


def _shape_id(shape):
    return (f"{shape[0]}to{shape[1]}@{shape[2]}" + (f"s{shape[3]}" if shape[3] > 1 else "")
            + (f"k{shape[4]}" if shape[4] != 3 else ""))


def _flops(shape):
    channels_in, channels_out, _, _, kernel = shape
    return 2.0 * BATCH * _out_size(shape) ** 2 * channels_out * channels_in * kernel * kernel


def _arrays(shape):
    channels_in, channels_out, size, _, kernel = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, size, size, channels_in), dtype=np.float32)
    weight = (rng.standard_normal((kernel, kernel, channels_in, channels_out))
              / np.sqrt(kernel * kernel * channels_in)).astype(np.float32)
    bias = rng.standard_normal(channels_out, dtype=np.float32)
    out_size = _out_size(shape)
    grad_out = rng.standard_normal((BATCH, out_size, out_size, channels_out), dtype=np.float32)
    return x, weight, bias, grad_out


def _cnnnumba_pass(name, options, x, weight, bias, grad_out):
    if name == "forward":
        out = np.empty(grad_out.shape, np.float32)
        return lambda: kernels.conv2d_forward(x, weight, bias, out, **options), \
            lambda: reference.conv2d_forward(x, weight, bias, np.empty_like(out), **options)
    if name == "backward_input":
        out = np.empty(x.shape, np.float32)
        return lambda: kernels.conv2d_backward_input(grad_out, weight, out, **options), \
            lambda: reference.conv2d_backward_input(grad_out, weight, np.empty_like(out), **options)
    out = np.empty(weight.shape, np.float32)
    return lambda: kernels.conv2d_backward_weight(x, grad_out, out, **options), \
        lambda: reference.conv2d_backward_weight(x, grad_out, np.empty_like(out), **options)


def _report(benchmark, shape, name, framework):
    seconds = benchmark.stats.stats.median
    gflops = round(_flops(shape) / seconds / 1e9, 1)
    benchmark.extra_info.update(framework=framework, shape=_shape_id(shape), pass_name=name, threads=cn.get_num_threads(),
                                gflops=gflops)
    _RESULTS[(_shape_id(shape), name, framework)] = gflops


@pytest.fixture(scope="module", autouse=True)
def gflops_table(request):
    """After the module's benchmarks, print GFLOP/s per pass: cnnnumba, PyTorch, and both as a share of sgemm."""
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or not _RESULTS:
        return
    if capture is not None:
        with capture.global_and_fixture_disabled():
            _write_table(reporter)
    else:
        _write_table(reporter)


def _write_table(reporter):
    peak = _RESULTS.get(("sgemm", "", "numpy"))
    reporter.write_line("")
    reporter.write_line(f"conv2d GFLOP/s, batch {BATCH}, {cn.get_num_threads()} threads; sgemm peak "
                        + (f"{peak:.1f}" if peak else "not measured"))
    reporter.write_line(f"{'layer':14s} {'pass':16s} {'cnnnumba':>9s} {'torch':>7s} {'ours/peak':>9s} {'torch/peak':>10s}")
    for shape in SHAPES:
        for name in PASSES:
            ours = _RESULTS.get((_shape_id(shape), name, "cnnnumba"))
            theirs = _RESULTS.get((_shape_id(shape), name, "torch"))
            if ours is None and theirs is None:
                continue
            cells = [f"{v:9.1f}" if v else f"{'-':>9s}" for v in (ours, theirs)]
            shares = [f"{v / peak:9.2f}" if v and peak else f"{'-':>9s}" for v in (ours, theirs)]
            reporter.write_line(f"{_shape_id(shape):14s} {name:16s} {cells[0]} {cells[1][2:]:>7s} {shares[0]} "
                                f"{shares[1]:>10s}")


def test_sgemm_peak(benchmark):
    """The machine's float32 GEMM rate on the same threads: the yardstick for the GFLOP/s above."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((SGEMM_SIZE, SGEMM_SIZE), dtype=np.float32) for _ in range(2))
    out = np.empty_like(a)
    benchmark.group = "sgemm"
    benchmark.pedantic(lambda: np.matmul(a, b, out=out), rounds=15, iterations=1, warmup_rounds=2)
    gflops = round(2.0 * SGEMM_SIZE ** 3 / benchmark.stats.stats.median / 1e9, 1)
    benchmark.extra_info.update(framework="numpy", gflops=gflops)
    _RESULTS[("sgemm", "", "numpy")] = gflops


@pytest.mark.parametrize("name", PASSES)
@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
def test_cnnnumba(benchmark, shape, name):
    run, oracle = _cnnnumba_pass(name, _options(shape), *_arrays(shape))
    got = run().copy()  # also compiles, outside the timing
    want = oracle()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * max(1.0, float(np.abs(want).max())))
    benchmark.group = f"conv2d {_shape_id(shape)} {name}"
    benchmark.pedantic(run, rounds=15, iterations=1, warmup_rounds=2)
    _report(benchmark, shape, name, "cnnnumba")


@pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
@pytest.mark.parametrize("name", PASSES)
@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
def test_torch(benchmark, shape, name):
    torch.set_num_threads(cn.get_num_threads())
    x, weight, bias, grad_out = (torch.from_numpy(np.ascontiguousarray(a)) for a in _arrays(shape))
    x, grad_out = x.permute(0, 3, 1, 2).contiguous(), grad_out.permute(0, 3, 1, 2).contiguous()
    weight = weight.permute(3, 2, 0, 1).contiguous()
    mask = {"forward": None, "backward_input": [True, False, False], "backward_weight": [False, True, False]}[name]
    with torch.no_grad():
        if mask is None:
            def run():
                return torch.nn.functional.conv2d(x, weight, bias, stride=shape[3], padding=shape[4] // 2)
        else:
            def run():
                return torch.ops.aten.convolution_backward(grad_out, x, weight, None, [shape[3]] * 2,
                                                           [shape[4] // 2] * 2, [1, 1], False, [0, 0], 1, mask)
        run()
        benchmark.group = f"conv2d {_shape_id(shape)} {name}"
        benchmark.pedantic(run, rounds=15, iterations=1, warmup_rounds=2)
    _report(benchmark, shape, name, "torch")
