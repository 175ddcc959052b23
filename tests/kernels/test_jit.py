"""The kernel decorators' compile options, and kernels that must compile once for the eager and captured paths."""
import re

import numba
import numpy as np
import pytest
from numba import prange

import cnnnumba as cn
from cnnnumba import functional as F
from cnnnumba import nn, optim
from cnnnumba.kernels import fused, loss, matmul
from cnnnumba.kernels._runtime.jit import _parallel_jit, jit


def _zeros_then_prange_then_slice_fill(x):
    y = np.zeros_like(x)
    for i in prange(x.shape[0]):
        y[i] = x[i] * 2
    y[:1] = 0
    return y


@jit
def _divide(a, b):
    return a / b, a // b if a == int(a) and b == int(b) else 0.0


def _gufunc_count(dispatcher, signature):
    llvm = dispatcher.overloads[signature].library.get_llvm_str()
    return len(set(re.findall(r"define[^@]*@(__gufunc__[^(]*)", llvm)))


def test_parallel_kernels_parallelise_only_their_prange_loops_for_every_signature():
    # np.zeros_like and the slice fill stay serial: one gufunc (the prange) per signature, the second
    # signature included (a parallel-options dict would be consumed by the first compile). Not cached: a
    # kernel loaded from the cache has no LLVM IR to count in.
    kernel = _parallel_jit(_zeros_then_prange_then_slice_fill, cache=False)
    for x in (np.ones(8), np.ones(8, np.float32), np.ones((3, 8))[:, 1]):
        np.testing.assert_array_equal(kernel(x), np.r_[0, 2 * x[1:]])
    assert len(kernel.signatures) == 3
    for signature in kernel.signatures:
        assert _gufunc_count(kernel, signature) == 1


def test_division_by_zero_in_a_kernel_follows_numpy():
    quotient, _ = _divide(1.0, 0.0)
    assert quotient == np.inf
    assert np.isnan(_divide(0.0, 0.0)[0])


KERNELS = [(fused, "batch_norm_statistics"), (fused, "batch_norm_act_forward"), (fused, "batch_norm_act_backward"),
           (loss, "cross_entropy_forward_into"), (loss, "cross_entropy_backward_into"),
           (matmul, "linear_backward_bias")]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_eager_and_captured_steps_call_each_shared_kernel_with_one_signature(dtype, monkeypatch):
    # the captured step's first call runs eagerly, its later calls replay the graph; both must reach the same
    # batch-norm, loss and bias-gradient kernels with the same argument types, or a cold first step compiles
    # each of them twice
    used = {name: set() for _, name in KERNELS}
    for module, name in KERNELS:
        kernel = getattr(module, name)

        def recording(*args, kernel=kernel, name=name):
            used[name].add(tuple(numba.typeof(a) for a in args))
            return kernel(*args)

        monkeypatch.setattr(module, name, recording)
    cn.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 5))
    if dtype == np.float64:
        model.double()
    step = cn.graph.capture(model, F.cross_entropy, optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    rng = np.random.default_rng(0)
    for _ in range(3):
        step(rng.standard_normal((4, 3, 6, 6)).astype(dtype), rng.integers(0, 5, 4))
    assert all(len(signatures) == 1 for signatures in used.values()), used
