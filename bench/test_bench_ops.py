"""Pooling, linear and batch-norm kernel throughput at the cifar-cnn's and LeNet-5's shapes.

Run: python -m pytest bench/test_bench_ops.py --benchmark-only
Every case runs three ways, each named in benchmark.extra_info["framework"]: the cnnnumba kernel, its NumPy
twin in cnnnumba/reference (the baseline), and PyTorch when installed. The kernel's result is checked against
the NumPy twin once before timing, and that first call also compiles it, outside the timing. Linear cases
report GFLOP/s (2·N·in·out per pass); pooling and batch norm report GB/s over the bytes read and written.
"""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba.bench.flops import linear_flops
from cnnnumba.kernels import matmul, norm, pool2d
from cnnnumba import reference

try:
    import torch
except ImportError:  # the PyTorch baseline is optional
    torch = None

BATCH = 64
# NHWC inputs of the 2×2 stride-2 pools: cifar-cnn's three, LeNet-5's two
POOL_SHAPES = [(BATCH, 32, 32, 32), (BATCH, 16, 16, 64), (BATCH, 8, 8, 128), (BATCH, 28, 28, 6), (BATCH, 10, 10, 16)]
# (rows, in, out): cifar-cnn's classifier, LeNet-5's three layers
LINEAR_SHAPES = [(BATCH, 2048, 10), (BATCH, 400, 120), (BATCH, 120, 84), (BATCH, 84, 10)]
# NHWC activations of the cifar-cnn's batch norms, as (rows, channels)
NORM_SHAPES = [(BATCH * 32 * 32, 32), (BATCH * 16 * 16, 64), (BATCH * 8 * 8, 128)]
WINDOW = (2, 2, 2, 2, 0, 0)  # kernel, stride, padding
FRAMEWORKS = ["cnnnumba", "reference", "torch"]
ROUNDS = {"cnnnumba": 20, "reference": 5, "torch": 20}


def _id(shape):
    return "x".join(str(s) for s in shape)


