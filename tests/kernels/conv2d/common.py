"""What every conv kernel test shares: one case type, one array builder, one tolerance rule, and one way to run a
pass through the public entry points (cnnnumba.kernels.conv2d) or their NumPy twins (cnnnumba.reference)."""
import importlib
from collections import namedtuple

import numpy as np

import cnnnumba as cn
from cnnnumba import reference, shapes
from cnnnumba.kernels import conv2d as kernels
from cnnnumba.kernels import norm
from tests.helpers import rms_at_least_one

# select() shadows its module's name in the package, so the module (its rules, constants and plan cache) is
# reached by its full name.
select_module = importlib.import_module("cnnnumba.kernels.conv2d.select")

PASSES = ("forward", "backward_input", "backward_weight", "backward_bias")
PASS_OF = {"forward": kernels.Pass.FORWARD, "backward_input": kernels.Pass.BACKWARD_INPUT,
           "backward_weight": kernels.Pass.BACKWARD_WEIGHT}


def _pair(value):
    return (value, value) if np.isscalar(value) else tuple(value)


def _padding(value):
    """(top, bottom, left, right) from an int, a (height, width) pair or the four sides."""
    value = _pair(value)
    return (value[0], value[0], value[1], value[1]) if len(value) == 2 else tuple(value)


_Fields = namedtuple("ConvCase", "batch h w c_in c_out kernel stride padding dilation groups dtype")


class ConvCase(_Fields):
    """One convolution: NHWC input (batch, h, w, c_in), c_out outputs; kernel, stride and dilation as (h, w) or
    one int; padding (top, bottom, left, right), (h, w) or one int; the bottom/right padding sets the output
    size (the kernels take (top, left) only)."""
    __slots__ = ()

    def __new__(cls, batch, h, w, c_in, c_out, kernel=3, stride=1, padding=0, dilation=1, groups=1,
                dtype=np.float32):
        return super().__new__(cls, batch, h, w, c_in, c_out, _pair(kernel), _pair(stride), _padding(padding),
                               _pair(dilation), groups, np.dtype(dtype))

    def cast(self, dtype):
        return self._replace(dtype=np.dtype(dtype))

    @property
    def x_shape(self):
        return self.batch, self.h, self.w, self.c_in

    @property
    def weight_shape(self):
        return (*self.kernel, self.c_in // self.groups, self.c_out)

    @property
    def out_shape(self):
        top, bottom, left, right = self.padding
        out_h = shapes.conv_output_size(self.h, self.kernel[0], self.stride[0], top, bottom, self.dilation[0])
        out_w = shapes.conv_output_size(self.w, self.kernel[1], self.stride[1], left, right, self.dilation[1])
        return self.batch, out_h, out_w, self.c_out

    @property
    def options(self):
        """The keyword arguments every entry point and twin takes."""
        return dict(stride=self.stride, padding=(self.padding[0], self.padding[2]), dilation=self.dilation,
                    groups=self.groups)

    @property
    def geometry(self):
        return kernels.Geometry(self.x_shape, self.weight_shape, self.out_shape, self.stride,
                                (self.padding[0], self.padding[2]), self.dilation, self.groups)

    def selected(self, pass_name):
        """The Variant select() picks for one pass of this case."""
        return kernels.select(PASS_OF[pass_name], self.geometry, self.dtype)

    def __str__(self):
        return (f"{self.batch}x{self.h}x{self.w}:{self.c_in}->{self.c_out}"
                f"-k{self.kernel[0]}x{self.kernel[1]}-s{self.stride[0]}x{self.stride[1]}"
                f"-p{','.join(map(str, self.padding))}-d{self.dilation[0]}x{self.dilation[1]}-g{self.groups}"
                f"-{self.dtype.name}")


def case_id(case):
    return str(case)


Arrays = namedtuple("Arrays", "x weight bias grad_out")


def arrays(case, seed=0):
    """Standard-normal x, weight, bias and grad_out of the case's shapes and dtype (NHWC, (kH, kW, C_in/groups,
    C_out))."""
    rng = np.random.default_rng(seed)
    shapes_ = (case.x_shape, case.weight_shape, (case.c_out,), case.out_shape)
    return Arrays(*(rng.standard_normal(shape).astype(case.dtype) for shape in shapes_))


def output_like(name, data):
    """An uninitialised output array of a pass."""
    source = {"forward": data.grad_out, "backward_input": data.x, "backward_weight": data.weight,
              "backward_bias": data.bias}[name]
    return np.empty(source.shape, source.dtype)


def run_pass(name, case, data, module=kernels, relu=False, bias=True, workspace=None, out=None):
    """One pass of the case on `data` through the entry points (module=kernels) or the NumPy twins
    (module=reference); out defaults to a NaN-filled array, so whatever a pass leaves unwritten shows."""
    out = np.full_like(output_like(name, data), np.nan) if out is None else out
    extra = {} if workspace is None else {"workspace": workspace}
    if name == "forward":
        return module.conv2d_forward(data.x, data.weight, data.bias if bias else None, out, relu=relu,
                                     **case.options, **extra)
    if name == "backward_input":
        return module.conv2d_backward_input(data.grad_out, data.weight, out, **case.options, **extra)
    if name == "backward_weight":
        return module.conv2d_backward_weight(data.x, data.grad_out, out, **case.options, **extra)
    return module.conv2d_backward_bias(data.grad_out, out, **extra)


def expected_pass(name, case, data, relu=False, bias=True):
    """The NumPy twin of a pass, in float64 (so a float32 kernel is held to the exact sum, not to a second
    float32 rounding)."""
    data64 = Arrays(*(a.astype(np.float64) for a in data))
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf where a test plants non-finite values
        return run_pass(name, case, data64, module=reference, relu=relu, bias=bias)


# float32 kernels against the exact (float64) sums: 2e-4 of each value, plus 2e-5 of the RMS of the expected
# array (at least 1). Rounding grows with the values combined into each result (a weight gradient sums
# batch x pixels products; a Winograd output mixes 16 or 36 transformed products), which the RMS follows;
# a wrong tap, channel or edge tile errs by O(1) x RMS. Measured: Winograd F(4x4) at 32 channels errs up to
# ~0.9e-5 x RMS, its weight gradients ~1.6e-5 x RMS at batch 64; direct and GEMM sums ~1e-6 x RMS.
# float64: 1e-11 of each value plus 1e-12 x RMS.
TOLERANCE = {np.dtype(np.float32): (2e-4, 2e-5), np.dtype(np.float64): (1e-11, 1e-12)}


def assert_close(got, want, dtype=None, err_msg=""):
    """The one tolerance rule of the conv kernel tests (see TOLERANCE): NaN where want has NaN, infinities equal
    with their sign, finite values within rtol + atol_per_rms x RMS(finite want)."""
    dtype = np.dtype(dtype or got.dtype)
    rtol, atol_per_rms = TOLERANCE[dtype]
    want = np.asarray(want)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{err_msg}: NaN positions")
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol_per_rms * rms_at_least_one(want[np.isfinite(want)]),
                               err_msg=err_msg)


