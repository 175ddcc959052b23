"""The NCHW -> NHWC layout kernel against NumPy's transpose, and the graph's input node on each path."""
import numpy as np
import pytest

from cnnnumba.graph import nodes
from cnnnumba.kernels import layout


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 2, 1, 1), (3, 3, 5, 7), (2, 17, 4, 3)])
def test_nchw_to_nhwc_matches_numpy(shape, dtype):
    source = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    source[0, -1, 0, -1] = np.nan
    target = np.full((shape[0], shape[2], shape[3], shape[1]), 7, dtype)
    layout.nchw_to_nhwc(source, target)
    np.testing.assert_array_equal(target, source.transpose(0, 2, 3, 1))


@pytest.mark.parametrize("source", [
    np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5),                  # the kernel
    np.arange(2 * 1 * 4 * 5, dtype=np.float32).reshape(2, 1, 4, 5),                  # one channel: a copy
    np.arange(2 * 5 * 4 * 3, dtype=np.float32).reshape(2, 5, 4, 3).transpose(0, 3, 2, 1),  # strided
    np.arange(6 * 4, dtype=np.float64).reshape(6, 4),                                # 2-D input
])
def test_input_node_lays_out_every_batch_as_nhwc(source):
    shape = source.shape if source.ndim == 2 else (source.shape[0], source.shape[2], source.shape[3], source.shape[1])
    value = nodes.Value(shape, source.dtype, "input")
    value.buffer.array = np.full(shape, -1, source.dtype)
    node = nodes.InputNHWC(value)
    node.source = source
    node.forward()
    expected = source if source.ndim == 2 else source.transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(value.buffer.array, expected)
