"""The model and batches the data-parallel workers and the single-process reference share."""
import numpy as np

from cnnnumba import nn

STEPS = 3
_data = np.random.default_rng(7)
BATCHES = [(_data.standard_normal((8, 2, 6, 6)), _data.integers(0, 3, 8)) for _ in range(STEPS)]


def small_model():
    """Conv, ReLU, max-pool, linear in float64: no batch norm, so half batches on two ranks equal a whole batch."""
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(36, 3)).double()


def batch_norm_model():
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(144, 3)).double()
