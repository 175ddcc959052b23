"""2-D convolution kernels on NHWC activations and (kH, kW, C_in/groups, C_out) weights: the entry points that ops
and graph nodes call. Each checks what would otherwise index out of bounds, asks select.py which variant runs (and
with what scratch), carves that scratch from the caller's workspace and runs it; its bind_ twin does all but the
run once and returns a callable that runs the pass on the same arrays at every call.

Padding is (top, left); the bottom/right padding is implied by the output size. Every entry point writes into a
caller-supplied array `out` (so a memory planner can hand in a preallocated buffer) and returns it. A workspace is
a 1-D uint8 array of at least conv2d_workspace_bytes(...) bytes holding all scratch, or None to allocate one.

The package: select.py (which variant runs), tiles.py (the register tiles and their rules), direct.py and
pointwise.py (register-tiled direct and 1x1; direct_input.py the direct input gradient), winograd/ (F(2x2),
F(4x4) and F(4x2) forward, input and weight gradients), small.py, small_bands.py and small_rows.py (few
channels), gemm.py (im2col + BLAS), few_pixels.py (outputs of a few pixels in the batch), depthwise.py (one filter
per channel), general.py (any groups, dilation, dtype; the bias gradient), workspace.py (scratch layout, partial
sums).
"""
import functools

import numpy as np

from .. import elementwise, norm
from . import depthwise, direct, direct_input, few_pixels, gemm, general, pointwise, small
from .select import WINOGRAD_COLUMNS, Geometry, Pass, Plan, Variant, applies, clear_plans, force_variant, plan, select
from .tiles import RELU6_CODE
from .winograd import f2 as winograd_f2
from .winograd import f4 as winograd_f4
from .winograd import weight as winograd_weight
from .workspace import WORKSPACE_BYTES, all_finite, carve, specs_bytes

__all__ = ["Geometry", "Pass", "Plan", "Variant", "WORKSPACE_BYTES", "applies", "bind_backward_input",
           "bind_backward_weight", "bind_forward", "conv2d_backward_bias",
           "clear_plans", "conv2d_backward_input", "conv2d_backward_weight", "conv2d_forward",
           "conv2d_workspace_bytes", "force_variant", "plan", "select"]


def _guard(condition, message):
    if not condition:
        raise ValueError(f"conv2d kernel: {message}")


def _check_geometry(x_shape, weight_shape, out_hw, stride, dilation, groups):
    _guard(len(x_shape) == 4 and len(weight_shape) == 4, "activations and weight must be 4-D")
    _guard(min(stride) >= 1 and min(dilation) >= 1 and groups >= 1, "stride, dilation and groups must be positive")
    channels_in, channels_out = x_shape[3], weight_shape[3]
    if channels_in != weight_shape[2] * groups:
        _guard(False, f"input channels {channels_in} != {weight_shape[2]} x {groups} groups")
    if channels_out % groups:
        _guard(False, f"output channels {channels_out} not divisible by groups {groups}")
    _guard(min(out_hw) >= 1 and min(weight_shape[:2]) >= 1, "empty output or kernel")


def _contiguous(array):
    return array if array is None or array.flags.c_contiguous else np.ascontiguousarray(array)


def _returning_out(run, out):
    """A bound pass: run, then out, as the entry points return it."""
    def bound_pass():
        run()
        return out

    return bound_pass


def _in_place(array, dtype, name):
    """array, checked to be of dtype and C-contiguous: a bound pass reads it in place at every call."""
    if array.dtype != dtype:
        _guard(False, f"dtype {array.dtype} != {dtype}")
    _guard(array.flags.c_contiguous, f"{name} must be C-contiguous")
    return array


def _check_out(out, shape, dtype):
    if out.shape != tuple(shape):
        _guard(False, f"out has shape {out.shape}, expected {tuple(shape)}")
    _guard(out.dtype == dtype and out.flags.c_contiguous and out.flags.writeable,
           "out must be a writeable C-contiguous array of the input dtype")


_PASSES = {"forward": Pass.FORWARD, "backward_input": Pass.BACKWARD_INPUT, "backward_weight": Pass.BACKWARD_WEIGHT}


