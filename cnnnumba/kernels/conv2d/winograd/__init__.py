"""Winograd convolution of 3x3 stride-1 layers: F(2x2, 3x3) (f2.py), F(4x4, 3x3) and F(4x2, 3x3) (f4.py) forwards
and input gradients, their weight gradients (weight_f2.py, weight_f4.py) and the weight gradients' plan and driver
(weight.py). The per-position GEMMs run on the register tiles of ../tiles.py."""
