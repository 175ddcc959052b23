"""Peak memory of a convolution's forward and backward on a large batch stays within a fixed multiple of the
bytes of its input and output (workspaces such as the padded frame and im2col patches grow with them, never
beyond), measured in a fresh process with tracemalloc and with the kernel's resident-set high-water mark."""
import json
import subprocess
import sys
import textwrap

import pytest

# Everything one conv2d forward + backward allocates, over the bytes of x plus y. 2.0 of it is unavoidable: x's
# and y's gradients (x and y themselves are allocated inside the measurement too). The rest is the NHWC copies,
# per-job padded strips and im2col patches. Measured here: 3.25 (float64, groups) to 3.8 (float32, 3 input channels).
BUDGET = 4.5

PROGRAM = textwrap.dedent("""
    import json, sys, tracemalloc
    import numpy as np
    import cnnnumba as cn
    from cnnnumba import functional as F

    def status(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024

    def step(batch, channels_in, channels_out, size, dtype, groups):
        rng = np.random.default_rng(0)
        x = cn.Tensor(rng.standard_normal((batch, channels_in, size, size)).astype(dtype), requires_grad=True)
        w = cn.Tensor(rng.standard_normal((channels_out, channels_in // groups, 3, 3)).astype(dtype),
                      requires_grad=True)
        b = cn.Tensor(np.zeros(channels_out, dtype), requires_grad=True)
        y = F.conv2d(x, w, b, padding=1, groups=groups)
        y.backward(np.ones(y.shape, dtype))
        return x, y

    dtype, batch, cin, cout, groups = np.dtype(sys.argv[1]), *map(int, sys.argv[2:])
    step(2, cin, cout, 16, dtype, groups)  # compile (or load) the kernels outside the measurement
    io_bytes = batch * (cin + cout) * 32 * 32 * dtype.itemsize
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the resident-set high-water mark (Linux >= 4.0)
        base = status("VmRSS")
    except OSError:
        base = None
    tracemalloc.start()
    step(batch, cin, cout, 32, dtype, groups)
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rss = None if base is None else status("VmHWM") - base
    print(json.dumps({"io_bytes": io_bytes, "traced_peak": traced, "rss_growth": rss}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("dtype, batch, channels_in, channels_out, groups", [
    ("float32", 128, 32, 32, 1),   # register-tiled fast paths
    ("float32", 128, 16, 16, 1),   # narrow 16-channel tiles
    ("float32", 128, 3, 32, 1),    # im2col + 1x1 fast path
    ("float64", 64, 16, 48, 2),    # general path, groups
])
def test_conv2d_forward_backward_peak_memory_is_within_budget(dtype, batch, channels_in, channels_out, groups):
    done = subprocess.run([sys.executable, "-c", PROGRAM, dtype, str(batch), str(channels_in), str(channels_out),
                           str(groups)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    io_bytes = report["io_bytes"]
    assert io_bytes >= 16 * 2 ** 20  # large enough that interpreter noise cannot hide a leak or a blow-up
    assert 2.0 * io_bytes <= report["traced_peak"] <= BUDGET * io_bytes, report
    if report["rss_growth"] is not None:  # includes Numba's own allocations, which tracemalloc does not see
        assert report["rss_growth"] <= (BUDGET + 0.5) * io_bytes, report
