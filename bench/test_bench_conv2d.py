"""conv2d kernel throughput (forward, backward-input, backward-weight) at CIFAR-net shapes, against PyTorch.

Run: python -m pytest bench/test_bench_conv2d.py --benchmark-only
Each case checks its result against the NumPy reference once, compiles outside the timing, and reports
GFLOP/s = 2·N·H_out·W_out·C_out·C_in/groups·kH·kW / median time in benchmark.extra_info.
"""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba.kernels import conv2d as kernels
from cnnnumba.kernels import reference

try:
    import torch
except ImportError:  # the PyTorch baseline is optional
    torch = None

BATCH = 64
# (C_in, C_out, height = width), 3x3 kernel, padding 1, stride 1
SHAPES = [(3, 32, 32), (32, 32, 32), (32, 64, 16), (64, 64, 16), (64, 128, 8)]
PASSES = ["forward", "backward_input", "backward_weight"]
OPTIONS = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)


def _shape_id(shape):
    return f"{shape[0]}to{shape[1]}@{shape[2]}"


def _flops(shape):
    channels_in, channels_out, size = shape
    return 2.0 * BATCH * size * size * channels_out * channels_in * 9


def _arrays(shape):
    channels_in, channels_out, size = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, size, size, channels_in), dtype=np.float32)
    weight = (rng.standard_normal((3, 3, channels_in, channels_out)) / np.sqrt(9 * channels_in)).astype(np.float32)
    bias = rng.standard_normal(channels_out, dtype=np.float32)
    grad_out = rng.standard_normal((BATCH, size, size, channels_out), dtype=np.float32)
    return x, weight, bias, grad_out


def _cnnnumba_pass(name, x, weight, bias, grad_out):
    if name == "forward":
        out = np.empty(grad_out.shape, np.float32)
        return lambda: kernels.conv2d_forward(x, weight, bias, out, **OPTIONS), \
            lambda: reference.conv2d_forward(x, weight, bias, np.empty_like(out), **OPTIONS)
    if name == "backward_input":
        out = np.empty(x.shape, np.float32)
        return lambda: kernels.conv2d_backward_input(grad_out, weight, out, **OPTIONS), \
            lambda: reference.conv2d_backward_input(grad_out, weight, np.empty_like(out), **OPTIONS)
    out = np.empty(weight.shape, np.float32)
    return lambda: kernels.conv2d_backward_weight(x, grad_out, out, **OPTIONS), \
        lambda: reference.conv2d_backward_weight(x, grad_out, np.empty_like(out), **OPTIONS)


def _report(benchmark, shape, name, framework):
    seconds = benchmark.stats.stats.median
    benchmark.extra_info.update(framework=framework, shape=_shape_id(shape), pass_name=name, threads=cn.get_num_threads(),
                                gflops=round(_flops(shape) / seconds / 1e9, 1))


@pytest.mark.parametrize("name", PASSES)
@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
def test_cnnnumba(benchmark, shape, name):
    run, oracle = _cnnnumba_pass(name, *_arrays(shape))
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
                return torch.nn.functional.conv2d(x, weight, bias, padding=1)
        else:
            def run():
                return torch.ops.aten.convolution_backward(grad_out, x, weight, None, [1, 1], [1, 1], [1, 1], False,
                                                           [0, 0], 1, mask)
        run()
        benchmark.group = f"conv2d {_shape_id(shape)} {name}"
        benchmark.pedantic(run, rounds=15, iterations=1, warmup_rounds=2)
    _report(benchmark, shape, name, "torch")
