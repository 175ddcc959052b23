"""Every convolution variant that can run a layer, timed pass by pass on this process's CPU tier: the figures the
selector's per-tier choices (kernels/conv2d/select.py) rest on.

    python bench/conv_variants.py [--threads T] [--repeats N] [--json PATH]
    NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES= python bench/conv_variants.py      # the AVX2 tier on any x86 host

For each layer of the cifar-cnn and ResNet-20 (batch 64) and each pass, every variant `applies()` allows runs
(forced with `force_variant`), its output checked against the selector's own choice once, then timed: the median
of --repeats calls after a warm-up, interleaved over the variants round by round so that a slow minute of a shared
machine hits them all. GFLOP/s count a direct convolution's multiply-adds (2·N·H_out·W_out·C_out·C_in·kH·kW), so
Winograd can exceed the sgemm peak. The selector's choice is marked with *, and NumPy's float32 sgemm at 2048²
(same threads) is the peak.
"""
import argparse
import json
import statistics
import time

import numpy as np

from cnnnumba import set_num_threads
from cnnnumba.kernels import conv2d
from cnnnumba.kernels._runtime.machine import target_machine

BATCH = 64
# (C_in, C_out, input size, stride, kernel), padding kernel // 2
LAYERS = [(3, 32, 32, 1, 3), (32, 32, 32, 1, 3), (32, 64, 16, 1, 3), (64, 64, 16, 1, 3), (64, 128, 8, 1, 3),
          (16, 16, 32, 1, 3), (16, 32, 32, 2, 3), (32, 32, 16, 1, 3), (32, 64, 16, 2, 3), (64, 64, 8, 1, 3),
          (16, 32, 32, 2, 1), (32, 64, 16, 2, 1)]
UNTILED = {conv2d.Variant.GEMM, conv2d.Variant.GENERAL, conv2d.Variant.SMALL_BANDS, conv2d.Variant.SMALL_ROWS}
PASSES = (conv2d.Pass.FORWARD, conv2d.Pass.BACKWARD_INPUT, conv2d.Pass.BACKWARD_WEIGHT)


def _arrays(layer):
    channels_in, channels_out, size, stride, kernel = layer
    out_size = (size + 2 * (kernel // 2) - kernel) // stride + 1
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, size, size, channels_in), dtype=np.float32)
    weight = (rng.standard_normal((kernel, kernel, channels_in, channels_out)) / np.sqrt(kernel * kernel * channels_in)
              ).astype(np.float32)
    grad_out = rng.standard_normal((BATCH, out_size, out_size, channels_out), dtype=np.float32)
    flops = 2.0 * BATCH * out_size ** 2 * channels_out * channels_in * kernel * kernel
    options = dict(stride=(stride, stride), padding=(kernel // 2,) * 2, dilation=(1, 1), groups=1)
    return x, weight, grad_out, flops, options


def _runner(pass_, x, weight, grad_out, options):
    if pass_ is conv2d.Pass.FORWARD:
        out = np.empty_like(grad_out)
        return lambda: conv2d.conv2d_forward(x, weight, None, out, **options)
    if pass_ is conv2d.Pass.BACKWARD_INPUT:
        out = np.empty_like(x)
        return lambda: conv2d.conv2d_backward_input(grad_out, weight, out, **options)
    out = np.empty_like(weight)
    return lambda: conv2d.conv2d_backward_weight(x, grad_out, out, **options)


def _forced(pass_, variant):
    return conv2d.force_variant(**{pass_.value: variant})


def _sgemm_gflops(repeats):
    a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    out = np.empty_like(a)
    np.matmul(a, a, out=out)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(a, a, out=out)
        times.append(time.perf_counter() - start)
    return 2 * 2048 ** 3 / statistics.median(times) / 1e9


def measure(repeats):
    rows = []
    for layer in LAYERS:
        x, weight, grad_out, flops, options = _arrays(layer)
        geometry = conv2d.Geometry(x.shape, weight.shape, grad_out.shape, options["stride"], options["padding"],
                                   options["dilation"], 1)
        for pass_ in PASSES:
            chosen = conv2d.select(pass_, geometry, np.float32)
            # the untiled fallbacks only where they are the choice: they take seconds at these sizes
            variants = [v for v in conv2d.Variant if conv2d.applies(pass_, v, np.float32, geometry)
                        and (v is chosen or v not in UNTILED)]
            runs = {}
            reference = _runner(pass_, x, weight, grad_out, options)()
            reference = reference.copy()
            for variant in variants:
                with _forced(pass_, variant):
                    run = _runner(pass_, x, weight, grad_out, options)
                    result = run()
                    scale = max(1.0, float(np.sqrt(np.mean(reference.astype(np.float64) ** 2))))
                    if not np.allclose(result, reference, rtol=1e-3, atol=1e-3 * scale):
                        raise AssertionError(f"{variant.name} disagrees with {chosen.name} on {layer} {pass_.value}")
                    run()
                runs[variant] = (run, [])
            for _ in range(repeats):
                for variant, (run, times) in runs.items():
                    with _forced(pass_, variant):
                        start = time.perf_counter()
                        run()
                        times.append(time.perf_counter() - start)
            for variant, (_, times) in runs.items():
                rows.append({"layer": layer, "pass": pass_.value, "variant": variant.name, "chosen": variant is chosen,
                             "ms": 1e3 * statistics.median(times),
                             "gflops": flops / statistics.median(times) / 1e9})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    if args.threads:
        set_num_threads(args.threads)
    machine = target_machine()
    peak = _sgemm_gflops(args.repeats)
    rows = measure(args.repeats)
    print(f"tier {machine.tier} ({machine.cpu}), sgemm peak {peak:.0f} GFLOP/s; * = the selector's choice")
    for row in rows:
        layer = "{}->{}@{} s{} k{}".format(*row["layer"])
        print(f"{layer:20s} {row['pass']:16s} {row['variant']:15s}{'*' if row['chosen'] else ' '} "
              f"{row['ms']:8.2f} ms {row['gflops']:7.0f} GFLOP/s {row['gflops'] / peak:5.2f}x peak")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"tier": machine.tier, "cpu": machine.cpu, "sgemm_gflops": peak, "rows": rows}, handle,
                      indent=1)


if __name__ == "__main__":
    main()
