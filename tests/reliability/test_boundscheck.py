"""Runs only in CI's NUMBA_BOUNDSCHECK=1 pass (.ci/run): proves that pass really runs bounds-checked kernels (and
not unchecked ones from a warm cache) by handing a kernel an index array one pixel short, past its Python guards."""
import os

import numpy as np
import pytest

from cnnnumba.kernels import pool2d

pytestmark = pytest.mark.skipif(os.environ.get("NUMBA_BOUNDSCHECK") != "1",
                                reason="without bounds checks this write would corrupt memory")


def test_an_out_of_bounds_write_in_a_kernel_raises_index_error():
    x = np.zeros((1, 4, 4, 2), np.float64)
    out = np.empty((1, 2, 2, 2), np.float64)
    short_indices = np.empty((1, 2, 1, 2), np.int64)
    # The public entry refuses the short array (its 2x2 variant stores through vector pointers, which no bounds
    # check sees), so the general kernel, indexed element by element, is called directly. Inside a prange loop
    # Numba reports the IndexError as the cause of a SystemError; either way it is loud.
    with pytest.raises(ValueError, match=r"indices has shape \(1, 2, 1, 2\), but out has \(1, 2, 2, 2\)"):
        pool2d.max_pool2d_forward(x, out, short_indices, 2, 2, 2, 2, 0, 0, 1, 1)
    with pytest.raises((IndexError, SystemError)) as info:
        pool2d._max_pool2d_forward_general(x, out, short_indices, 2, 2, 2, 2, 0, 0, 1, 1)
    error = info.value if isinstance(info.value, IndexError) else info.value.__cause__
    assert isinstance(error, IndexError) and "index is out of bounds" in str(error)
