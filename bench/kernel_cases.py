"""The kernel-level cases of bench/compare_outputs.py: public kernel entry points on the kernel tests' parameters.

Only entry points that stay across kernel restructures are called: the public functions of
cnnnumba.kernels.conv2d, pool2d, norm, fused, elementwise, matmul, loss and optim. The parameter lists are copied
from tests/kernels/test_*.py (so both trees run the same cases whatever their own tests say), plus the model
layers' shapes and a case per convolution variant. `kernel_cases()` maps each case's name to a function that
returns its outputs by name; each imports cnnnumba when called, from the tree on PYTHONPATH.
"""
import importlib
from functools import partial

import numpy as np

DTYPES = (np.float32, np.float64)

# ---- convolution: (batch, height, width, C_in, C_out, (kH, kW), stride, (pad_top, pad_bottom, pad_left,
# pad_right), dilation, groups) ----

# tests/kernels/test_conv2d.py CASES
CONV2D = [
    (2, 7, 6, 3, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (1, 5, 5, 2, 3, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    (2, 9, 8, 3, 2, (2, 2), (3, 3), (0, 0, 0, 0), (1, 1), 1),            # stride > kernel
    (1, 6, 9, 2, 5, (2, 4), (2, 1), (1, 1, 0, 2), (1, 1), 1),            # non-square kernel, asymmetric padding
    (2, 9, 9, 2, 3, (3, 3), (1, 2), (2, 2, 2, 2), (2, 2), 1),            # dilation
    (2, 8, 7, 4, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2),            # groups
    (2, 7, 7, 5, 5, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 5),            # depthwise
    (1, 6, 6, 3, 6, (3, 2), (1, 1), (0, 1, 1, 0), (1, 2), 3),            # channel multiplier 2, asymmetric pad
    (1, 5, 4, 2, 2, (2, 2), (1, 1), (1, 0, 0, 1), (1, 1), 1),            # "same"-style bottom/right pad
    (3, 11, 13, 3, 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),         # fast-path shapes (odd width)
    (2, 10, 12, 16, 48, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (2, 9, 17, 32, 40, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (1, 12, 12, 8, 32, (5, 5), (2, 2), (2, 2, 2, 2), (1, 1), 1),         # stride 2, 5x5
    (1, 10, 11, 9, 33, (3, 3), (1, 1), (2, 1, 1, 2), (2, 1), 1),         # dilation, asymmetric padding
    (2, 8, 8, 16, 32, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    (1, 9, 10, 32, 32, (3, 2), (1, 1), (1, 0, 0, 1), (2, 1), 1),
    (2, 6, 9, 40, 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),          # overlapping edge tiles
    (2, 9, 12, 2, 32, (3, 3), (2, 1), (1, 0, 2, 1), (1, 2), 1),          # few channels, width dilation 2
    (2, 9, 18, 3, 64, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),          # few channels, stride 2
    (3, 5, 9, 32, 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),          # several images per weight-grad chunk
    (2, 6, 17, 16, 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),         # 16 channels: narrow tiles
    (1, 5, 20, 24, 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),         # narrow tiles, overlapping channel tile
    (1, 6, 32, 16, 32, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),         # stride 2: backward-input by phases
    (2, 7, 17, 32, 64, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),         # stride 2, odd sizes: unequal phases
    (2, 6, 18, 32, 64, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1),         # 1x1 stride 2: phases without taps
    (1, 9, 10, 32, 32, (3, 2), (3, 1), (2, 2, 2, 2), (1, 1), 1),         # padding past the kernel, stride 3
    (1, 5, 10, 8, 96, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),          # 4 x 64 tiles
    (2, 7, 35, 16, 32, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1),         # 1x1: odd sizes, narrow edge tiles
    (1, 9, 20, 32, 96, (1, 1), (3, 2), (0, 0, 0, 0), (1, 1), 1),         # 1x1: stride 3x2, 4 x 64 tiles overlap
    (2, 5, 17, 16, 16, (1, 1), (1, 1), (0, 0, 0, 0), (2, 2), 1),         # 1x1: stride 1, dilation ignored
    (2, 6, 34, 32, 64, (1, 1), (2, 2), (1, 1, 1, 1), (1, 1), 1),         # 1x1 padded: phases without taps
]

# tests/kernels/test_conv2d_small.py CASES: (batch, height, width, C_in, C_out, (kH, kW), pads, dilation), stride 1
SMALL = [
    (2, 12, 12, 1, 6, (5, 5), (2, 2, 2, 2), (1, 1)),      # LeNet-5's first layer, smaller images
    (3, 9, 9, 6, 16, (5, 5), (0, 0, 0, 0), (1, 1)),       # LeNet-5's second layer
    (1, 7, 5, 3, 2, (3, 3), (1, 1, 1, 1), (1, 1)),        # batch 1: bands of rows, odd width
    (2, 6, 7, 2, 3, (1, 1), (0, 0, 0, 0), (1, 1)),        # 1x1 kernel
    (1, 9, 11, 4, 5, (7, 7), (3, 3, 3, 3), (1, 1)),       # 7x7 kernel, "same" padding
    (2, 8, 9, 16, 16, (3, 3), (1, 1, 1, 1), (1, 1)),      # 16 channels, rows narrower than a tile
    (2, 10, 9, 3, 4, (2, 4), (1, 0, 0, 2), (1, 1)),       # non-square kernel, asymmetric padding
    (2, 11, 12, 2, 3, (3, 3), (2, 2, 2, 2), (2, 3)),      # dilation
    (1, 6, 6, 2, 2, (2, 2), (3, 3, 3, 3), (1, 1)),        # padding past the kernel
    (2, 5, 13, 5, 1, (3, 2), (0, 1, 1, 0), (1, 2)),       # one output channel, width dilation only
    (17, 4, 4, 2, 3, (3, 3), (1, 1, 1, 1), (1, 1)),       # more images than weight-gradient chunks
    (1, 7, 7, 3, 5, (7, 7), (0, 0, 0, 0), (1, 1)),        # one output pixel
    (3, 4, 30, 2, 7, (1, 3), (0, 0, 1, 1), (1, 1)),       # 7 output channels, wide rows
    (2, 6, 6, 1, 16, (6, 1), (2, 3, 0, 0), (1, 1)),       # kernel as tall as the image
]

# tests/kernels/test_conv2d_winograd.py CASES: (batch, height, width, C_in, C_out, padding), 3x3 stride 1
WINOGRAD = [
    (2, 7, 9, 16, 32, 1), (1, 8, 8, 16, 16, 1), (2, 6, 5, 32, 16, 0), (1, 5, 7, 16, 48, 2), (3, 12, 11, 64, 64, 1),
    (1, 3, 3, 16, 16, 0), (2, 4, 5, 48, 32, 0), (1, 10, 13, 32, 80, 1), (2, 17, 6, 64, 16, 2),
    (1, 18, 22, 16, 16, 1), (2, 13, 10, 32, 32, 1),
]

# tests/kernels/test_conv2d_winograd_weight.py CASES: (batch, height, width, C_in, C_out, (pad_h, pad_w))
WINOGRAD_WEIGHT = [
    (2, 8, 8, 16, 16, (1, 1)), (1, 7, 9, 16, 32, (1, 1)), (2, 6, 5, 32, 16, (0, 0)), (1, 5, 7, 16, 48, (2, 2)),
    (3, 9, 10, 48, 64, (1, 0)), (2, 11, 6, 64, 32, (2, 1)), (1, 3, 3, 16, 16, (0, 0)), (5, 12, 12, 32, 64, (1, 1)),
]

# tests/kernels/test_conv2d_gemm.py CASES (groups 1)
GEMM = [
    (3, 12, 12, 1, 6, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1)),
    (2, 7, 7, 6, 16, (5, 5), (1, 1), (0, 0, 0, 0), (1, 1)),
    (1, 9, 8, 3, 4, (2, 3), (3, 2), (1, 0, 2, 1), (1, 1)),
    (2, 9, 9, 2, 3, (3, 3), (1, 2), (2, 2, 2, 2), (2, 2)),
    (1, 5, 4, 2, 2, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),
]

# tests/kernels/test_conv2d_columns.py COLUMNS: (x shape, weight shape, stride, (pad_top, pad_left), dilation)
COLUMNS = [
    ((2, 12, 10, 3), (3, 3, 3, 16), (1, 1), (1, 1), (1, 1)),
    ((3, 9, 11, 3), (3, 3, 3, 32), (1, 1), (1, 1), (1, 1)),
    ((2, 9, 18, 3), (3, 3, 3, 64), (2, 2), (1, 1), (1, 1)),
    ((2, 10, 12, 1), (3, 3, 1, 16), (1, 1), (0, 0), (1, 1)),
    ((2, 13, 9, 3), (3, 3, 3, 16), (2, 1), (2, 1), (2, 1)),
    ((1, 8, 70, 2), (5, 3, 2, 32), (1, 1), (2, 0), (1, 1)),
    ((2, 5, 6, 3), (2, 4, 3, 32), (1, 2), (1, 2), (1, 1)),
]

# The model zoo's layers at small sizes, and a variant per selector branch the tests reach only by forcing it
MODEL_LAYERS = [
    (2, 16, 16, 3, 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),         # ResNet-20 first layer: few channels
    (2, 16, 16, 16, 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),        # ResNet-20 stage 1: F(4x4)
    (2, 8, 8, 32, 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),          # stage 2: F(4x4)
    (2, 6, 6, 64, 64, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),          # stage 3: F(2x2)
    (2, 16, 16, 16, 32, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),        # stride-2 3x3: register tiles, phases
    (2, 16, 16, 16, 32, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1),        # 1x1 stride-2 projection
    (2, 12, 12, 3, 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),         # cifar-cnn first layer
    (2, 12, 12, 32, 64, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),        # cifar-cnn 32 -> 64
    (2, 6, 6, 64, 128, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),         # cifar-cnn 64 -> 128
    (1, 14, 14, 1, 6, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 1),          # LeNet-5 conv1, batch 1
    (2, 7, 7, 6, 16, (5, 5), (1, 1), (0, 0, 0, 0), (1, 1), 1),           # LeNet-5 conv2
    (2, 10, 10, 32, 32, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 1),        # 5x5 register tiles
    (2, 9, 9, 8, 8, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),            # im2col GEMM: stride 2, 8 channels
    (1, 11, 7, 8, 12, (3, 3), (2, 1), (1, 1, 1, 1), (1, 1), 1),          # im2col GEMM, odd sizes, batch 1
    (2, 9, 9, 16, 16, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 2),          # general: groups and dilation
    (1, 7, 9, 24, 24, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 24),         # general: depthwise, batch 1
    (1, 5, 5, 16, 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),          # F(4x4), batch 1, odd sizes
]


def _conv_table():
    """Every convolution case in one form, named by the list it comes from."""
    table = [(f"conv2d[{i}]", c) for i, c in enumerate(CONV2D)]
    table += [(f"small[{i}]", (b, h, w, ci, co, k, (1, 1), p, d, 1)) for i, (b, h, w, ci, co, k, p, d)
              in enumerate(SMALL)]
    table += [(f"winograd[{i}]", (b, h, w, ci, co, (3, 3), (1, 1), (p,) * 4, (1, 1), 1)) for i, (b, h, w, ci, co, p)
              in enumerate(WINOGRAD)]
    table += [(f"winograd_weight[{i}]", (b, h, w, ci, co, (3, 3), (1, 1), (p[0], p[0], p[1], p[1]), (1, 1), 1))
              for i, (b, h, w, ci, co, p) in enumerate(WINOGRAD_WEIGHT)]
    table += [(f"gemm[{i}]", (*c, 1)) for i, c in enumerate(GEMM)]
    table += [(f"columns[{i}]", (*x[:4], w[3], w[:2], s, (p[0], p[0], p[1], p[1]), d, 1))
              for i, (x, w, s, p, d) in enumerate(COLUMNS)]
    table += [(f"model_layers[{i}]", c) for i, c in enumerate(MODEL_LAYERS)]
    return table


CONV_CASES = _conv_table()


def conv_geometry(case):
    """(x shape, weight shape, output shape) NHWC / (kH, kW, C_in/groups, C_out) of a convolution case."""
    batch, height, width, cin, cout, kernel, stride, pad, dilation, groups = case
    out_h = (height + pad[0] + pad[1] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    out_w = (width + pad[2] + pad[3] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    return (batch, height, width, cin), (*kernel, cin // groups, cout), (batch, out_h, out_w, cout)


def conv_options(case):
    _, _, _, _, _, _, stride, pad, dilation, groups = case
    return dict(stride=stride, padding=(pad[0], pad[2]), dilation=dilation, groups=groups)


def _normal(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def _nan(like):
    """An output buffer full of NaN, so an element a kernel leaves unwritten shows as a difference."""
    return np.full(like.shape, np.nan, like.dtype)


def _conv_passes(x, w, b, dy, options, relu=True):
    kernels = importlib.import_module("cnnnumba.kernels.conv2d")
    outputs = {name: _nan(like) for name, like in (("forward", dy), ("forward_no_bias", dy), ("forward_relu", dy),
                                                   ("backward_input", x), ("backward_weight", w),
                                                   ("backward_bias", b))}
    kernels.conv2d_forward(x, w, b, outputs["forward"], **options)
    kernels.conv2d_forward(x, w, None, outputs["forward_no_bias"], **options)
    if relu:
        kernels.conv2d_forward(x, w, b, outputs["forward_relu"], relu=True, **options)
    else:
        del outputs["forward_relu"]
    kernels.conv2d_backward_input(dy, w, outputs["backward_input"], **options)
    kernels.conv2d_backward_weight(x, dy, outputs["backward_weight"], **options)
    kernels.conv2d_backward_bias(dy, outputs["backward_bias"])
    return outputs


def conv_case(case, dtype):
    rng = np.random.default_rng(0)
    x, w, b, dy = (_normal(rng, shape, dtype) for shape in (*conv_geometry(case)[:2], (case[4],),
                                                            conv_geometry(case)[2]))
    return _conv_passes(x, w, b, dy, conv_options(case))


def conv_layout_case(case, offset):
    """Operands starting `offset` floats past an aligned buffer, or (offset None) x in Fortran order."""
    rng = np.random.default_rng(0)
    dtype = np.float32 if offset is not None else np.float64
    x, w, b, dy = (_normal(rng, shape, dtype) for shape in (*conv_geometry(case)[:2], (case[4],),
                                                            conv_geometry(case)[2]))

    def shifted(array):
        if offset is None:
            return np.asfortranarray(array)
        view = np.empty(array.size + offset, array.dtype)[offset:].reshape(array.shape)
        view[...] = array
        return view

    return _conv_passes(shifted(x), shifted(w), b, shifted(dy), conv_options(case), relu=False)


def conv_special_values_case(value):
    """An inf or NaN input: the Winograd weight gradient falls back to the direct one; ReLU keeps NaN."""
    case = (2, 8, 8, 16, 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1)
    rng = np.random.default_rng(0)
    x, w, b, dy = (_normal(rng, shape, np.float32) for shape in (*conv_geometry(case)[:2], (case[4],),
                                                                 conv_geometry(case)[2]))
    x[1, 3, 4, 5] = value
    return _conv_passes(x, w, b, dy, conv_options(case))


# ---- pooling: tests/kernels/test_pool2d.py WINDOW_CASES: (N, H, W, C), kernel, stride, padding, dilation, ceil ----
WINDOW = [
    ((2, 6, 6, 3), (2, 2), (2, 2), (0, 0), (1, 1), False),
    ((1, 7, 5, 4), (3, 3), (2, 2), (1, 1), (1, 1), False),
    ((2, 7, 5, 4), (3, 3), (2, 2), (1, 1), (1, 1), True),
    ((1, 5, 5, 2), (2, 2), (3, 3), (0, 0), (1, 1), False),
    ((1, 5, 5, 2), (2, 2), (3, 3), (1, 1), (1, 1), True),
    ((2, 8, 9, 3), (3, 2), (1, 2), (1, 1), (2, 1), False),
    ((1, 9, 9, 1), (3, 3), (2, 3), (1, 0), (2, 3), True),
    ((3, 1, 4, 5), (1, 3), (1, 1), (0, 1), (1, 1), False),
    ((1, 1, 1, 2), (2, 2), (1, 1), (1, 1), (2, 2), False),
    ((0, 4, 4, 2), (2, 2), (2, 2), (0, 0), (1, 1), False),
    ((2, 7, 9, 5), (2, 3), (2, 3), (0, 0), (1, 1), False),
    ((2, 7, 5, 3), (2, 2), (2, 2), (0, 0), (1, 1), True),
    ((2, 9, 7, 6), (2, 2), (2, 2), (0, 0), (1, 1), False),
    ((1, 8, 9, 5), (3, 3), (2, 2), (0, 0), (1, 1), False),
    ((2, 5, 8, 7), (2, 2), (1, 2), (0, 0), (1, 1), False),
    ((1, 6, 6, 20), (2, 2), (2, 2), (0, 0), (1, 1), False),
    ((2, 6, 8, 16), (2, 2), (2, 2), (0, 0), (1, 1), False),
    ((2, 9, 9, 33), (2, 2), (2, 2), (0, 0), (1, 1), False),
    ((1, 7, 7, 17), (2, 2), (1, 1), (0, 0), (1, 1), False),
    ((2, 4, 6, 5), (2, 2), (2, 2), (1, 1), (1, 1), False),
    ((1, 5, 5, 3), (2, 2), (2, 2), (0, 0), (2, 2), False),
    ((1, 3, 3, 4), (2, 2), (2, 2), (0, 0), (1, 1), True),
    # past pool2d.SERIAL_ELEMENTS (2^17): the parallel kernels
    ((4, 32, 32, 40), (2, 2), (2, 2), (0, 0), (1, 1), False),
    ((3, 34, 34, 48), (3, 3), (2, 2), (1, 1), (1, 1), True),
    ((4, 32, 32, 6), (2, 2), (2, 2), (0, 0), (1, 1), False),
]
# tests/kernels/test_pool2d.py adaptive cases: (N, H, W, C), output size
ADAPTIVE = [((2, 5, 7, 3), (3, 4)), ((1, 4, 4, 2), (1, 1)), ((1, 3, 5, 1), (5, 7)), ((2, 6, 6, 4), (6, 6)),
            ((1, 10, 3, 2), (4, 2))]


def _pool_size(size, kernel, stride, pad, dilation, ceil_mode):
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def max_pool_case(x, kernel, stride, padding, dilation, ceil_mode):
    pool2d = importlib.import_module("cnnnumba.kernels.pool2d")
    shape = (x.shape[0], *(_pool_size(x.shape[1 + a], kernel[a], stride[a], padding[a], dilation[a], ceil_mode)
                           for a in (0, 1)), x.shape[3])
    out, indices = np.full(shape, np.nan, x.dtype), np.full(shape, -7, np.int64)
    args = (*kernel, *stride, *padding, *dilation)
    pool2d.max_pool2d_forward(x, out, indices, *args)
    grad_in = _nan(x)
    pool2d.max_pool2d_backward(np.random.default_rng(2).standard_normal(shape).astype(x.dtype), indices, grad_in,
                               *args)
    return {"out": out, "indices": indices, "grad_in": grad_in}


def avg_pool_case(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor):
    pool2d = importlib.import_module("cnnnumba.kernels.pool2d")
    shape = (x.shape[0], *(_pool_size(x.shape[1 + a], kernel[a], stride[a], padding[a], 1, ceil_mode)
                           for a in (0, 1)), x.shape[3])
    args = (*kernel, *stride, *padding, count_include_pad, divisor)
    out, grad_in = np.full(shape, np.nan, x.dtype), _nan(x)
    pool2d.avg_pool2d_forward(x, out, *args)
    pool2d.avg_pool2d_backward(np.random.default_rng(2).standard_normal(shape).astype(x.dtype), grad_in, *args)
    return {"out": out, "grad_in": grad_in}


def adaptive_pool_case(shape, out_hw, dtype):
    pool2d = importlib.import_module("cnnnumba.kernels.pool2d")
    x = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    out_shape = (shape[0], *out_hw, shape[3])
    out, grad_in = np.full(out_shape, np.nan, dtype), _nan(x)
    pool2d.adaptive_avg_pool2d_forward(x, out)
    pool2d.adaptive_avg_pool2d_backward(np.random.default_rng(2).standard_normal(out_shape).astype(dtype), grad_in)
    return {"out": out, "grad_in": grad_in}


def max_pool_special_values_case(channels):
    """Every pattern of NaN, +-inf, ties and ordinary values over the four taps of a 2x2 window."""
    values = np.array([np.nan, np.inf, -np.inf, 1.0, 1.0, 0.0, -2.0], dtype=np.float32)
    patterns = np.stack(np.meshgrid(*[np.arange(values.size)] * 4, indexing="ij"), -1).reshape(-1, 4)
    count = patterns.shape[0]
    shifted = (np.arange(count) + 37 * np.arange(channels)[:, None]) % count
    windows = values[patterns[shifted]].reshape(channels, count, 2, 2)
    x = windows.reshape(channels, 1, count, 2, 2).transpose(1, 3, 2, 4, 0).reshape(1, 2, 2 * count, channels)
    return max_pool_case(np.ascontiguousarray(x), (2, 2), (2, 2), (0, 0), (1, 1), False)


def _pool_cases():
    cases = {}
    for i, (shape, kernel, stride, padding, dilation, ceil_mode) in enumerate(WINDOW):
        for dtype in DTYPES:
            x = np.random.default_rng(1).standard_normal(shape).astype(dtype)
            cases[f"pool2d/max[{i}]/{dtype.__name__}"] = partial(max_pool_case, x, kernel, stride, padding, dilation,
                                                                 ceil_mode)
        if dilation != (1, 1):
            continue
        x = np.random.default_rng(1).standard_normal(shape)
        for include in (True, False):
            for divisor in (0, 3):
                cases[f"pool2d/avg[{i}]/include_pad={include}/divisor={divisor}"] = partial(
                    avg_pool_case, x, kernel, stride, padding, ceil_mode, include, divisor)
        cases[f"pool2d/avg[{i}]/float32"] = partial(avg_pool_case, x.astype(np.float32), kernel, stride, padding,
                                                    ceil_mode, True, 0)
    for channels in (6, 16, 19):
        cases[f"pool2d/max_special_values/channels={channels}"] = partial(max_pool_special_values_case, channels)
    for i, (shape, out_hw) in enumerate(ADAPTIVE):
        for dtype in DTYPES:
            cases[f"pool2d/adaptive[{i}]/{dtype.__name__}"] = partial(adaptive_pool_case, shape, out_hw, dtype)
    return cases


def _conv_cases():
    cases = {f"conv2d/{name}/{dtype.__name__}": partial(conv_case, case, dtype)
             for name, case in CONV_CASES for dtype in DTYPES}
    for index in (16, 27):
        for offset in (1, 4):
            cases[f"conv2d/layout/conv2d[{index}]/offset={offset}"] = partial(conv_layout_case, CONV2D[index], offset)
    cases["conv2d/layout/conv2d[0]/fortran_order"] = partial(conv_layout_case, CONV2D[0], None)
    for label, value in (("inf", np.inf), ("-inf", -np.inf), ("nan", np.nan)):
        cases[f"conv2d/special_values/{label}"] = partial(conv_special_values_case, value)
    return cases


# ---- batch norm (kernels/norm.py), the fused kernels (kernels/fused.py): (rows, channels) ----
NORM_SHAPES = [(2, 3), (7, 1), (150, 4), (600, 5), (300, 32)]                 # tests/kernels/test_norm.py
FUSED_SHAPES = [(1, 3), (7, 5), (600, 4), (515, 16), (37, 32), (3, 64)]       # tests/kernels/test_fused.py


def _norm_inputs(rows, channels, dtype, seed=0, scale=2.0, offset=0.0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, channels)) * scale + offset).astype(dtype)
    return x, *(rng.standard_normal(size).astype(dtype) for size in (channels, channels, (rows, channels)))


def _named(names, arrays):
    return dict(zip(names, arrays))


def norm_case(shape, dtype, offset=0.0):
    norm = importlib.import_module("cnnnumba.kernels.norm")
    x, weight, bias, grad_y = _norm_inputs(*shape, dtype, offset=offset)
    running_mean, running_var = bias * 0.5, np.abs(weight) + 0.5
    train = norm.batch_norm_forward_train(x, weight, bias, 1e-5)
    outputs = _named(("train_y", "train_mean", "train_variance", "train_invstd"), train)
    outputs["eval_y"] = norm.batch_norm_forward_eval(x, running_mean, running_var, weight, bias, 1e-5)
    outputs.update(_named(("backward_train_x", "backward_train_weight", "backward_train_bias"),
                          norm.batch_norm_backward_train(grad_y, x, train[1], train[3], weight)))
    outputs.update(_named(("backward_eval_x", "backward_eval_weight", "backward_eval_bias"),
                          norm.batch_norm_backward_eval(grad_y, x, running_mean, running_var, weight, 1e-5)))
    outputs.update(_named(("statistics_mean", "statistics_variance"), norm.channel_statistics(x)))
    return outputs


def _batch_norm_add_relu(fused, direction, *arguments):
    """The tree's fused batch norm + add + ReLU `direction` ("forward" or "backward") on the arguments of trees
    before clamps (batch_norm_add_relu_*); trees with clamps (batch_norm_add_act_*) take fused.RELU after the
    sixth (bias forward, weight backward)."""
    if hasattr(fused, "RELU"):
        return getattr(fused, f"batch_norm_add_act_{direction}")(*arguments[:6], fused.RELU, *arguments[6:])
    return getattr(fused, f"batch_norm_add_relu_{direction}")(*arguments)


def fused_case(shape, dtype, relu):
    fused = importlib.import_module("cnnnumba.kernels.fused")
    # trees with clamps (fused.RELU) take the activation as a clamp, older ones as a boolean
    activation = (fused.RELU if relu else fused.NO_CLAMP) if hasattr(fused, "RELU") else relu
    x, weight, bias, grad_y = _norm_inputs(*shape, dtype, scale=3.0, offset=1.0)
    if shape[0] == 1:  # training batch norm needs two rows
        x, grad_y = np.concatenate([x, x + 1]), np.concatenate([grad_y, -grad_y])
    rows, channels = x.shape
    chunks = fused.chunk_count(rows)
    stats = np.full((3, channels), np.nan)
    fused.batch_norm_statistics(x, 1e-5, np.full((2, chunks, channels), np.nan), stats[0], stats[1], stats[2])
    y = _nan(x)
    fused.batch_norm_act_forward(x, stats[0], stats[2], weight, bias, activation, np.empty((3, channels), dtype), y)
    grad_x, grad_weight, grad_bias = _nan(x), np.full(channels, np.nan, dtype), np.full(channels, np.nan, dtype)
    fused.batch_norm_act_backward(grad_y, x, stats[0], stats[2], weight, bias, activation,
                                  np.full((chunks, channels), 7.0), np.full((chunks, channels), 7.0),
                                  np.empty((2, channels)), np.full((7, channels), 7, dtype), grad_x, grad_weight,
                                  grad_bias)
    outputs = {"statistics": stats, "y": y, "grad_x": grad_x, "grad_weight": grad_weight, "grad_bias": grad_bias}
    if relu:
        shortcut = _norm_inputs(rows, channels, dtype, seed=2, scale=3.0, offset=0.0)[0]
        shortcut[0, 0] = np.nan
        added = _nan(x)
        _batch_norm_add_relu(fused, "forward", x, shortcut, stats[0], stats[2], weight, bias,
                             np.empty((3, channels), dtype), added)
        arrays = [_nan(x), _nan(x), np.full(channels, np.nan, dtype), np.full(channels, np.nan, dtype)]
        _batch_norm_add_relu(fused, "backward", grad_y, added, x, stats[0], stats[2], weight,
                             np.full((chunks, channels), 7.0), np.full((chunks, channels), 7.0),
                             np.empty((2, channels)), np.full((7, channels), 7, dtype), *arrays)
        outputs["add_relu_y"] = added
        outputs.update(_named(("add_relu_grad_shortcut", "add_relu_grad_x", "add_relu_grad_weight",
                               "add_relu_grad_bias"), arrays))
        relu_grad_x, relu_grad_bias = _nan(x), np.full(channels, np.nan, dtype)
        fused.relu_backward_bias_grad(grad_y, np.maximum(y, 0), relu_grad_x, np.empty((chunks, channels)),
                                      relu_grad_bias)
        outputs.update(relu_backward_grad_x=relu_grad_x, relu_backward_grad_bias=relu_grad_bias)
    return outputs


def add_relu_case(size, dtype):
    fused = importlib.import_module("cnnnumba.kernels.fused")
    rng = np.random.default_rng(size)
    a, b = rng.standard_normal(size).astype(dtype), rng.standard_normal(size).astype(dtype)
    a[-1] = np.nan
    out = _nan(a)
    fused.add_relu_forward(a, b, out)
    return {"out": out}


def _norm_cases():
    cases = {}
    for dtype in DTYPES:
        name = dtype.__name__
        for shape in NORM_SHAPES:
            cases[f"norm/{shape}/{name}"] = partial(norm_case, shape, dtype)
        cases[f"norm/large_mean/{name}"] = partial(norm_case, (4096, 3), dtype, 1e4)
        cases[f"norm/chunks/{name}"] = partial(norm_case, (2000, 6), dtype)
        for shape in FUSED_SHAPES:
            for relu in (False, True):
                cases[f"fused/batch_norm/{shape}/relu={relu}/{name}"] = partial(fused_case, shape, dtype, relu)
        for size in (1, 37, 32768 + 5, 3 * 32768):
            cases[f"fused/add_relu/{size}/{name}"] = partial(add_relu_case, size, dtype)
    return cases


# ---- elementwise (tests/kernels/test_elementwise.py) ----
ELEMENTWISE_SIZES = [0, 1, 7, 32768, 2 * 32768 + 5]
SPECIALS = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-30, -1e-30, 80.0, -80.0, 800.0, -800.0])
ACTIVATIONS = {  # name: (forward(module, x, out), backward(module, grad, x, y, out))
    "relu": (lambda m, x, out: m.relu_forward(x, out), lambda m, g, x, y, out: m.relu_backward(g, y, out)),
    "leaky_relu": (lambda m, x, out: m.leaky_relu_forward(x, x.dtype.type(0.2), out),
                   lambda m, g, x, y, out: m.leaky_relu_backward(g, x, x.dtype.type(0.2), out)),
    "leaky_relu_negative_slope": (lambda m, x, out: m.leaky_relu_forward(x, x.dtype.type(-1.5), out),
                                  lambda m, g, x, y, out: m.leaky_relu_backward(g, x, x.dtype.type(-1.5), out)),
    "gelu": (lambda m, x, out: m.gelu_forward(x, False, out), lambda m, g, x, y, out: m.gelu_backward(g, x, False, out)),
    "gelu_tanh": (lambda m, x, out: m.gelu_forward(x, True, out),
                  lambda m, g, x, y, out: m.gelu_backward(g, x, True, out)),
    "sigmoid": (lambda m, x, out: m.sigmoid_forward(x, out), lambda m, g, x, y, out: m.sigmoid_backward(g, y, out)),
    "tanh": (lambda m, x, out: m.tanh_forward(x, out), lambda m, g, x, y, out: m.tanh_backward(g, y, out)),
}


def _elementwise_inputs(size, dtype):
    rng = np.random.default_rng(size)
    x = (rng.standard_normal(size) * 4).astype(dtype)
    x[:min(size, SPECIALS.size)] = SPECIALS[:size]
    return x, rng.standard_normal(size).astype(dtype)


def activation_case(name, size, dtype):
    elementwise = importlib.import_module("cnnnumba.kernels.elementwise")
    x, grad = _elementwise_inputs(size, dtype)
    forward, backward = ACTIVATIONS[name]
    y, grad_in = _nan(x), _nan(x)
    with np.errstate(all="ignore"):
        forward(elementwise, x, y)
        backward(elementwise, grad, x, y, grad_in)
    return {"y": y, "grad_in": grad_in}


def dropout_case(size):
    elementwise = importlib.import_module("cnnnumba.kernels.elementwise")
    x, _ = _elementwise_inputs(size, np.float32)
    out = _nan(x)
    elementwise.dropout_apply(x, np.random.default_rng(1).random(size) >= 0.3, np.float32(1 / 0.7), out)
    return {"out": out}


# ---- linear layers (tests/kernels/test_matmul.py): rows, in_features, out_features, bias ----
LINEAR = [(4, 3, 2, True), (1, 5, 7, True), (300, 17, 9, True), (6, 4, 1, False), (0, 3, 2, True), (3, 0, 2, True),
          (64, 400, 120, True)]


def linear_case(rows, in_features, out_features, with_bias, dtype):
    matmul = importlib.import_module("cnnnumba.kernels.matmul")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, in_features)).astype(dtype)
    weight = rng.standard_normal((out_features, in_features)).astype(dtype)
    bias = rng.standard_normal(out_features if with_bias else 0).astype(dtype)
    grad_out = rng.standard_normal((rows, out_features)).astype(dtype)
    out, grad_x, grad_weight = np.full((rows, out_features), np.nan, dtype), _nan(x), _nan(weight)
    grad_bias = np.full(out_features, np.nan, dtype)
    matmul.linear_forward(x, weight, bias, out)
    matmul.linear_backward_input(grad_out, weight, grad_x)
    matmul.linear_backward_weight(grad_out, x, grad_weight)
    matmul.linear_backward_bias(grad_out, grad_bias)
    return {"out": out, "grad_x": grad_x, "grad_weight": grad_weight, "grad_bias": grad_bias}


# ---- softmax and cross-entropy (tests/kernels/test_loss.py) ----
LOSS_SHAPES = [(1, 1), (1, 5), (4, 3), (33, 10), (300, 7)]
LOSS_SCALES = [1.0, 100.0, 1e4]
CROSS_ENTROPY = [(4, 3, False, -100, 0.0), (4, 3, True, -100, 0.0), (6, 5, True, 2, 0.0), (6, 5, False, -1, 0.3),
                 (6, 5, True, -1, 0.3), (8, 1, False, -100, 1.0)]  # rows, classes, weighted, ignore, smoothing


def softmax_case(shape, dtype, scale):
    loss = importlib.import_module("cnnnumba.kernels.loss")
    x = (np.random.default_rng(0).standard_normal(shape) * scale).astype(dtype)
    grad_y = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    outputs = {}
    for name in ("softmax", "log_softmax"):
        y = getattr(loss, f"{name}_forward")(x)
        outputs[name] = y
        outputs[f"{name}_backward"] = getattr(loss, f"{name}_backward")(grad_y, y)
    return outputs


def cross_entropy_case(rows, classes, weighted, ignore_index, label_smoothing, dtype, scale):
    loss = importlib.import_module("cnnnumba.kernels.loss")
    rng = np.random.default_rng(2)
    logits = (np.random.default_rng(0).standard_normal((rows, classes)) * scale).astype(dtype)
    target = rng.integers(0, classes, rows)
    if ignore_index >= 0 or ignore_index == -1:
        target[::3] = ignore_index
    class_weight = rng.uniform(0.5, 2.0, classes) if weighted else np.ones(classes)
    row_scale = rng.standard_normal(rows)
    forward = loss.cross_entropy_forward(logits, target, class_weight, ignore_index, label_smoothing)
    outputs = {f"forward[{i}]": np.asarray(value) for i, value in enumerate(forward)}
    outputs["backward"] = loss.cross_entropy_backward(logits, target, class_weight, forward[2], row_scale,
                                                      ignore_index, label_smoothing)
    return outputs


# ---- optimizer updates (tests/kernels/test_optim.py) ----
SGD = [(0.0, 0.0, 0.0, False, False, False), (0.9, 0.0, 0.0, False, False, True), (0.9, 0.1, 0.01, False, False, False),
       (0.9, 0.0, 0.01, True, False, False), (0.5, 0.0, 0.0, True, True, True), (0.0, 0.0, 0.1, False, True, False)]
ADAM = [(0.9, 0.0, 1.0, False, False), (0.9, 0.01, 1.0, False, False), (0.9, 0.0, 1 - 1e-3 * 0.01, True, False),
        (0.3, 0.0, 1.0, True, True)]  # beta1, weight_decay, decay_factor, amsgrad, maximize
OPTIM_SIZES = [1, 7, 40_003]


def sgd_case(kernel, n, dtype, momentum, dampening, weight_decay, nesterov, maximize, first_step):
    optim = importlib.import_module("cnnnumba.kernels.optim")
    rng = np.random.default_rng(0)
    param, grad, buffer = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    getattr(optim, kernel)(param, grad, buffer, lr=dtype(0.05), momentum=dtype(momentum),
                           one_minus_dampening=dtype(1 - dampening), weight_decay=dtype(weight_decay),
                           nesterov=nesterov, maximize=maximize, first_step=first_step)
    return {"param": param, "momentum_buffer": buffer}


def adam_case(kernel, n, dtype, beta1, weight_decay, decay_factor, amsgrad, maximize):
    optim = importlib.import_module("cnnnumba.kernels.optim")
    rng = np.random.default_rng(0)
    param, grad, exp_avg = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    rng = np.random.default_rng(1)
    exp_avg_sq, max_exp_avg_sq = (np.abs(rng.standard_normal(n).astype(dtype)) for _ in range(2))
    step = 3
    getattr(optim, kernel)(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, beta1=dtype(beta1),
                           one_minus_beta1=dtype(1 - beta1), beta2=dtype(0.999), one_minus_beta2=dtype(1 - 0.999),
                           eps=dtype(1e-8), weight_decay=dtype(weight_decay), decay_factor=dtype(decay_factor),
                           step_size=dtype(1e-3 / (1 - beta1 ** step)),
                           bias_correction2_sqrt=dtype((1 - 0.999 ** step) ** 0.5), amsgrad=amsgrad,
                           maximize=maximize)
    return {"param": param, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq, "max_exp_avg_sq": max_exp_avg_sq}


def _small_kernel_cases():
    cases = {}
    for dtype in DTYPES:
        name = dtype.__name__
        for activation in ACTIVATIONS:
            for size in ELEMENTWISE_SIZES:
                cases[f"elementwise/{activation}/{size}/{name}"] = partial(activation_case, activation, size, dtype)
        for case in LINEAR:
            cases[f"matmul/linear{case}/{name}"] = partial(linear_case, *case, dtype)
        for scale in LOSS_SCALES:
            for shape in LOSS_SHAPES:
                cases[f"loss/softmax{shape}/scale={scale:g}/{name}"] = partial(softmax_case, shape, dtype, scale)
            for case in CROSS_ENTROPY:
                cases[f"loss/cross_entropy{case}/scale={scale:g}/{name}"] = partial(cross_entropy_case, *case, dtype,
                                                                                    scale)
        for n in OPTIM_SIZES:
            for kernel in ("sgd_update", "sgd_update_parallel"):
                for case in SGD:
                    cases[f"optim/{kernel}{case}/n={n}/{name}"] = partial(sgd_case, kernel, n, dtype, *case)
            for kernel in ("adam_update", "adam_update_parallel"):
                for case in ADAM:
                    cases[f"optim/{kernel}{case}/n={n}/{name}"] = partial(adam_case, kernel, n, dtype, *case)
    for size in ELEMENTWISE_SIZES:
        cases[f"elementwise/dropout_apply/{size}"] = partial(dropout_case, size)
    return cases


def kernel_cases():
    """Every kernel case: name -> function returning {output name: ndarray}."""
    return {**_conv_cases(), **_pool_cases(), **_norm_cases(), **_small_kernel_cases()}
