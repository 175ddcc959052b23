"""LeNet-5's few-channel layers: conv2d passes (each few-channel variant and the im2col + GEMM variant they
replaced, forced through the public entry points, and PyTorch) and 2x2 max pooling, batch 64.

Run: python -m pytest bench/test_bench_lenet_layers.py --benchmark-only
Each case checks its result against the NumPy reference once and compiles outside the timing; GFLOP/s
(2·N·H_out·W_out·C_out·C_in·kH·kW / median time) goes to benchmark.extra_info. On a shared machine compare rows
of one run only.
"""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import reference
from cnnnumba.kernels import conv2d as kernels
from cnnnumba.kernels import pool2d

try:
    import torch
except ImportError:  # the PyTorch baseline is optional
    torch = None

BATCH = 64
# (C_in, C_out, input size, padding), 5x5 kernel: LeNet-5's two convolutions on 28x28 images
LAYERS = [(1, 6, 28, 2), (6, 16, 14, 0)]
PASSES = ["forward", "backward_input", "backward_weight"]
VARIANTS = [kernels.Variant.SMALL_ROWS, kernels.Variant.SMALL_BANDS, kernels.Variant.GEMM]


def _arrays(layer):
    channels_in, channels_out, size, pad = layer
    rng = np.random.default_rng(0)
    out_size = size + 2 * pad - 4
    x = rng.standard_normal((BATCH, size, size, channels_in), dtype=np.float32)
    weight = rng.standard_normal((5, 5, channels_in, channels_out), dtype=np.float32)
    bias = rng.standard_normal(channels_out, dtype=np.float32)
    grad_out = rng.standard_normal((BATCH, out_size, out_size, channels_out), dtype=np.float32)
    return x, weight, bias, grad_out


def _run(module, name, layer, x, weight, bias, grad_out):
    """A pass of the entry points (module=kernels) or their NumPy twins (module=reference)."""
    options = dict(stride=(1, 1), padding=(layer[3], layer[3]))
    if name == "forward":
        return lambda: module.conv2d_forward(x, weight, bias, np.empty_like(grad_out), **options)
    if name == "backward_input":
        return lambda: module.conv2d_backward_input(grad_out, weight, np.empty_like(x), **options)
    return lambda: module.conv2d_backward_weight(x, grad_out, np.empty_like(weight), **options)


def _forced(variant, name, run):
    """run under force_variant (per thread: pytest-benchmark times on the calling thread)."""
    def forced_run():
        with kernels.force_variant(**{name: variant}):
            return run()
    return forced_run


def _torch_run(name, layer, x, weight, bias, grad_out):
    xt = torch.tensor(x.transpose(0, 3, 1, 2).copy(), requires_grad=name == "backward_input")
    wt = torch.tensor(weight.transpose(3, 2, 0, 1).copy(), requires_grad=name == "backward_weight")
    bt = torch.tensor(bias)
    gt = torch.tensor(grad_out.transpose(0, 3, 1, 2).copy())
    if name == "forward":
        return lambda: torch.nn.functional.conv2d(xt, wt, bt, padding=layer[3])
    source = xt if name == "backward_input" else wt
    return lambda: torch.autograd.grad(torch.nn.functional.conv2d(xt, wt, bt, padding=layer[3]), source, gt)


@pytest.mark.parametrize("name", PASSES)
@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: f"{layer[0]}to{layer[1]}@{layer[2]}")
@pytest.mark.parametrize("framework", [v.value for v in VARIANTS] + ["torch"])
def test_conv_pass(benchmark, framework, layer, name):
    arrays = _arrays(layer)
    if framework == "torch":
        if torch is None:
            pytest.skip("PyTorch is not installed")
        torch.set_num_threads(cn.get_num_threads())
        run = _torch_run(name, layer, *arrays)
    else:
        run = _forced(kernels.Variant(framework), name, _run(kernels, name, layer, *arrays))
        try:
            got = run()
        except ValueError as error:  # the variant cannot run this pass of this layer
            pytest.skip(str(error))
        np.testing.assert_allclose(got, _run(reference, name, layer, *arrays)(), rtol=1e-3, atol=1e-2)
    benchmark.pedantic(run, rounds=15, iterations=3, warmup_rounds=2)
    if benchmark.stats is not None:  # None under --benchmark-disable
        flops = 2.0 * BATCH * arrays[3].shape[1] ** 2 * layer[1] * layer[0] * 25
        benchmark.extra_info["gflops"] = flops / benchmark.stats.stats.median / 1e9


@pytest.mark.parametrize("shape", [(BATCH, 28, 28, 6), (BATCH, 10, 10, 16)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_max_pool_2x2(benchmark, shape, direction):
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    out_shape = (shape[0], shape[1] // 2, shape[2] // 2, shape[3])
    out, indices = np.empty(out_shape, np.float32), np.empty(out_shape, np.int64)
    window = (2, 2, 2, 2, 0, 0, 1, 1)
    pool2d.max_pool2d_forward(x, out, indices, *window)
    expected = np.empty_like(out), np.empty_like(indices)
    reference.max_pool2d_forward(x, *expected, *window)
    np.testing.assert_array_equal(out, expected[0])
    grad_in = np.empty_like(x)
    if direction == "forward":
        run = lambda: pool2d.max_pool2d_forward(x, out, indices, *window)  # noqa: E731
    else:
        run = lambda: pool2d.max_pool2d_backward(out, indices, grad_in, *window)  # noqa: E731
    benchmark.pedantic(run, rounds=20, iterations=5, warmup_rounds=2)
    if benchmark.stats is not None:
        benchmark.extra_info["GB/s"] = (x.nbytes + out.nbytes + indices.nbytes) / benchmark.stats.stats.median / 1e9