def check_passes(case, data=None, names=PASSES, relu=False, bias=True, workspace=None):
    """Run each named pass through the entry points and compare it with the twin; returns {name: result}."""
    data = arrays(case) if data is None else data
    results = {}
    for name in names:
        got = run_pass(name, case, data, relu=relu, bias=bias, workspace=workspace)
        assert got.dtype == case.dtype, name
        assert_close(got, expected_pass(name, case, data, relu=relu, bias=bias), case.dtype, f"{case} {name}")
        results[name] = got
    return results


def on_threads(run, counts=(1, 2)):
    """[run() with cn.set_num_threads(n) for n in counts], the thread count restored after."""
    saved = cn.get_num_threads()
    results = []
    try:
        for threads in counts:
            cn.set_num_threads(threads)
            results.append(run())
    finally:
        cn.set_num_threads(saved)
    return results


def shifted(array, offset):
    """A copy of array starting `offset` elements into a fresh buffer (misaligned for offset % 16 != 0)."""
    buffer = np.empty(array.size + offset, array.dtype)
    view = buffer[offset:].reshape(array.shape)
    view[...] = array
    return view


def dirty_workspace(size, misalign=3):
    """size bytes starting `misalign` bytes past a cache line, every byte 0xFF (NaN as floats)."""
    return np.full(size + 64 + misalign, 0xFF, np.uint8)[misalign:misalign + size]


def workspace_bytes(name, case):
    return kernels.conv2d_workspace_bytes(name, case.x_shape, case.weight_shape, case.out_shape, case.dtype,
                                          **case.options)


def forced(variant, *names):
    """force_variant of one Variant for the named passes (all three when none are named)."""
    names = names or ("forward", "backward_input", "backward_weight")
    return kernels.force_variant(**{name: variant for name in names})


