"""Plain-NumPy versions of every kernel: the test oracle and the benchmarks' baseline.

Each function has the same signature and layout conventions as its Numba twin in the kernel module named in
its section, and is written for clarity, not speed.
"""
import numpy as np

# ---- conv2d (twin of kernels/conv2d.py) ----

# ---- pool2d (twin of kernels/pool2d.py) ----

# ---- matmul (twin of kernels/matmul.py) ----

# ---- elementwise (twin of kernels/elementwise.py) ----

# ---- norm (twin of kernels/norm.py) ----

# ---- loss (twin of kernels/loss.py) ----

# ---- optim (twin of kernels/optim.py) ----
