"""Numba kernels: ndarrays in, ndarrays out; they know nothing of Tensor and trust their caller's validation."""
