"""Which convolution kernel runs for a pass, a shape, a dtype and a machine: the one place that decides, as
PyTorch's _select_conv_backend does. `select` returns a Variant; `plan` adds the scratch that variant carves from
the workspace (from the shapes and the budget alone, so a memory planner can size a workspace before any pass
runs). `force_variant` lets tests and benchmarks run a chosen variant.

Every rule below is tried in order and the first that applies wins; each says in a line why it is where it is.
"""
import contextlib
import enum
import functools
import threading
from collections import namedtuple

import numpy as np

from .._runtime.machine import target_machine
from . import direct, direct_input, few_pixels, gemm, general, pointwise, small, workspace
from .._runtime.vector import LANES
from .tiles import forward_row_tile_pixels, forward_tiles_fit, tiles_of, weight_rows_multiple
from .winograd import f2 as winograd_f2
from .winograd import f4 as winograd_f4
from .winograd import weight as winograd_weight


class Pass(enum.Enum):
    FORWARD = "forward"
    BACKWARD_INPUT = "backward_input"
    BACKWARD_WEIGHT = "backward_weight"


class Variant(enum.Enum):
    WINOGRAD_F4 = "winograd_f4"        # Winograd F(4x4, 3x3): 4x fewer multiplies than direct, error grows with C
    WINOGRAD_F4X2 = "winograd_f4x2"    # Winograd F(4x2, 3x3): 3x fewer, about half F(4x4)'s error
    WINOGRAD_F2 = "winograd_f2"        # Winograd F(2x2, 3x3): 2.25x fewer, accurate at any channel count
    POINTWISE = "pointwise"            # 1x1 register tiles reading and writing the rows in place
    DIRECT = "direct"                  # register tiles over strips of padded rows; strided backward-input by phases
    DIRECT_COLUMNS = "direct_columns"  # weight gradient as one column matrix: few channels, taps folded tight
    SMALL_ROWS = "small_rows"          # few channels, kernel rows read as contiguous NHWC runs
    SMALL_BANDS = "small_bands"        # few channels, channel-planar frames vectorised over pixels
    GEMM = "gemm"                      # im2col + BLAS GEMM
    FEW_PIXELS = "few_pixels"          # forward of a few output pixels: im2col rows x tiles, by output-channel strips
    DEPTHWISE = "depthwise"            # one filter per channel: channel vectors, taps summed in registers
    GENERAL = "general"                # plain loops: any groups, dtype, stride, dilation


# NHWC activations: x_shape (N, H, W, C_in), out_shape (N, H_out, W_out, C_out); weight (kH, kW, C_in/groups, C_out).
Geometry = namedtuple("Geometry", "x_shape weight_shape out_shape stride padding dilation groups")
Plan = namedtuple("Plan", "variant specs details")

# Layers with at most this many input and output channels (stride 1, groups 1) run the few-channel kernels when no
# register-tiled variant applies: the tiles need 16 channels on their vector side.
SMALL_MAX_CHANNELS = 16
# The few-channel forward and weight gradient vectorise over output channels from this many (12 of 16 lanes busy).
CHANNEL_TILE_MIN = 12
# Input channels (the per-position GEMMs' reduction) up to which Winograd takes F(4x4) rather than F(2x2): its
# error grows with the reduction, and past 32 channels it left the 2e-4 tolerance every conv path is held to.
WINOGRAD_F4_MAX_REDUCTION = 32
# ... and up to which it takes F(4x2) rather than F(2x2), where its 4-row tiles cover the output's rows exactly:
# its error at 64 and 128 channels is about the direct sum's, under F(4x4)'s at 32, and it runs 3 multiplies per
# output to F(2x2)'s 4: 0.79-0.89x F(2x2)'s time at 64 channels, 0.85-1.00x at 128, AVX2 and AVX-512; on 10 and 14
# rows, 2 of them past the output, 0.97-1.04x on AVX2 (bench/README.md).
WINOGRAD_F4X2_MAX_REDUCTION = 128
# The weight gradient sums over the batch's tiles, not channels: its F(4x4) error hardly grows with them (largest
# error over the RMS of dW, batch 64, standard-normal data: 1.73e-5 at 32 channels, 1.74e-5 at 64, 2.44e-5 at
# 128, half to three quarters of the tests' tolerance; F(2x2) 3-4e-6). Its partials of 36 positions cost 2.25x
# F(2x2)'s per chunk against 0.56x the products, so past 32 channels it takes F(4x4) where the batch has at least
# this many output pixels, up to this many channels: 0.69-0.84x F(2x2)'s time from 4096 pixels, 0.89-0.98x at
# 1024, on AVX2 and AVX-512; 1.36x at 512 (bench/README.md). Past them F(4x2), whose partials of 24 positions are
# 2/3 of F(4x4)'s: at 256 channels 0.71-0.89x F(2x2)'s time, where F(4x4) took 1.08-1.52x.
WINOGRAD_F4_WEIGHT_MIN_PIXELS = 1024
WINOGRAD_F4_WEIGHT_MAX_CHANNELS = 128


