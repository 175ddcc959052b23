"""Every convolution variant that can run a layer, timed pass by pass on this process's CPU tier: the figures the
selector's per-tier choices (kernels/conv2d/select.py) rest on.

    python bench/conv_variants.py [--threads T] [--repeats N] [--layers all|dense|depthwise|resnet18] [--dtype D]
                                  [--json PATH]
    NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES= python bench/conv_variants.py      # the AVX2 tier on any x86 host

For each layer of the cifar-cnn and ResNet-20 (batch 64), and each depthwise layer of MobileNetV2 at 64x64 and
224x224 inputs (batch 16), or (--layers resnet18) ResNet-18's at 64x64 (batch 1 and 16), and each pass, every variant `applies()` allows runs (forced with `force_variant`), its
output checked against the selector's own choice once, then timed: the median of --repeats calls after a warm-up,
interleaved over the variants round by round so that a slow minute of a shared machine hits them all. GFLOP/s count
a direct convolution's multiply-adds (2·N·H_out·W_out·C_out·(C_in/groups)·kH·kW), so Winograd can exceed the
sgemm peak. The selector's choice is marked with *, and NumPy's GEMM of the dtype at 2048² (same threads) is the
peak. A depthwise layer's memory traffic is its speed limit: its "copy" column times NumPy copying its input and
output (the arrays a pass must at least read or write once).
"""
import argparse
import json
import statistics
import time
from collections import namedtuple

import numpy as np

from cnnnumba import set_num_threads
from cnnnumba.kernels import conv2d
from cnnnumba.kernels._runtime.machine import target_machine

# padding kernel // 2
Layer = namedtuple("Layer", "c_in c_out size stride kernel groups batch")


def _depthwise(channels, size, stride):
    return Layer(channels, channels, size, stride, 3, channels, 16)


# cifar-cnn and ResNet-20, batch 64
DENSE_LAYERS = [Layer(c_in, c_out, size, stride, kernel, 1, 64) for c_in, c_out, size, stride, kernel in [
    (3, 32, 32, 1, 3), (32, 32, 32, 1, 3), (32, 64, 16, 1, 3), (64, 64, 16, 1, 3), (64, 128, 8, 1, 3),
    (16, 16, 32, 1, 3), (16, 32, 32, 2, 3), (32, 32, 16, 1, 3), (32, 64, 16, 2, 3), (64, 64, 8, 1, 3),
    (16, 32, 32, 2, 1), (32, 64, 16, 2, 1)]]
# MobileNetV2's depthwise 3x3 layers at 64x64 inputs, then at 224x224, batch 16
DEPTHWISE_LAYERS = [_depthwise(channels, size, stride) for channels, size, stride in [
    (32, 32, 1), (96, 32, 2), (144, 16, 1), (144, 16, 2), (192, 8, 1), (384, 8, 1), (384, 4, 1), (576, 4, 1),
    (576, 4, 2), (960, 2, 1),
    (32, 112, 1), (96, 112, 2), (144, 56, 1), (192, 28, 1), (384, 14, 1), (576, 14, 1), (960, 7, 1)]]
# ResNet-18's layers at 64x64 inputs, batch 1 (inference) and 16
RESNET18_LAYERS = [Layer(c_in, c_out, size, stride, kernel, 1, batch) for batch in (1, 16)
                   for c_in, c_out, size, stride, kernel in [
                       (3, 64, 64, 2, 7), (64, 64, 16, 1, 3), (64, 128, 16, 2, 3), (64, 128, 16, 2, 1),
                       (128, 128, 8, 1, 3), (128, 256, 8, 2, 3), (128, 256, 8, 2, 1), (256, 256, 4, 1, 3),
                       (256, 512, 4, 2, 3), (256, 512, 4, 2, 1), (512, 512, 2, 1, 3)]]
LAYER_SETS = {"all": DENSE_LAYERS + DEPTHWISE_LAYERS, "dense": DENSE_LAYERS, "depthwise": DEPTHWISE_LAYERS,
              "resnet18": RESNET18_LAYERS}
UNTILED = {conv2d.Variant.GEMM, conv2d.Variant.GENERAL, conv2d.Variant.SMALL_BANDS, conv2d.Variant.SMALL_ROWS}
PASSES = (conv2d.Pass.FORWARD, conv2d.Pass.BACKWARD_INPUT, conv2d.Pass.BACKWARD_WEIGHT)


