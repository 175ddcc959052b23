"""The NCHW <-> NHWC and weight layout kernels against NumPy's transpose, and the graph's input and flatten nodes."""
import numpy as np
import pytest

from cnnnumba.graph import nodes
from cnnnumba.kernels import layout


# (70, ...): more images than run_shares makes slots, so some slots take two images
SHAPES = [(1, 2, 1, 1), (3, 3, 5, 7), (2, 17, 4, 3), (70, 3, 2, 5)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_nchw_to_nhwc_matches_numpy(shape, dtype):
    source = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    source[0, -1, 0, -1] = np.nan
    target = np.full((shape[0], shape[2], shape[3], shape[1]), 7, dtype)
    layout.nchw_to_nhwc(source, target)
    np.testing.assert_array_equal(target, source.transpose(0, 2, 3, 1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_nhwc_to_nchw_matches_numpy(shape, dtype):
    source = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    source[-1, 0, -1, 0] = np.inf
    target = np.full((shape[0], shape[3], shape[1], shape[2]), 7, dtype)
    layout.nhwc_to_nchw(source, target)
    np.testing.assert_array_equal(target, source.transpose(0, 3, 1, 2))


# (C_out, C_in, kH, kW): blocks of SWAP_BLOCK cut at odd edges, one input channel (depthwise), a 1x1 kernel, and more
# blocks of input channels than run_shares makes slots
WEIGHT_SHAPES = [(1, 1, 1, 1), (5, 3, 7, 7), (33, 17, 3, 3), (144, 1, 3, 3), (40, 70, 1, 1), (8, 600, 1, 3)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", WEIGHT_SHAPES)
def test_weight_layouts_match_numpy_both_ways(shape, dtype):
    source = np.random.default_rng(3).standard_normal(shape).astype(dtype)
    source[0, -1, 0, -1] = np.nan
    target = np.full((shape[2], shape[3], shape[1], shape[0]), 7, dtype)
    assert layout.oihw_to_hwio(source, target) is target
    np.testing.assert_array_equal(target, source.transpose(2, 3, 1, 0))
    back = np.full(shape, 7, dtype)
    assert layout.hwio_to_oihw(target, back) is back
    np.testing.assert_array_equal(back, source)


def test_weight_layout_reads_a_strided_source_and_refuses_a_strided_target():
    source = np.arange(4 * 6 * 3 * 3, dtype=np.float32).reshape(6, 4, 3, 3).transpose(1, 0, 2, 3)
    target = np.empty((3, 3, 6, 4), np.float32)
    layout.oihw_to_hwio(source, target)
    np.testing.assert_array_equal(target, source.transpose(2, 3, 1, 0))
    with pytest.raises(ValueError, match="C-contiguous"):
        layout.oihw_to_hwio(source, np.empty((4, 6, 3, 3), np.float32).transpose(2, 3, 1, 0))
    with pytest.raises(ValueError, match="float32"):
        layout.oihw_to_hwio(source, np.empty((3, 3, 6, 4), np.float64))


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


@pytest.mark.parametrize("accumulate", [False, True])
def test_flatten_node_gives_nchw_order_and_its_gradient_back_in_nhwc(accumulate):
    rng = np.random.default_rng(2)
    x = nodes.Value((3, 2, 4, 5), np.float32, "x")
    x.buffer.array = rng.standard_normal(x.shape).astype(np.float32)
    x.needs_grad = True
    x.grad = nodes.Buffer(x.shape, np.float32, "x.grad")
    x.grad.array = rng.standard_normal(x.shape).astype(np.float32)
    earlier = x.grad.array.copy()
    out = nodes.Value((3, 40), np.float32, "flat")
    out.buffer.array = np.full(out.shape, -1, np.float32)
    out.grad = nodes.Buffer(out.shape, np.float32, "flat.grad")
    out.grad.array = rng.standard_normal(out.shape).astype(np.float32)
    node = nodes.Flatten([x], out)
    if accumulate:
        node.accumulate[0] = True
        node.scratch[0] = nodes.Buffer(x.shape, np.float32, "x.grad_part")
        node.scratch[0].array = np.full(x.shape, np.nan, np.float32)
    node.forward()
    np.testing.assert_array_equal(out.buffer.array, x.buffer.array.transpose(0, 3, 1, 2).reshape(3, 40))
    node.backward()
    delivered = out.grad.array.reshape(3, 5, 2, 4).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(x.grad.array, earlier + delivered if accumulate else delivered)
