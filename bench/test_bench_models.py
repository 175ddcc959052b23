"""Whole-model steps: LeNet-5 (1×28×28) and the cifar-cnn (3×32×32), batch 64 and 256, and ResNet-20 (3×32×32),
batch 64; training step and inference.

Run: python -m pytest bench/test_bench_models.py --benchmark-only
cnnnumba runs captured (cnnnumba.graph.capture) where the graph executor provides it, eagerly otherwise; the
baseline is PyTorch eager (NCHW) when installed, built from the same architecture with the same initial weights
(state_dict) and fed the same batch. Before timing, the first step's loss (or logits) is checked against
PyTorch's, or for finiteness without PyTorch; that first step also compiles the kernels, outside the timing.
extra_info holds images/s and GFLOP/s over the counted FLOPs (conv and linear; see cnnnumba.bench.flops).
"""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba.bench import runners
from cnnnumba.bench.flops import model_flops

try:
    import torch
except ImportError:  # the PyTorch baseline is optional
    torch = None

MODEL_BATCHES = [("lenet5", 64), ("lenet5", 256), ("cifar-cnn", 64), ("cifar-cnn", 256), ("resnet20", 64)]
MODES = ["train", "inference"]
SEED = 0


def _steps(name, mode, batch_size):
    """(cnnnumba step, variant, torch step or None, batch) sharing weights and the batch."""
    model = runners.build_model(name, SEED)
    twin = runners.torch_model(model) if torch is not None else None
    step, variant = runners.cnnnumba_step(model, mode)
    torch_run = runners.torch_step(twin, mode, "nchw") if twin is not None else None
    return step, variant, torch_run, runners.make_batches(name, batch_size, 1, SEED + 1)[0]


@pytest.mark.parametrize("framework", ["cnnnumba", "torch"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name, batch_size", MODEL_BATCHES)
def test_model(benchmark, name, batch_size, mode, framework):
    if framework == "torch" and torch is None:
        pytest.skip("PyTorch is not installed")
    if torch is not None:
        torch.set_num_threads(cn.get_num_threads())
    step, variant, torch_run, (images, labels) = _steps(name, mode, batch_size)
    ours = np.asarray(step(images, labels), dtype=np.float64)
    assert np.all(np.isfinite(ours))
    if torch_run is not None:
        theirs = np.asarray(torch_run(images, labels), dtype=np.float64)
        np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-3)
    run = step if framework == "cnnnumba" else torch_run
    benchmark.group = f"{name} batch {batch_size} {mode}"
    benchmark.pedantic(run, args=(images, labels), rounds=10, iterations=1, warmup_rounds=2)
    channels, size, _ = runners.MODEL_INPUTS[name]
    flops = model_flops(runners.build_model(name, SEED), (batch_size, channels, size, size)).per_step(mode)
    benchmark.extra_info.update(framework=framework, variant=variant if framework == "cnnnumba" else "nchw",
                                model=name, batch_size=batch_size, mode=mode, threads=cn.get_num_threads())
    if benchmark.stats is not None:  # None under --benchmark-disable
        seconds = benchmark.stats.stats.median
        benchmark.extra_info.update(images_per_second=round(batch_size / seconds, 1),
                                    gflops=round(flops / seconds / 1e9, 2))