# The Winograd variants by the output columns of their tiles: f4.py's (4 rows) or F(2x2)'s (None)
WINOGRAD_COLUMNS = {Variant.WINOGRAD_F4: winograd_f4.TILE, Variant.WINOGRAD_F4X2: winograd_f4.NARROW_TILE,
                    Variant.WINOGRAD_F2: None}


# 16-channel rows narrower than this take the few-channel kernels on every tier, though AVX2's 6-pixel tiles fit
# them: those were faster there (LeNet-5's 6->16 forward at 10 pixels: 0.97 ms against 1.05, bench/README.md).
NARROW_ROW_MIN_PIXELS = 16


# Outputs of at most this many pixels per image (7x7: ResNet-18's last stage at 224x224 input, its last two at 64x64)
# take im2col + GEMM: the Winograd and register tiles are mostly border there, and one BLAS GEMM over the batch's
# pixels ran those layers 1.3-4x faster (bench/README.md), except Winograd's weight gradient from 5x5 to 7x7
# outputs, which stays ahead of the GEMM there at batch 16 (its transforms are shared by the batch's tiles).
TINY_OUTPUT_MAX_PIXELS = 49
TINY_WINOGRAD_WEIGHT_MAX_PIXELS = 16


# A tiny output's forward (see TINY_OUTPUT_MAX_PIXELS) whose whole batch has at most this many output pixels runs
# few_pixels.py: im2col rows times the register tiles, reading each strip of the weight where it lies, where BLAS
# packs the weight first; it ran 4-512 rows 1.1-2x faster than the GEMM, 784 rows of a 3x3 layer 1.2x slower
# (bench/README.md).
FEW_PIXELS_MAX = 512
# ... and on a tier with a product tile (tiles.TIER_TILES "product"), at most the rows it takes: past them AVX2's
# FEW_PIXELS runs its 6-pixel tile, which lost to the GEMM by 1.05-1.35x on 3x3 layers (1x7x7 512->512: 2.29
# against 1.69 ms) and 1.1-2.5x on 1x1 ones (MobileNetV2's at 4x4, batch 16).


# A larger output's forward runs FEW_PIXELS too where its whole batch has at most this many output pixels and its
# weight is large enough that FEW_PIXELS streams it in shares of rows (few_pixels.SHARE_WEIGHT_BYTES): ResNet-18's
# 14x14 stage at batch 1 (196 pixels, a 2.4 MB weight) ran 1.02 ms against Winograd F(2x2)'s 1.32 on AVX-512 and
# 1.54 against 1.96 (the GEMM 1.69) on AVX2; 1x14x14 512->512 3.6 against DIRECT's 7.5 (AVX2: 5.6 against 12.2,
# the GEMM 5.2); at 256 pixels (4x8x8, 1x16x16) a tie on AVX2, 1.15 against 1.37 on AVX-512; at 392 a tie.
FEW_PIXELS_SHARES_MAX = 256


def few_pixels_suits(pixels, machine=None):
    """Whether select prefers FEW_PIXELS for a product of `pixels` rows on `machine`'s tier, where it applies."""
    product = tiles_of(machine)["product"]
    return product is None or pixels <= product[1]


# A tiny output's forward runs the register tiles along its rows, as larger outputs do, where they cover a row
# recomputing at most TINY_ROW_MAX_RECOMPUTE times its pixels (AVX-512's 4-pixel tiles over 7 pixels compute 8,
# AVX2's 6-pixel ones 12): a 1x1 layer on POINTWISE wherever FEW_PIXELS would take it (past FEW_PIXELS_MAX the
# GEMM stayed ahead for 960->160), another kernel on DIRECT when its weight is at most TINY_DIRECT_MAX_WEIGHT_BYTES,
# small enough to stay in L2 while each job re-reads it. On AVX-512 those ran 1.3-3x faster than FEW_PIXELS
# (MobileNetV2's 1x1 layers at 4x4 and 7x7, 3x3 layers of 128 channels, a 128->256 stride-2 one); 3x3 layers of
# 256 channels (a 2.4 MB weight) were faster on FEW_PIXELS at batch 1 to 8, of 512 on GEMM (bench/README.md).
# AVX2's 4-pixel short tiles (tiles.forward_row_cover) would cover 7 pixels computing 8 but are not counted here:
# on a 1x7x7 output they ran MobileNetV2's 1x1 layers 1.5-2.4x slower than FEW_PIXELS, a 3x3 128->128 1.2x.
TINY_ROW_MAX_RECOMPUTE = 8 / 7
TINY_DIRECT_MAX_WEIGHT_BYTES = 5 << 18
# ... and where the tiles hold at least this many pixels: SSE's 2-pixel tiles, two FMAs per weight vector loaded,
# ran those 1x1 layers 1.03-1.2x slower than FEW_PIXELS.
TINY_ROW_MIN_TILE_PIXELS = 4


