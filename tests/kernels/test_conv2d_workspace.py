"""The convolution workspace's shared steps: sum_partials split over the threads against its serial form."""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba.kernels import conv2d_workspace


# 6144 output elements: 1 gives 64 shares of 96, 1100 five uneven shares (1228 or 1229), 1 << 40 one share
@pytest.mark.parametrize("share_elements", [1, 1100, 1 << 40], ids=["most shares", "uneven", "serial"])
def test_the_partials_sum_split_over_threads_gives_the_serial_bits(share_elements, monkeypatch):
    """sum_partials takes contiguous shares of its output: any split, on 1 or 2 threads, gives the bits of the
    serial sum in chunk order (sum_partials_serial), within float32 rounding of the float64 sum."""
    partials = np.random.default_rng(5).standard_normal((3, 4, 4, 16, 24)).astype(np.float32)
    expected = np.full((4, 4, 16, 24), np.nan, np.float32)
    conv2d_workspace.sum_partials_serial(partials, expected)
    np.testing.assert_allclose(expected, partials.astype(np.float64).sum(axis=0), rtol=1e-6, atol=1e-6)
    monkeypatch.setattr(conv2d_workspace, "SHARE_ELEMENTS", share_elements)
    saved = cn.get_num_threads()
    try:
        for threads in (1, 2):
            cn.set_num_threads(threads)
            got = np.full_like(expected, np.nan)
            conv2d_workspace.sum_partials(partials, got)
            np.testing.assert_array_equal(got, expected)
    finally:
        cn.set_num_threads(saved)