def conv2d_workspace_bytes(pass_name, x_shape, weight_shape, out_shape, dtype, stride=(1, 1), padding=(0, 0),
                           dilation=(1, 1), groups=1):
    """Bytes of workspace one pass needs: pass_name is "forward", "backward_input", "backward_weight" or
    "backward_bias"; x_shape (N, H, W, C_in) and out_shape (N, H_out, W_out, C_out) are the forward's NHWC
    input and output, weight_shape (kH, kW, C_in/groups, C_out). At most WORKSPACE_BYTES (beyond it only where
    one slot's strip of kernel rows alone is larger). A workspace of that many bytes (or more), given to the pass
    as `workspace=`, lets it run without allocating."""
    if pass_name == "backward_bias":
        return specs_bytes(general.backward_bias_plan(np.dtype(dtype), tuple(out_shape))[0])
    geometry = Geometry(tuple(x_shape), tuple(weight_shape), tuple(out_shape), tuple(stride), tuple(padding),
                        tuple(dilation), int(groups))
    return specs_bytes(plan(_PASSES[pass_name], geometry, dtype).specs)


# The variants whose tiles clamp at 6 as they store (tiles.RELU6_CODE); the others clamp in a pass over the output.
STORE_RELU6 = frozenset({Variant.DIRECT, Variant.POINTWISE, Variant.FEW_PIXELS, Variant.DEPTHWISE})


def conv2d_forward(x, weight, bias, out, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, relu=False,
                   workspace=None, relu6=False, normalize=None):
    """out[n, oh, ow, co] = bias[co] + sum over taps and the group's input channels of x * weight, then
    max(out, 0) when relu (NaN kept), applied as each output tile is stored; relu6 clamps at 0 and 6 (ReLU6),
    as the tiles store in the STORE_RELU6 variants, in a pass after the others. normalize, when given, is a batch
    norm's (3, C_out) coefficients of x's dtype (norm.running_coefficients): out = (out - normalize[0]) *
    normalize[1] + normalize[2] before the clamp, as FEW_PIXELS sums its shares (few_pixels.normalizes), in a pass
    after (as norm.normalize_act_forward) elsewhere; bit for bit the conv and then that pass."""
    return bind_forward(_contiguous(x), _contiguous(weight), _contiguous(bias), out, stride, padding, dilation, groups,
                        relu, workspace, relu6, _contiguous(normalize))()


def bind_forward(x, weight, bias, out, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, relu=False,
                 workspace=None, relu6=False, normalize=None):
    """conv2d_forward with its checks, plan and scratch done now: a callable that runs it on these arrays (each
    C-contiguous, read in place at every call) and returns out. For a caller that runs one pass on the same
    arrays step after step (a captured graph's conv nodes): after a pass that streamed megabytes, the Python
    before the kernels cost tens of microseconds a call (bench/README.md). The variant is the one planned now:
    force_variant and clear_plans apply to later binds."""
    dtype = x.dtype
    _check_geometry(x.shape, weight.shape, out.shape[1:3], stride, dilation, groups)
    _check_out(out, (x.shape[0], out.shape[1], out.shape[2], weight.shape[3]), dtype)
    x, weight = _in_place(x, dtype, "x"), _in_place(weight, dtype, "weight")
    if bias is not None:
        if bias.shape != (weight.shape[3],):
            _guard(False, f"bias shape {bias.shape}")
        bias = _in_place(bias, dtype, "bias")
    if normalize is not None:
        if normalize.ndim != 2 or normalize.shape[0] < 3 or normalize.shape[1] != weight.shape[3]:
            _guard(False, f"normalize shape {normalize.shape}, expected (3, {weight.shape[3]})")
        normalize = _in_place(normalize, dtype, "normalize")
    variant, specs, details = plan(Pass.FORWARD, Geometry(x.shape, weight.shape, out.shape, tuple(stride),
                                                          tuple(padding), tuple(dilation), int(groups)), dtype)
    scratch = carve(workspace, specs)
    if normalize is not None:
        lower, upper = dtype.type(0.0 if relu or relu6 else -np.inf), dtype.type(6.0 if relu6 else np.inf)
        if variant is Variant.FEW_PIXELS and few_pixels.normalizes(scratch):
            return functools.partial(few_pixels.forward, x, weight, bias, out, stride, padding, dilation, 0, scratch,
                                     details, (normalize, lower, upper))

        def forward_normalized():
            _forward_variant(variant, x, weight, bias, out, stride, padding, dilation, groups, False, scratch,
                             details)
            flat = out.reshape(-1, out.shape[3])
            norm.normalize_act_forward(flat, normalize, lower, upper, flat)
            return out

        return forward_normalized
    store_relu6 = relu6 and variant in STORE_RELU6
    relu_code = RELU6_CODE if store_relu6 else bool(relu or relu6)
    if variant is Variant.DIRECT:  # bound down to its launch: a captured step's first layers run it
        run = direct.bind_forward(x, weight, bias, out, stride, padding, dilation, relu_code, scratch, details)
    else:
        run = functools.partial(_forward_variant, variant, x, weight, bias, out, stride, padding, dilation, groups,
                                relu_code, scratch, details)

    def forward():
        run()
        if relu6 and not store_relu6:
            flat = out.reshape(-1)
            elementwise.hardtanh_forward(flat, dtype.type(0.0), dtype.type(6.0), flat)
        return out

    return forward