def _random(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def _pool_case(kind, direction, shape):
    """{framework: run} for one pooling pass; the cnnnumba and reference runs return their output array."""
    batch, height, width, channels = shape
    x = _random(shape)
    out_shape = (batch, height // 2, width // 2, channels)
    grad_out = _random(out_shape, seed=1)
    indices = np.empty(out_shape, np.int64)
    window = WINDOW + ((1, 1) if kind == "max" else (True, 0))
    if kind == "max":
        pool2d.max_pool2d_forward(x, np.empty(out_shape, np.float32), indices, *window)

    def forward(module):
        out = np.empty(out_shape, np.float32)
        if kind == "max":
            return lambda: (module.max_pool2d_forward(x, out, np.empty(out_shape, np.int64), *window), out)[1]
        return lambda: (module.avg_pool2d_forward(x, out, *window), out)[1]

    def backward(module):
        grad_in = np.empty(shape, np.float32)
        if kind == "max":
            return lambda: (module.max_pool2d_backward(grad_out, indices, grad_in, *window), grad_in)[1]
        return lambda: (module.avg_pool2d_backward(grad_out, grad_in, *window), grad_in)[1]

    make = forward if direction == "forward" else backward
    runs = {"cnnnumba": make(pool2d), "reference": make(reference)}
    if torch is not None:
        x_t = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_(direction == "backward")
        grad_t = torch.from_numpy(grad_out).permute(0, 3, 1, 2).contiguous()
        op = torch.nn.functional.max_pool2d if kind == "max" else torch.nn.functional.avg_pool2d
        if direction == "forward":
            def torch_run():
                with torch.no_grad():
                    return op(x_t, 2, 2)
        else:
            y_t = op(x_t, 2, 2)

            def torch_run():
                return torch.autograd.grad(y_t, x_t, grad_t, retain_graph=True)
        runs["torch"] = torch_run
    moved = (x.nbytes + grad_out.nbytes) * (2 if direction == "backward" else 1)
    return runs, {"bytes": moved}


def _linear_case(direction, shape):
    rows, features_in, features_out = shape
    x, weight, bias = _random((rows, features_in)), _random((features_out, features_in), 1), _random(features_out, 2)
    grad_out = _random((rows, features_out), 3)

    def make(module):
        if direction == "forward":
            out = np.empty((rows, features_out), np.float32)
            return lambda: (module.linear_forward(x, weight, bias, out), out)[1]
        if direction == "backward_input":
            grad_x = np.empty_like(x)
            return lambda: (module.linear_backward_input(grad_out, weight, grad_x), grad_x)[1]
        grad_weight = np.empty_like(weight)
        return lambda: (module.linear_backward_weight(grad_out, x, grad_weight), grad_weight)[1]

    runs = {"cnnnumba": make(matmul), "reference": make(reference)}
    if torch is not None:
        x_t, w_t, b_t, g_t = (torch.from_numpy(a) for a in (x, weight, bias, grad_out))
        runs["torch"] = {"forward": lambda: torch.nn.functional.linear(x_t, w_t, b_t),
                         "backward_input": lambda: g_t @ w_t,
                         "backward_weight": lambda: g_t.t() @ x_t}[direction]
    return runs, {"flops": linear_flops((rows, features_in), (features_out, features_in))}


def _norm_case(direction, shape):
    rows, channels = shape
    x, grad_y = _random(shape), _random(shape, 1)
    weight, bias = 1 + 0.1 * _random(channels, 2), 0.1 * _random(channels, 3)
    _, mean, _, invstd = norm.batch_norm_forward_train(x, weight, bias, 1e-5)

    def make(module):
        if direction == "forward":
            return lambda: module.batch_norm_forward_train(x, weight, bias, 1e-5)[0]
        return lambda: module.batch_norm_backward_train(grad_y, x, mean, invstd, weight)[0]

    runs = {"cnnnumba": make(norm), "reference": make(reference)}
    if torch is not None:
        x_t = torch.from_numpy(x).reshape(-1, 1, 1, channels).permute(0, 3, 1, 2)
        x_t.requires_grad_(direction == "backward")
        w_t, b_t = torch.from_numpy(weight), torch.from_numpy(bias)
        g_t = torch.from_numpy(grad_y).reshape(-1, 1, 1, channels).permute(0, 3, 1, 2)
        if direction == "forward":
            def torch_run():
                with torch.no_grad():
                    return torch.nn.functional.batch_norm(x_t, None, None, w_t, b_t, training=True)
        else:
            y_t = torch.nn.functional.batch_norm(x_t, None, None, w_t, b_t, training=True)

            def torch_run():
                return torch.autograd.grad(y_t, x_t, g_t, retain_graph=True)
        runs["torch"] = torch_run
    return runs, {"bytes": x.nbytes * (3 if direction == "backward" else 2)}


CASES = ([(f"{kind}_pool2d", direction, shape, lambda k=kind, d=direction, s=shape: _pool_case(k, d, s))
          for kind in ("max", "avg") for direction in ("forward", "backward") for shape in POOL_SHAPES]
         + [("linear", direction, shape, lambda d=direction, s=shape: _linear_case(d, s))
            for direction in ("forward", "backward_input", "backward_weight") for shape in LINEAR_SHAPES]
         + [("batch_norm", direction, shape, lambda d=direction, s=shape: _norm_case(d, s))
            for direction in ("forward", "backward") for shape in NORM_SHAPES])


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("op, direction, shape, build", CASES, ids=[f"{c[0]}-{c[1]}-{_id(c[2])}" for c in CASES])
def test_op(benchmark, op, direction, shape, build, framework):
    if framework == "torch" and torch is None:
        pytest.skip("PyTorch is not installed")
    runs, work = build()
    if framework == "torch":
        torch.set_num_threads(cn.get_num_threads())
    else:
        got, want = np.array(runs["cnnnumba"]()), np.array(runs["reference"]())
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * max(1.0, float(np.abs(want).max())))
    run = runs[framework]
    run()
    benchmark.group = f"{op} {direction} {_id(shape)}"
    benchmark.pedantic(run, rounds=ROUNDS[framework], iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(framework=framework, op=op, pass_name=direction, shape=_id(shape),
                                threads=cn.get_num_threads())
    if benchmark.stats is None:  # --benchmark-disable: the run was checked, nothing was timed
        return
    seconds = benchmark.stats.stats.median
    if "flops" in work:
        benchmark.extra_info["gflops"] = round(work["flops"] / seconds / 1e9, 2)
    else:
        benchmark.extra_info["gbytes_per_s"] = round(work["bytes"] / seconds / 1e9, 2)