def tiles_cover_rows(channels_out, width, machine=None):
    """Whether the forward tiles for channels_out, of at least TINY_ROW_MIN_TILE_PIXELS pixels, fit rows of `width`
    output pixels recomputing at most TINY_ROW_MAX_RECOMPUTE times them (an edge tile overlaps its neighbour)."""
    if not forward_tiles_fit(channels_out, width, machine):
        return False
    pixels = forward_row_tile_pixels(channels_out, machine)
    return pixels >= TINY_ROW_MIN_TILE_PIXELS and -(-width // pixels) * pixels <= TINY_ROW_MAX_RECOMPUTE * width


def _tiny_forward(dtype, geometry, budget, machine):
    """The forward of a tiny output (tiny_output): the row tiles where they cover its rows (TINY_ROW_MAX_RECOMPUTE),
    else FEW_PIXELS where it applies and suits the tier (few_pixels_suits), else GEMM."""
    x_shape, weight_shape, out_shape, stride, padding, dilation, groups = geometry
    few_pixels_fit = few_pixels_applies(dtype, weight_shape, out_shape, groups, budget)
    if tiles_cover_rows(weight_shape[3], out_shape[2], machine):
        if few_pixels_fit and pointwise_applies(dtype, x_shape, weight_shape, out_shape, stride, padding, groups) \
                and _weight_fits(dtype, weight_shape, budget):
            return Variant.POINTWISE
        small_weight = workspace.spec_bytes(weight_shape, dtype) <= TINY_DIRECT_MAX_WEIGHT_BYTES
        if tuple(weight_shape[:2]) != (1, 1) and small_weight \
                and direct_forward_applies(dtype, weight_shape, out_shape, groups, machine):
            return Variant.DIRECT
    if few_pixels_fit and few_pixels_suits(out_shape[0] * out_shape[1] * out_shape[2], machine):
        return Variant.FEW_PIXELS
    return Variant.GEMM


def few_pixels_applies(dtype, weight_shape, out_shape, groups, budget):
    """float32, groups 1, C_out in whole 16-channel strips, at most FEW_PIXELS_MAX output pixels in the batch, and
    their im2col rows within the budget."""
    pixels = out_shape[0] * out_shape[1] * out_shape[2]
    return (dtype == np.float32 and groups == 1 and weight_shape[3] % LANES == 0 and pixels <= FEW_PIXELS_MAX
            and workspace.specs_bytes(few_pixels.plan(dtype, weight_shape, out_shape)[0]) <= budget)


def tiny_output(weight_shape, out_shape, groups):
    """A groups=1 layer, past the few-channel kernels' channel counts, whose output is TINY_OUTPUT_MAX_PIXELS or
    fewer pixels per image."""
    return (groups == 1 and max(weight_shape[2], weight_shape[3]) > SMALL_MAX_CHANNELS
            and out_shape[1] * out_shape[2] <= TINY_OUTPUT_MAX_PIXELS)


def narrow_row(channels, width):
    """A row the 16-channel tiles would cover that the few-channel kernels run faster (NARROW_ROW_MIN_PIXELS)."""
    return channels < 2 * LANES and width < NARROW_ROW_MIN_PIXELS


# Winograd's forward transforms the whole weight (16/9 of its size, F(2x2)) at every call: with fewer output pixels
# than this in the batch (ResNet-18's 8x8 stage at batch 1: 64), that traffic outweighs the multiplies it saves, and
# the direct tiles ran 128->128 at 8x8 1.2-1.8x faster; at 196 pixels and 256 channels (14x14, batch 1) Winograd
# was 1.5x faster, the direct tiles re-reading a weight larger than L2 (bench/README.md).
WINOGRAD_MIN_BATCH_PIXELS = 128


def winograd_applies(dtype, weight_shape, stride, padding, dilation, groups):
    """Winograd's shape rule, one for the forward and both gradients: float32, groups 1, a 3x3 kernel, stride 1,
    dilation 1, padding at most 2 (the backward-input pads by 2 - padding), C_in and C_out multiples of 16."""
    return (dtype == np.float32 and groups == 1 and tuple(weight_shape[:2]) == (3, 3) and tuple(stride) == (1, 1)
            and tuple(dilation) == (1, 1) and max(padding) <= 2 and weight_shape[2] % LANES == 0
            and weight_shape[3] % LANES == 0)


def winograd_f4_suits(channels_reduced):
    """Whether F(4x4) keeps within the tolerance for a pass reducing over this many channels."""
    return channels_reduced <= WINOGRAD_F4_MAX_REDUCTION


def winograd_f4x2_suits(channels_reduced, rows):
    """Whether F(4x2) keeps within the tolerance for a pass reducing over this many channels, and its tiles of 4
    rows cover an output of `rows` rows exactly."""
    return channels_reduced <= WINOGRAD_F4X2_MAX_REDUCTION and rows % winograd_f4.TILE == 0


def winograd_f4_weight_suits(channels_in, channels_out, batch_pixels):
    """Whether the weight gradient of a layer with these channels over batch_pixels output pixels takes F(4x4)."""
    if winograd_f4_suits(channels_in) and winograd_f4_suits(channels_out):
        return True
    return (max(channels_in, channels_out) <= WINOGRAD_F4_WEIGHT_MAX_CHANNELS
            and batch_pixels >= WINOGRAD_F4_WEIGHT_MIN_PIXELS)


def pointwise_applies(dtype, x_shape, weight_shape, out_shape, stride, padding, groups):
    """float32, a 1x1 kernel, no padding, groups 1, and an output grid inside the input (the tiles then read and
    write the rows in place, with no padded strips)."""
    return (dtype == np.float32 and groups == 1 and tuple(weight_shape[:2]) == (1, 1) and tuple(padding) == (0, 0)
            and (out_shape[1] - 1) * stride[0] < x_shape[1] and (out_shape[2] - 1) * stride[1] < x_shape[2])


def direct_forward_applies(dtype, weight_shape, out_shape, groups, machine=None):
    """The register-tiled forward needs whole tiles of output channels x pixels of a row."""
    return dtype == np.float32 and groups == 1 and forward_tiles_fit(weight_shape[3], out_shape[2], machine)


def direct_backward_input_applies(dtype, weight_shape, x_shape, stride, padding, dilation, groups, machine=None):
    """The input gradient as register-tiled forwards of grad_out: one with stride 1 (padding within the dilated
    kernel), or one per stride phase (dilation 1) when every phase row holds a whole tile."""
    if dtype != np.float32 or groups != 1:
        return False
    if tuple(stride) == (1, 1):
        return (padding[0] <= dilation[0] * (weight_shape[0] - 1) and padding[1] <= dilation[1] * (weight_shape[1] - 1)
                and forward_tiles_fit(x_shape[3], x_shape[2], machine))
    return tuple(dilation) == (1, 1) and forward_tiles_fit(x_shape[3], x_shape[2] // stride[1], machine)


def direct_backward_weight_applies(dtype, weight_shape, groups, dilation, machine=None):
    """Whole weight-gradient tiles: C_out a multiple of 16, and C_in a multiple of the tile's input channels unless
    the kW taps fold into the reduction (dilation 1 along the width)."""
    return (dtype == np.float32 and groups == 1 and weight_shape[3] % LANES == 0
            and (weight_shape[2] % weight_rows_multiple(weight_shape[3], machine) == 0 or dilation[1] == 1))


def small_applies(weight_shape, stride, groups):
    """The few-channel kernels: stride 1, groups 1, at most SMALL_MAX_CHANNELS channels in and out."""
    return groups == 1 and tuple(stride) == (1, 1) and max(weight_shape[2], weight_shape[3]) <= SMALL_MAX_CHANNELS


def row_runs_apply(dtype, x_shape, weight_shape, out_shape, padding, dilation):
    """Whether a kernel row's kW * C_in inputs are one contiguous run of a zero-padded NHWC frame: float32, width
    dilation 1, and the frame covering the input on every side (no negative padding)."""
    kernel_h, kernel_w = weight_shape[:2]
    frame_h = out_shape[1] + dilation[0] * (kernel_h - 1)
    frame_w = out_shape[2] + kernel_w - 1
    return (np.dtype(dtype) == np.float32 and dilation[1] == 1 and min(padding) >= 0
            and frame_h >= x_shape[1] + padding[0] and frame_w >= x_shape[2] + padding[1])


def depthwise_applies(dtype, x_shape, weight_shape, groups):
    """The depthwise tiles: one filter per channel (groups == C_in == C_out), float32 or float64; any kernel,
    stride, padding and dilation."""
    return (np.dtype(dtype) in (np.float32, np.float64) and groups == x_shape[3] == weight_shape[3]
            and weight_shape[2] == 1)


def _weight_fits(dtype, weight_shape, budget):
    """The tiled variants copy the weight (aligned, or flipped) into the workspace: at most a quarter of it."""
    return workspace.spec_bytes(weight_shape, dtype) <= budget // 4


def _untiled(dtype, x_shape, weight_shape, groups):
    """Where no tiled or few-channel variant applies: BLAS for groups 1; the depthwise tiles for one filter per
    channel (float64 too: they stream the data once, the plain loops are an order of magnitude slower); else the
    plain loops."""
    if groups == 1:
        return Variant.GEMM
    return Variant.DEPTHWISE if depthwise_applies(dtype, x_shape, weight_shape, groups) else Variant.GENERAL


def _winograd_variant(dtype, channels_in, channels_out, reduced, rows, budget):
    """The Winograd forward (or input gradient) of a pass that reduces over `reduced` channels into `rows` output
    rows: the first of F(4x4), F(4x2) and F(2x2) that suits them and whose transformed weight fits the budget, or
    None."""
    if winograd_f4_suits(reduced) and winograd_f4.fits(dtype, channels_in, channels_out, budget):
        return Variant.WINOGRAD_F4
    if winograd_f4x2_suits(reduced, rows) \
            and winograd_f4.fits(dtype, channels_in, channels_out, budget, winograd_f4.NARROW_TILE):
        return Variant.WINOGRAD_F4X2
    if winograd_f2.fits(dtype, channels_in, channels_out, budget):
        return Variant.WINOGRAD_F2
    return None


def _select_forward(dtype, geometry, budget, machine):
    x_shape, weight_shape, out_shape, stride, padding, dilation, groups = geometry
    channels_in, channels_out = weight_shape[2], weight_shape[3]
    if tiny_output(weight_shape, out_shape, groups):
        return _tiny_forward(dtype, geometry, budget, machine)
    if out_shape[0] * out_shape[1] * out_shape[2] <= FEW_PIXELS_SHARES_MAX \
            and few_pixels.reduction_shares(dtype, weight_shape) > 1 \
            and few_pixels_applies(dtype, weight_shape, out_shape, groups, budget):
        return Variant.FEW_PIXELS
    winograd = winograd_applies(dtype, weight_shape, stride, padding, dilation, groups)
    if winograd and out_shape[0] * out_shape[1] * out_shape[2] < WINOGRAD_MIN_BATCH_PIXELS \
            and direct_forward_applies(dtype, weight_shape, out_shape, groups, machine) \
            and not narrow_row(channels_out, out_shape[2]):
        return Variant.DIRECT
    variant = winograd and _winograd_variant(dtype, channels_in, channels_out, channels_in, out_shape[1], budget)
    if variant:
        return variant
    if pointwise_applies(dtype, x_shape, weight_shape, out_shape, stride, padding, groups) \
            and forward_tiles_fit(channels_out, out_shape[2], machine) and _weight_fits(dtype, weight_shape, budget):
        return Variant.POINTWISE
    if direct_forward_applies(dtype, weight_shape, out_shape, groups, machine) \
            and not narrow_row(channels_out, out_shape[2]):
        return Variant.DIRECT
    if small_applies(weight_shape, stride, groups):
        if channels_out >= CHANNEL_TILE_MIN and row_runs_apply(dtype, x_shape, weight_shape, out_shape, padding,
                                                                dilation):
            return Variant.SMALL_ROWS
        return Variant.SMALL_BANDS
    return _untiled(dtype, x_shape, weight_shape, groups)


def _select_backward_input(dtype, geometry, budget, machine):
    """x_shape is the gradient's (the forward's input) shape; the passes run as forwards of grad_out with C_out
    channels in and C_in out. The tiled variants need the weight flipped into the workspace: when it takes over a
    quarter of the budget, GEMM (which reads the weight in place) runs instead."""
    x_shape, weight_shape, out_shape, stride, padding, dilation, groups = geometry
    group_in, channels_out = weight_shape[2], weight_shape[3]
    if tiny_output(weight_shape, out_shape, groups):
        return Variant.GEMM
    winograd = winograd_applies(dtype, weight_shape, stride, padding, dilation, groups)
    variant = winograd and _winograd_variant(dtype, group_in, channels_out, channels_out, x_shape[1], budget)
    if variant:
        return variant
    fits = _weight_fits(dtype, weight_shape, budget)
    if fits and pointwise_applies(dtype, x_shape, weight_shape, out_shape, stride, padding, groups) \
            and forward_tiles_fit(group_in, out_shape[2], machine):
        return Variant.POINTWISE
    if fits and direct_backward_input_applies(dtype, weight_shape, x_shape, stride, padding, dilation, groups,
                                              machine):
        return Variant.DIRECT
    if small_applies(weight_shape, stride, groups):
        if row_runs_apply(dtype, x_shape, weight_shape, out_shape, padding, dilation):
            return Variant.SMALL_ROWS
        return Variant.SMALL_BANDS
    return _untiled(dtype, x_shape, weight_shape, groups)


def _winograd_weight_variants(channels_in, channels_out, out_shape):
    """The Winograd weight gradients in the order select tries them (the first whose plan fits the budget runs):
    F(4x4) where winograd_f4_weight_suits, F(4x2) past WINOGRAD_F4_WEIGHT_MAX_CHANNELS from
    WINOGRAD_F4_WEIGHT_MIN_PIXELS output pixels in the batch (its error is under F(4x4)'s), then F(2x2)."""
    pixels = out_shape[0] * out_shape[1] * out_shape[2]
    if winograd_f4_weight_suits(channels_in, channels_out, pixels):
        return Variant.WINOGRAD_F4, Variant.WINOGRAD_F2
    if pixels >= WINOGRAD_F4_WEIGHT_MIN_PIXELS:
        return Variant.WINOGRAD_F4X2, Variant.WINOGRAD_F2
    return (Variant.WINOGRAD_F2,)


def _select_backward_weight(dtype, geometry, budget, machine):
    x_shape, weight_shape, out_shape, stride, padding, dilation, groups = geometry
    channels_in, channels_out = weight_shape[2], weight_shape[3]
    if tiny_output(weight_shape, out_shape, groups) and (
            out_shape[1] * out_shape[2] <= TINY_WINOGRAD_WEIGHT_MAX_PIXELS
            or not winograd_applies(dtype, weight_shape, stride, padding, dilation, groups)):
        return Variant.GEMM
    if pointwise_applies(dtype, x_shape, weight_shape, out_shape, stride, padding, groups) \
            and channels_out % LANES == 0 and channels_in % weight_rows_multiple(channels_out, machine) == 0:
        return Variant.POINTWISE
    if direct_backward_weight_applies(dtype, weight_shape, groups, dilation, machine):
        # A column matrix when folding the taps pads the reduction less than folding each kernel row does.
        if dilation[1] == 1 and direct.weight_columns_pad_less(weight_shape, machine) \
                and direct.weight_columns_fit(dtype, weight_shape, budget, machine):
            return Variant.DIRECT_COLUMNS
        if winograd_applies(dtype, weight_shape, stride, padding, dilation, groups):
            for variant in _winograd_weight_variants(channels_in, channels_out, out_shape):
                if winograd_weight.backward_weight_plan(dtype, x_shape, weight_shape, out_shape, padding, budget,
                                                        WINOGRAD_COLUMNS[variant]) is not None:
                    return variant
        return Variant.DIRECT
    if small_applies(weight_shape, stride, groups):
        if channels_out >= CHANNEL_TILE_MIN and row_runs_apply(dtype, x_shape, weight_shape, out_shape, padding,
                                                                dilation):
            return Variant.SMALL_ROWS
        return Variant.SMALL_BANDS
    return _untiled(dtype, x_shape, weight_shape, groups)


_SELECTORS = {Pass.FORWARD: _select_forward, Pass.BACKWARD_INPUT: _select_backward_input,
              Pass.BACKWARD_WEIGHT: _select_backward_weight}


def select(pass_, geometry, dtype, budget=None, machine=None):
    """The Variant that runs `pass_` (a Pass) for a Geometry and dtype within a workspace budget (bytes; default
    workspace.WORKSPACE_BYTES) on a machine (default: the one the kernels are compiled for), unless
    force_variant chose one."""
    budget = workspace.WORKSPACE_BYTES if budget is None else budget
    forced = _forced().get(pass_)
    if forced is not None:
        if not applies(pass_, forced, dtype, geometry, budget):
            raise ValueError(f"force_variant: the {pass_.value} pass cannot run {forced.name} for {geometry} "
                             f"({np.dtype(dtype)})")
        return forced
    return _SELECTORS[pass_](np.dtype(dtype), geometry, budget, machine or target_machine())


# ----- plans: the chosen variant's scratch, from the shapes and the budget --------------------------------------

def _forward_planner(variant, dtype, geometry, budget):
    x_shape, weight_shape, out_shape, stride, padding, dilation, groups = geometry
    if variant in (Variant.WINOGRAD_F4, Variant.WINOGRAD_F4X2):
        return winograd_f4.plan(dtype, x_shape, weight_shape[3], out_shape[1:3], budget, False,
                                WINOGRAD_COLUMNS[variant])
    if variant is Variant.WINOGRAD_F2:
        return winograd_f2.plan(dtype, x_shape, weight_shape[3], out_shape[1:3], budget, False)
    if variant is Variant.POINTWISE:
        return pointwise.forward_plan(dtype, weight_shape)
    if variant is Variant.DIRECT:
        return direct.forward_plan(dtype, x_shape, weight_shape, out_shape, stride, padding, dilation, budget)
    if variant is Variant.SMALL_ROWS:
        return small.forward_rows_plan(dtype, x_shape, weight_shape, out_shape, padding, dilation, budget)
    if variant is Variant.SMALL_BANDS:
        return small.forward_bands_plan(dtype, x_shape, weight_shape, out_shape, padding, dilation, budget)
    if variant is Variant.GEMM:
        reduction = weight_shape[0] * weight_shape[1] * weight_shape[2]
        return gemm.plan("forward", out_shape[0], out_shape[1], out_shape[2], reduction, weight_shape[3], dtype,
                         budget)
    if variant is Variant.FEW_PIXELS:
        return few_pixels.plan(dtype, weight_shape, out_shape)
    if variant is Variant.DEPTHWISE:
        return (), None  # the tiles read and write the arrays in place
    return general.forward_plan(dtype, out_shape, weight_shape, budget)


def _backward_input_planner(variant, dtype, geometry, budget):
    x_shape, weight_shape, out_shape, stride, padding, dilation, groups = geometry
    kernel_h, kernel_w, group_in, channels_out = weight_shape
    if variant in (Variant.WINOGRAD_F4, Variant.WINOGRAD_F4X2):
        return winograd_f4.plan(dtype, out_shape, group_in, x_shape[1:3], budget, True, WINOGRAD_COLUMNS[variant])
    if variant is Variant.WINOGRAD_F2:
        return winograd_f2.plan(dtype, out_shape, group_in, x_shape[1:3], budget, True)
    if variant is Variant.POINTWISE:
        return pointwise.backward_input_plan(dtype, weight_shape)
    if variant is Variant.DIRECT:
        return direct_input.backward_input_plan(dtype, x_shape, weight_shape, out_shape, stride, padding, dilation, budget)
    if variant is Variant.SMALL_ROWS:
        return small.backward_input_rows_plan(dtype, x_shape, weight_shape, out_shape, padding, dilation, budget)
    if variant is Variant.SMALL_BANDS:
        return small.backward_input_bands_plan(dtype, x_shape, weight_shape, out_shape, padding, dilation, budget)
    if variant is Variant.GEMM:
        return gemm.plan("backward_input", out_shape[0], out_shape[1], out_shape[2], kernel_h * kernel_w * group_in,
                         channels_out, dtype, budget)
    if variant is Variant.DEPTHWISE:
        return (), None
    return general.backward_input_plan(dtype, x_shape, weight_shape, budget)


def _backward_weight_planner(variant, dtype, geometry, budget):
    x_shape, weight_shape, out_shape, stride, padding, dilation, groups = geometry
    if variant in WINOGRAD_COLUMNS:
        specs, details = winograd_weight.backward_weight_plan(dtype, x_shape, weight_shape, out_shape, padding,
                                                              budget, WINOGRAD_COLUMNS[variant])
        # The direct plan rides along in the same workspace: it reruns a gradient that came out inf or NaN.
        direct_specs, direct_details = direct.backward_weight_plan(dtype, x_shape, weight_shape, out_shape, stride,
                                                                   padding, dilation, budget)
        room = workspace.specs_bytes(direct_specs) - workspace.specs_bytes(specs)
        if room > 0:
            specs += (("direct_room", (room,), np.uint8),)
        return specs, (details, direct_specs, direct_details)
    if variant is Variant.POINTWISE:
        return pointwise.backward_weight_plan(dtype, weight_shape, out_shape, budget)
    if variant is Variant.DIRECT_COLUMNS:
        return direct.backward_weight_columns_plan(dtype, x_shape, weight_shape, out_shape, stride, padding,
                                                   dilation, budget)
    if variant is Variant.DIRECT:
        return direct.backward_weight_plan(dtype, x_shape, weight_shape, out_shape, stride, padding, dilation,
                                           budget)
    if variant is Variant.SMALL_ROWS:
        return small.backward_weight_rows_plan(dtype, x_shape, weight_shape, out_shape, padding, dilation, budget)
    if variant is Variant.SMALL_BANDS:
        return small.backward_weight_bands_plan(dtype, x_shape, weight_shape, out_shape, padding, dilation, budget)
    if variant is Variant.GEMM:
        batch, out_h, out_w, _ = out_shape
        return gemm.plan("backward_weight", batch, out_h, out_w, weight_shape[0] * weight_shape[1] * weight_shape[2],
                         weight_shape[3], dtype, budget)
    # DEPTHWISE and GENERAL: one partial weight gradient per chunk of the (image, output row) range
    return general.backward_weight_plan(dtype, weight_shape, out_shape, budget)


_PLANNERS = {Pass.FORWARD: _forward_planner, Pass.BACKWARD_INPUT: _backward_input_planner,
             Pass.BACKWARD_WEIGHT: _backward_weight_planner}


@functools.lru_cache(maxsize=2048)
def _cached_plan(pass_, geometry, dtype, budget, machine, forced):
    geometry = Geometry(*(tuple(map(int, v)) if isinstance(v, tuple) else int(v) for v in geometry))
    dtype = np.dtype(dtype)
    variant = select(pass_, geometry, dtype, budget, machine)
    specs, details = _PLANNERS[pass_](variant, dtype, geometry, budget)
    return Plan(variant, specs, details)


def clear_plans():
    """Forget every cached plan: for tests and benchmarks that change a planning constant (a budget, a strip or
    job size) of a variant's module."""
    _cached_plan.cache_clear()


def plan(pass_, geometry, dtype, budget=None, machine=None):
    """The Plan (variant, scratch specs, variant details) of a pass for a Geometry of tuples and ints; cached per
    shape, budget, machine and forced variant (a kernel call allocates nothing here once its shape was planned)."""
    return _cached_plan(pass_, geometry, dtype, workspace.WORKSPACE_BYTES if budget is None else budget,
                        machine or target_machine(), _forced().get(pass_))


# ----- forcing a variant (tests, benchmarks) --------------------------------------------------------------------

_local = threading.local()


def _forced():
    return getattr(_local, "forced", {})


def applies(pass_, variant, dtype, geometry, budget=None):
    """Whether `variant`'s kernels can run `pass_` for this geometry (what they assume of the shape and the
    budget), whether or not select would prefer it."""
    x_shape, weight_shape, out_shape, stride, padding, dilation, groups = geometry
    dtype = np.dtype(dtype)
    budget = workspace.WORKSPACE_BYTES if budget is None else budget
    group_in, channels_out = weight_shape[2], weight_shape[3]
    winograd = winograd_applies(dtype, weight_shape, stride, padding, dilation, groups)
    if pass_ is Pass.BACKWARD_WEIGHT:
        tiled = direct_backward_weight_applies(dtype, weight_shape, groups, dilation)
        rules = {
            **{winograd_variant: lambda columns=columns: tiled and winograd and winograd_weight.backward_weight_plan(
                dtype, x_shape, weight_shape, out_shape, padding, budget, columns) is not None
               for winograd_variant, columns in WINOGRAD_COLUMNS.items()},
            Variant.POINTWISE: lambda: pointwise_applies(dtype, x_shape, weight_shape, out_shape, stride, padding,
                                                         groups) and channels_out % LANES == 0
            and group_in % weight_rows_multiple(channels_out) == 0,
            Variant.DIRECT_COLUMNS: lambda: tiled and dilation[1] == 1
            and direct.weight_columns_fit(dtype, weight_shape, budget),
            Variant.DIRECT: lambda: tiled,
            Variant.SMALL_ROWS: lambda: small_applies(weight_shape, stride, groups)
            and row_runs_apply(dtype, x_shape, weight_shape, out_shape, padding, dilation),
        }
    else:
        reduced, produced = (group_in, channels_out) if pass_ is Pass.FORWARD else (channels_out, group_in)
        fits = _weight_fits(dtype, weight_shape, budget)
        tiled = (direct_forward_applies(dtype, weight_shape, out_shape, groups) if pass_ is Pass.FORWARD else
                 fits and direct_backward_input_applies(dtype, weight_shape, x_shape, stride, padding, dilation,
                                                        groups))
        rules = {
            Variant.WINOGRAD_F4: lambda: winograd and winograd_f4.fits(dtype, group_in, channels_out, budget),
            Variant.WINOGRAD_F4X2: lambda: winograd and winograd_f4.fits(dtype, group_in, channels_out, budget,
                                                                         winograd_f4.NARROW_TILE),
            Variant.WINOGRAD_F2: lambda: winograd and winograd_f2.fits(dtype, group_in, channels_out, budget),
            Variant.POINTWISE: lambda: fits and pointwise_applies(dtype, x_shape, weight_shape, out_shape, stride,
                                                                  padding, groups)
            and forward_tiles_fit(produced, out_shape[2]),
            Variant.DIRECT: lambda: tiled,
            Variant.SMALL_ROWS: lambda: small_applies(weight_shape, stride, groups)
            and row_runs_apply(dtype, x_shape, weight_shape, out_shape, padding, dilation),
        }
        if pass_ is Pass.FORWARD:
            rules[Variant.FEW_PIXELS] = lambda: few_pixels_applies(dtype, weight_shape, out_shape, groups, budget)
    rules[Variant.SMALL_BANDS] = lambda: groups == 1 and tuple(stride) == (1, 1)
    rules[Variant.GEMM] = lambda: groups == 1
    rules[Variant.DEPTHWISE] = lambda: depthwise_applies(dtype, x_shape, weight_shape, groups)
    rules[Variant.GENERAL] = lambda: True
    rule = rules.get(variant)
    return rule is not None and bool(rule())


@contextlib.contextmanager
def force_variant(forward=None, backward_input=None, backward_weight=None):
    """Within the block, on this thread, run the given Variant for each pass named (the others as select
    decides). A pass whose shape the forced variant cannot run raises ValueError when it is planned."""
    chosen = {Pass.FORWARD: forward, Pass.BACKWARD_INPUT: backward_input, Pass.BACKWARD_WEIGHT: backward_weight}
    for pass_, variant in chosen.items():
        if variant is not None and not isinstance(variant, Variant):
            raise TypeError(f"force_variant: {pass_.value} expected a Variant, but got {variant!r}")
    previous = _forced()
    _local.forced = {**previous, **{p: v for p, v in chosen.items() if v is not None}}
    try:
        yield
    finally:
        _local.forced = previous