# The entry points' table (batch, h, w, C_in, C_out, kernel, stride, (top, bottom, left, right), dilation, groups):
# every variant of every pass, their edge tiles and odd sizes. Tests name rows by index.
CASES = [ConvCase(*row) for row in [
    (2, 7, 6, 3, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (1, 5, 5, 2, 3, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    (2, 9, 8, 3, 2, (2, 2), (3, 3), (0, 0, 0, 0), (1, 1), 1),            # stride > kernel
    (1, 6, 9, 2, 5, (2, 4), (2, 1), (1, 1, 0, 2), (1, 1), 1),            # non-square kernel, asymmetric padding
    (2, 9, 9, 2, 3, (3, 3), (1, 2), (2, 2, 2, 2), (2, 2), 1),            # dilation
    (2, 8, 7, 4, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2),            # groups
    (2, 7, 7, 5, 5, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 5),            # depthwise
    (1, 6, 6, 3, 6, (3, 2), (1, 1), (0, 1, 1, 0), (1, 2), 3),            # channel multiplier 2, asymmetric pad
    (1, 5, 4, 2, 2, (2, 2), (1, 1), (1, 0, 0, 1), (1, 1), 1),            # "same"-style bottom/right pad
    (3, 11, 13, 3, 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),         # tiled shapes (odd width)
    (2, 10, 12, 16, 48, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (2, 9, 17, 32, 40, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (1, 12, 12, 8, 32, (5, 5), (2, 2), (2, 2, 2, 2), (1, 1), 1),         # tiled, stride 2
    (1, 10, 11, 9, 33, (3, 3), (1, 1), (2, 1, 1, 2), (2, 1), 1),         # tiled, dilation, asymmetric padding
    (2, 8, 8, 16, 32, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    (1, 9, 10, 32, 32, (3, 2), (1, 1), (1, 0, 0, 1), (2, 1), 1),         # tiled backward-input, dilation, asym
    (2, 6, 9, 40, 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),          # tiled, overlapping edge tiles
    (2, 9, 12, 2, 32, (3, 3), (2, 1), (1, 0, 2, 1), (1, 2), 1),          # few channels, width dilation 2
    (2, 9, 18, 3, 64, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),          # few channels, stride 2: kW taps folded
    (3, 5, 9, 32, 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),          # several images per weight-grad chunk
    (2, 6, 17, 16, 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),         # 16 channels: narrow tiles, edge tile
    (1, 5, 20, 24, 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),         # narrow tiles, overlapping channel tile
    (1, 6, 32, 16, 32, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),         # stride 2: backward-input by phases
    (2, 7, 17, 32, 64, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),         # stride 2, odd sizes: unequal phases
    (2, 12, 18, 32, 64, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1),        # 1x1 stride 2: phases without taps
    (1, 9, 10, 32, 32, (3, 2), (3, 1), (2, 2, 2, 2), (1, 1), 1),         # padding past the kernel, stride 3
    (1, 5, 10, 8, 96, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),          # 4 x 64 tiles: channel overlap, edge tile
    (2, 7, 35, 16, 32, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1),         # 1x1: odd sizes, narrow edge tiles
    (1, 18, 20, 32, 96, (1, 1), (3, 2), (0, 0, 0, 0), (1, 1), 1),        # 1x1: stride 3x2, 4 x 64 tiles overlap
    (2, 5, 17, 16, 16, (1, 1), (1, 1), (0, 0, 0, 0), (2, 2), 1),         # 1x1: stride 1, dilation ignored
    (2, 6, 34, 32, 64, (1, 1), (2, 2), (1, 1, 1, 1), (1, 1), 1),         # 1x1 padded: phases without taps
    (2, 12, 12, 16, 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),        # Winograd forward: 288 pixels in the batch
    (2, 4, 4, 32, 64, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),          # tiny 1x1: rows of one 4-pixel tile
    (2, 7, 7, 32, 64, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),          # tiny 3x3: 7-pixel rows, overlapping tiles
]]
# 1x1 kernels without padding whose rows hold whole tiles, outputs past select.TINY_OUTPUT_MAX_PIXELS: every pass
# runs Variant.POINTWISE
POINTWISE_CASES = [CASES[i] for i in (24, 27, 28, 29)]


def normalized_case_data(case):
    """Arrays for a normalize test with a NaN input, sums past 6, and a batch norm's coefficients of the case's
    dtype (running statistics from a seeded generator)."""
    data = arrays(case)
    data.x[0, 1, 1, 0] = np.nan
    data.x[...] *= 3
    rng = np.random.default_rng(1)
    coefficients = np.empty((3, case.c_out), case.dtype)
    norm.running_coefficients(rng.standard_normal(case.c_out).astype(case.dtype),
                               rng.uniform(0.5, 2.0, case.c_out).astype(case.dtype), 1e-5,
                               rng.uniform(0.5, 1.5, case.c_out).astype(case.dtype),
                               rng.standard_normal(case.c_out).astype(case.dtype), coefficients)
    return data, coefficients


def assert_conv_then_normalized(case, data, coefficients, activation, variants=None):
    """conv2d_forward(normalize=coefficients) with the activation equals the plain conv then
    norm.normalize_act_forward's pass, bit for bit, in each variant that applies (or those given)."""
    flags = {"relu": activation == "relu", "relu6": activation == "relu6"}
    bounds = {"relu": (0.0, np.inf), "relu6": (0.0, 6.0), None: (-np.inf, np.inf)}[activation]
    ran = []
    for variant in variants or kernels.Variant:
        if not select_module.applies(kernels.Pass.FORWARD, variant, case.dtype, case.geometry):
            continue
        with forced(variant, "forward"):
            plain = run_pass("forward", case, data)
            got = kernels.conv2d_forward(data.x, data.weight, data.bias, np.full_like(plain, np.nan),
                                         normalize=coefficients, **flags, **case.options)
        want = plain.reshape(-1, case.c_out).copy()
        norm.normalize_act_forward(want, coefficients, *(case.dtype.type(b) for b in bounds), want)
        np.testing.assert_array_equal(got, want.reshape(got.shape), err_msg=variant.name)
        assert np.isnan(got).any(), variant.name  # NaN kept (every output, where each reads the NaN pixel)
        assert activation is None or np.isnan(got).all() or (got == 0).any(), variant.name
        ran.append(variant)
    assert ran
    return ran