def _forward_variant(variant, x, weight, bias, out, stride, padding, dilation, groups, relu, scratch, details):
    """The selected variant's forward; relu: False, True or RELU6_CODE (a STORE_RELU6 variant only)."""
    if variant in (Variant.WINOGRAD_F4, Variant.WINOGRAD_F4X2):
        winograd_f4.forward(x, weight, bias, out, padding, relu, scratch, details)
    elif variant is Variant.WINOGRAD_F2:
        winograd_f2.forward(x, weight, bias, out, padding, relu, scratch, details)
    elif variant is Variant.POINTWISE:
        pointwise.forward(x, weight, bias, out, stride, relu, scratch)
    elif variant is Variant.DIRECT:
        direct.bind_forward(x, weight, bias, out, stride, padding, dilation, relu, scratch, details)()
    elif variant is Variant.SMALL_ROWS:
        small.forward_rows(x, weight, bias, out, relu, scratch, details)
    elif variant is Variant.SMALL_BANDS:
        small.forward_bands(x, weight, bias, out, relu, scratch, details)
    elif variant is Variant.GEMM:
        gemm.forward(x, weight, bias, out, stride, padding, dilation, relu, scratch, details)
    elif variant is Variant.FEW_PIXELS:
        few_pixels.forward(x, weight, bias, out, stride, padding, dilation, relu, scratch, details)
    elif variant is Variant.DEPTHWISE:
        depthwise.forward(x, weight, bias, out, stride, padding, dilation, relu)
    else:
        general.forward(x, weight, bias, out, stride, padding, dilation, groups, relu, scratch)


def conv2d_backward_input(grad_out, weight, out, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
                          workspace=None):
    """Gradient of the forward with respect to its input x, written into out (shape of x)."""
    return bind_backward_input(_contiguous(grad_out), _contiguous(weight), out, stride, padding, dilation, groups,
                               workspace)()


def bind_backward_input(grad_out, weight, out, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
                        workspace=None):
    """conv2d_backward_input with its checks, plan and scratch done now (see bind_forward)."""
    dtype = grad_out.dtype
    _check_geometry(out.shape, weight.shape, grad_out.shape[1:3], stride, dilation, groups)
    _check_out(out, out.shape, dtype)
    _guard(grad_out.shape[0] == out.shape[0] and grad_out.shape[3] == weight.shape[3], "grad_out shape")
    grad_out, weight = _in_place(grad_out, dtype, "grad_out"), _in_place(weight, dtype, "weight")
    variant, specs, details = plan(Pass.BACKWARD_INPUT, Geometry(out.shape, weight.shape, grad_out.shape,
                                                                 tuple(stride), tuple(padding), tuple(dilation),
                                                                 int(groups)), dtype)
    scratch = carve(workspace, specs)
    if variant in (Variant.WINOGRAD_F4, Variant.WINOGRAD_F4X2):
        run = functools.partial(winograd_f4.backward_input, grad_out, weight, out, padding, scratch, details)
    elif variant is Variant.WINOGRAD_F2:
        run = functools.partial(winograd_f2.backward_input, grad_out, weight, out, padding, scratch, details)
    elif variant is Variant.POINTWISE:
        run = functools.partial(pointwise.backward_input, grad_out, weight, out, stride, scratch)
    elif variant is Variant.DIRECT:
        run = functools.partial(direct_input.backward_input, grad_out, weight, out, stride, padding, dilation,
                                scratch, details)
    elif variant is Variant.SMALL_ROWS:
        run = functools.partial(small.backward_input_rows, grad_out, weight, out, scratch, details)
    elif variant is Variant.SMALL_BANDS:
        run = functools.partial(small.backward_input_bands, grad_out, weight, out, scratch, details)
    elif variant is Variant.GEMM:
        run = functools.partial(gemm.backward_input, grad_out, weight, out, stride, padding, dilation, scratch,
                                details)
    elif variant is Variant.DEPTHWISE:
        run = functools.partial(depthwise.backward_input, grad_out, weight, out, stride, padding, dilation)
    else:
        run = functools.partial(general.backward_input, grad_out, weight, out, stride, padding, dilation, groups,
                                scratch)

    return _returning_out(run, out)