def _aligned(array):
    """A copy of array starting on a cache line, as a captured graph's buffers and parameters do."""
    raw = np.empty(array.size + 64 // array.itemsize, array.dtype)
    first = (-raw.ctypes.data % 64) // array.itemsize
    copy = raw[first:first + array.size].reshape(array.shape)
    copy[...] = array
    return copy


def _arrays(layer, dtype):
    out_size = (layer.size + 2 * (layer.kernel // 2) - layer.kernel) // layer.stride + 1
    group_in = layer.c_in // layer.groups
    rng = np.random.default_rng(0)
    x = rng.standard_normal((layer.batch, layer.size, layer.size, layer.c_in)).astype(dtype)
    weight = (rng.standard_normal((layer.kernel, layer.kernel, group_in, layer.c_out))
              / np.sqrt(layer.kernel * layer.kernel * group_in)).astype(dtype)
    grad_out = rng.standard_normal((layer.batch, out_size, out_size, layer.c_out)).astype(dtype)
    flops = 2.0 * layer.batch * out_size ** 2 * layer.c_out * group_in * layer.kernel * layer.kernel
    options = dict(stride=(layer.stride,) * 2, padding=(layer.kernel // 2,) * 2, dilation=(1, 1), groups=layer.groups)
    return _aligned(x), _aligned(weight), _aligned(grad_out), flops, options


def _runner(pass_, x, weight, grad_out, options):
    if pass_ is conv2d.Pass.FORWARD:
        out = _aligned(np.empty_like(grad_out))
        return lambda: conv2d.conv2d_forward(x, weight, None, out, **options)
    if pass_ is conv2d.Pass.BACKWARD_INPUT:
        out = _aligned(np.empty_like(x))
        return lambda: conv2d.conv2d_backward_input(grad_out, weight, out, **options)
    out = _aligned(np.empty_like(weight))
    return lambda: conv2d.conv2d_backward_weight(x, grad_out, out, **options)


def _forced(pass_, variant):
    return conv2d.force_variant(**{pass_.value: variant})


def _median_seconds(run, repeats):
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _gemm_gflops(repeats, dtype):
    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(dtype)
    out = np.empty_like(a)
    return 2 * 2048 ** 3 / _median_seconds(lambda: np.matmul(a, a, out=out), repeats) / 1e9


def _copy_ms(x, grad_out, repeats):
    """Copying the layer's input and output once each: the least memory traffic any pass has."""
    x_copy, out_copy = np.empty_like(x), np.empty_like(grad_out)
    return 1e3 * _median_seconds(lambda: (np.copyto(x_copy, x), np.copyto(out_copy, grad_out)), repeats)


def measure(repeats, layers, dtype):
    rows = []
    for layer in layers:
        x, weight, grad_out, flops, options = _arrays(layer, dtype)
        geometry = conv2d.Geometry(x.shape, weight.shape, grad_out.shape, options["stride"], options["padding"],
                                   options["dilation"], layer.groups)
        copy_ms = _copy_ms(x, grad_out, repeats) if layer.groups > 1 else None
        for pass_ in PASSES:
            chosen = conv2d.select(pass_, geometry, dtype)
            # the untiled fallbacks only where they are the choice, or the baseline of a grouped layer: they take
            # seconds at the dense layers' sizes
            variants = [v for v in conv2d.Variant if conv2d.applies(pass_, v, dtype, geometry)
                        and (v is chosen or v not in UNTILED or layer.groups > 1)]
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
                rows.append({"layer": layer._asdict(), "pass": pass_.value, "variant": variant.name,
                             "chosen": variant is chosen, "ms": 1e3 * statistics.median(times),
                             "gflops": flops / statistics.median(times) / 1e9, "copy_ms": copy_ms})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--layers", choices=sorted(LAYER_SETS), default="all")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    if args.threads:
        set_num_threads(args.threads)
    machine = target_machine()
    dtype = np.dtype(args.dtype)
    peak = _gemm_gflops(args.repeats, dtype)
    rows = measure(args.repeats, LAYER_SETS[args.layers], dtype)
    print(f"tier {machine.tier} ({machine.cpu}), {dtype.name} GEMM peak {peak:.0f} GFLOP/s; "
          f"* = the selector's choice")
    for row in rows:
        layer = "{c_in}->{c_out}@{size} s{stride} k{kernel} g{groups} n{batch}".format(**row["layer"])
        copy = f"  copy {row['copy_ms']:7.2f} ms" if row["copy_ms"] is not None else ""
        print(f"{layer:32s} {row['pass']:16s} {row['variant']:15s}{'*' if row['chosen'] else ' '} "
              f"{row['ms']:8.2f} ms {row['gflops']:7.1f} GFLOP/s {row['gflops'] / peak:5.2f}x peak{copy}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"tier": machine.tier, "cpu": machine.cpu, "dtype": dtype.name, "gemm_gflops": peak,
                       "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