def conv2d_backward_weight(x, grad_out, out, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
                           workspace=None):
    """Gradient of the forward with respect to its weight, written into out (kH, kW, C_in/groups, C_out)."""
    return bind_backward_weight(_contiguous(x), _contiguous(grad_out), out, stride, padding, dilation, groups,
                                workspace)()


def bind_backward_weight(x, grad_out, out, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
                         workspace=None):
    """conv2d_backward_weight with its checks, plan and scratch done now (see bind_forward)."""
    dtype = x.dtype
    _check_geometry(x.shape, out.shape, grad_out.shape[1:3], stride, dilation, groups)
    _check_out(out, out.shape, dtype)
    _guard(grad_out.shape[0] == x.shape[0] and grad_out.shape[3] == out.shape[3], "grad_out shape")
    x, grad_out = _in_place(x, dtype, "x"), _in_place(grad_out, dtype, "grad_out")
    variant, specs, details = plan(Pass.BACKWARD_WEIGHT, Geometry(x.shape, out.shape, grad_out.shape,
                                                                  tuple(stride), tuple(padding), tuple(dilation),
                                                                  int(groups)), dtype)
    scratch = carve(workspace, specs)
    if variant in WINOGRAD_COLUMNS:
        geometry, direct_specs, direct_details = details

        def winograd_backward_weight():
            winograd_weight.backward_weight(x, grad_out, out, scratch, geometry)
            # An inf among the inputs comes out of Winograd's differences as NaN (inf - inf, inf * 0) where the
            # direct products may give inf, and any inf or NaN input leaves some of out non-finite: then redo it
            # directly.
            if not all_finite(out.reshape(-1)):
                direct.backward_weight(x, grad_out, out, stride, padding, dilation, carve(workspace, direct_specs),
                                       direct_details)
            return out

        return winograd_backward_weight
    if variant is Variant.POINTWISE:
        run = functools.partial(pointwise.backward_weight, x, grad_out, out, stride, scratch, details)
    elif variant in (Variant.DIRECT, Variant.DIRECT_COLUMNS):
        run = functools.partial(direct.backward_weight, x, grad_out, out, stride, padding, dilation, scratch, details,
                                columns=variant is Variant.DIRECT_COLUMNS)
    elif variant is Variant.SMALL_ROWS:
        run = functools.partial(small.backward_weight_rows, x, grad_out, out, scratch, details)
    elif variant is Variant.SMALL_BANDS:
        run = functools.partial(small.backward_weight_bands, x, grad_out, out, scratch, details)
    elif variant is Variant.GEMM:
        run = functools.partial(gemm.backward_weight, x, grad_out, out, stride, padding, dilation, scratch, details)
    elif variant is Variant.DEPTHWISE:
        run = functools.partial(depthwise.backward_weight, x, grad_out, out, stride, padding, dilation, scratch)
    else:
        run = functools.partial(general.backward_weight, x, grad_out, out, stride, padding, dilation, groups, scratch)

    return _returning_out(run, out)


def conv2d_backward_bias(grad_out, out, workspace=None):
    """Gradient with respect to the bias: grad_out summed over images and pixels, written into out (C_out,)."""
    _guard(grad_out.ndim == 4, "grad_out must be 4-D")
    _check_out(out, (grad_out.shape[3],), grad_out.dtype)
    specs, _ = general.backward_bias_plan(grad_out.dtype, grad_out.shape)
    general.backward_bias(grad_out, out, carve(workspace, specs))
    return out
