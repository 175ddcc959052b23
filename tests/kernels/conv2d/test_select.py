"""select.py, the one place that decides which variant runs: a table from (pass, shape, dtype, machine) to the
expected Variant covering every variant of every pass (cifar-cnn, ResNet-20, LeNet-5 and MobileNetV2 layers, and
edge cases);
force_variant (refusals, per thread, part of the plan cache key); applies() agreeing with select()."""
import threading

import numpy as np
import pytest

from cnnnumba.kernels import conv2d as kernels
from cnnnumba.kernels._runtime.machine import Machine, target_machine
from cnnnumba.kernels.conv2d import Pass, Variant, force_variant, plan, select
from tests.kernels.conv2d.common import CASES, ConvCase, arrays, run_pass, select_module

F, BI, BW = Pass.FORWARD, Pass.BACKWARD_INPUT, Pass.BACKWARD_WEIGHT
V = Variant
f64 = np.float64

LAYERS = {  # batch 4; the models' layers at their input sizes
    "resnet20 16->16 @32": ConvCase(4, 32, 32, 16, 16, padding=1),
    "resnet20 32->32 @16": ConvCase(4, 16, 16, 32, 32, padding=1),
    "resnet20 64->64 @8": ConvCase(4, 8, 8, 64, 64, padding=1),
    "resnet20 16->32 s2": ConvCase(4, 32, 32, 16, 32, stride=2, padding=1),
    "resnet20 1x1 16->32 s2": ConvCase(4, 32, 32, 16, 32, kernel=1, stride=2),
    "resnet20 stem 3->16": ConvCase(4, 32, 32, 3, 16, padding=1),
    "cifar-cnn 3->32 @32": ConvCase(4, 32, 32, 3, 32, padding=1),
    "cifar-cnn 32->64 @16": ConvCase(4, 16, 16, 32, 64, padding=1),
    "cifar-cnn 64->64 @16": ConvCase(4, 16, 16, 64, 64, padding=1),
    "cifar-cnn b64 64->64 @16": ConvCase(64, 16, 16, 64, 64, padding=1),
    "cifar-cnn b64 64->128 @8": ConvCase(64, 8, 8, 64, 128, padding=1),
    "resnet18 224 b16 128->128 @28": ConvCase(16, 28, 28, 128, 128, padding=1),
    "resnet18 224 b32 256->256 @14": ConvCase(32, 14, 14, 256, 256, padding=1),
    "lenet5 1->6 @28": ConvCase(4, 28, 28, 1, 6, kernel=5, padding=2),
    "lenet5 6->16 @14": ConvCase(4, 14, 14, 6, 16, kernel=5),
    "resnet18 256->256 @4": ConvCase(4, 4, 4, 256, 256, padding=1),
    "resnet18 512->512 @2": ConvCase(4, 2, 2, 512, 512, padding=1),
    "resnet18 1x1 256->512 s2": ConvCase(4, 4, 4, 256, 512, kernel=1, stride=2),
    "resnet18 b1 512->512 @2": ConvCase(1, 2, 2, 512, 512, padding=1),
    "resnet18 b1 256->256 @4": ConvCase(1, 4, 4, 256, 256, padding=1),
    "resnet18 b1 128->128 @8": ConvCase(1, 8, 8, 128, 128, padding=1),
    "resnet18 224 512->512 @7": ConvCase(4, 7, 7, 512, 512, padding=1),
    "resnet18 224 256->512 s2": ConvCase(4, 14, 14, 256, 512, stride=2, padding=1),
    "resnet18 224 256->256 @14": ConvCase(4, 14, 14, 256, 256, padding=1),
    "resnet18 224 b1 256->256 @14": ConvCase(1, 14, 14, 256, 256, padding=1),
    "resnet18 b1 128->128 @16": ConvCase(1, 16, 16, 128, 128, padding=1),
    "resnet18 224 b16 512->512 @7": ConvCase(16, 7, 7, 512, 512, padding=1),
    "resnet18 128->256 s2 @4": ConvCase(4, 8, 8, 128, 256, stride=2, padding=1),
    "mobilenetv2 1x1 96->576 @4": ConvCase(4, 4, 4, 96, 576, kernel=1),
    "mobilenetv2 224 1x1 160->960 @7": ConvCase(1, 7, 7, 160, 960, kernel=1),
    "mobilenetv2 224 b16 1x1 960->160 @7": ConvCase(16, 7, 7, 960, 160, kernel=1),
    "mobilenetv2 dw 32 @32": ConvCase(4, 32, 32, 32, 32, padding=1, groups=32),
    "mobilenetv2 dw 96 s2": ConvCase(4, 32, 32, 96, 96, stride=2, padding=1, groups=96),
    "mobilenetv2 dw 144 @16": ConvCase(4, 16, 16, 144, 144, padding=1, groups=144),
    "mobilenetv2 dw 960 @2": ConvCase(4, 2, 2, 960, 960, padding=1, groups=960),
    # edge cases
    "16->16 @4": ConvCase(4, 4, 4, 16, 16, padding=1),             # a tiny output of 16 channels
    "6->12 5x5": ConvCase(4, 14, 14, 6, 12, kernel=5),             # 12 outputs: vectorised over channels
    "3->8 7x7 s2": ConvCase(2, 32, 32, 3, 8, kernel=7, stride=2, padding=3),
    "32->40 3x3": ConvCase(2, 9, 17, 32, 40, padding=1),           # 40 outputs: no whole weight tiles
    "groups 2": ConvCase(2, 8, 8, 4, 6, padding=1, groups=2),
    "depthwise": ConvCase(2, 8, 8, 16, 16, padding=1, groups=16),
    "depthwise x2": ConvCase(2, 8, 8, 16, 32, padding=1, groups=16),   # channel multiplier 2
    "1 channel s2": ConvCase(2, 9, 9, 1, 1, stride=2, padding=1),       # one filter per channel, but groups 1
    "1x1 16->32 @8": ConvCase(2, 8, 8, 16, 32, kernel=1),          # rows narrower than a 16-channel input tile
    "3x3 16->16 padding 3": ConvCase(2, 16, 16, 16, 16, padding=3),  # padding past Winograd's 2
    "64->64 @14": ConvCase(2, 14, 14, 64, 64, padding=1),  # 14 rows: F(4x2)'s 4-row tiles would hang over by 2
}

# (pass, layer, dtype, expected variant)
TABLE = [
    (F, "resnet20 16->16 @32", None, V.WINOGRAD_F4), (BI, "resnet20 16->16 @32", None, V.WINOGRAD_F4),
    (BW, "resnet20 16->16 @32", None, V.WINOGRAD_F4), (BW, "resnet20 32->32 @16", None, V.WINOGRAD_F4),
    # F(4x2) for reductions of 33 to 128 channels over outputs of whole 4-row tiles, F(2x2) past them
    (F, "resnet20 64->64 @8", None, V.WINOGRAD_F4X2), (BI, "resnet20 64->64 @8", None, V.WINOGRAD_F4X2),
    (F, "cifar-cnn b64 64->128 @8", None, V.WINOGRAD_F4X2), (BI, "cifar-cnn b64 64->128 @8", None, V.WINOGRAD_F4X2),
    (F, "64->64 @14", None, V.WINOGRAD_F2), (BI, "64->64 @14", None, V.WINOGRAD_F2),
    # fewer than select.WINOGRAD_MIN_BATCH_PIXELS (128) output pixels in the batch: the direct tiles forward
    (F, "resnet18 b1 128->128 @8", None, V.DIRECT), (BI, "resnet18 b1 128->128 @8", None, V.WINOGRAD_F4X2),
    (BW, "resnet20 64->64 @8", None, V.WINOGRAD_F2),
    # F(4x4) while the pass's reduction is at most 32 channels: C_in forward, C_out backward-input
    (F, "cifar-cnn 32->64 @16", None, V.WINOGRAD_F4), (BI, "cifar-cnn 32->64 @16", None, V.WINOGRAD_F4X2),
    # the weight gradient past 32 channels: F(4x4) from select.WINOGRAD_F4_WEIGHT_MIN_PIXELS (1024) output pixels
    # in the batch, up to 128 channels, F(4x2) past them, F(2x2) below them (resnet20 64->64 @8: 256 pixels)
    (BW, "cifar-cnn 32->64 @16", None, V.WINOGRAD_F4), (BW, "cifar-cnn 64->64 @16", None, V.WINOGRAD_F4),
    (BW, "cifar-cnn b64 64->64 @16", None, V.WINOGRAD_F4), (BW, "cifar-cnn b64 64->128 @8", None, V.WINOGRAD_F4),
    (BI, "cifar-cnn b64 64->64 @16", None, V.WINOGRAD_F4X2), (BW, "resnet18 224 b16 128->128 @28", None, V.WINOGRAD_F4),
    (BW, "resnet18 224 b32 256->256 @14", None, V.WINOGRAD_F4X2),
    (BW, "resnet18 224 b1 256->256 @14", None, V.WINOGRAD_F2),
    (F, "resnet20 1x1 16->32 s2", None, V.POINTWISE), (BI, "resnet20 1x1 16->32 s2", None, V.POINTWISE),
    (BW, "resnet20 1x1 16->32 s2", None, V.POINTWISE),
    (F, "1x1 16->32 @8", None, V.POINTWISE), (BI, "1x1 16->32 @8", None, {"avx512": V.GEMM, "avx2": V.POINTWISE}),
    (F, "resnet20 16->32 s2", None, V.DIRECT), (BI, "resnet20 16->32 s2", None, V.DIRECT),
    (BW, "resnet20 16->32 s2", None, V.DIRECT), (F, "cifar-cnn 3->32 @32", None, V.DIRECT),
    (F, "32->40 3x3", None, V.DIRECT), (BI, "32->40 3x3", None, V.DIRECT),
    (F, "3x3 16->16 padding 3", None, V.DIRECT), (BW, "lenet5 6->16 @14", None, {"avx512": V.DIRECT, "avx2": V.DIRECT_COLUMNS}),
    (BW, "cifar-cnn 3->32 @32", None, V.DIRECT_COLUMNS), (BW, "resnet20 stem 3->16", None, V.DIRECT_COLUMNS),
    (F, "lenet5 6->16 @14", None, V.SMALL_ROWS), (BI, "lenet5 6->16 @14", None, V.SMALL_ROWS),
    (BI, "lenet5 1->6 @28", None, V.SMALL_ROWS), (BW, "6->12 5x5", None, V.SMALL_ROWS),
    (BI, "resnet20 stem 3->16", None, V.SMALL_ROWS),
    (F, "lenet5 1->6 @28", None, V.SMALL_BANDS), (BW, "lenet5 1->6 @28", None, V.SMALL_BANDS),
    (F, "lenet5 6->16 @14", f64, V.SMALL_BANDS), (BI, "lenet5 6->16 @14", f64, V.SMALL_BANDS),
    (BW, "lenet5 6->16 @14", f64, V.SMALL_BANDS), (F, "resnet20 16->16 @32", f64, V.SMALL_BANDS),
    (F, "3->8 7x7 s2", None, V.GEMM), (BI, "cifar-cnn 3->32 @32", None, V.GEMM),
    (BW, "32->40 3x3", None, V.GEMM), (F, "cifar-cnn 3->32 @32", f64, V.GEMM),
    (BI, "resnet20 64->64 @8", f64, V.GEMM), (BW, "resnet20 1x1 16->32 s2", f64, V.GEMM),
    # outputs of at most 49 pixels per image: GEMM (select.TINY_OUTPUT_MAX_PIXELS), and FEW_PIXELS forward while
    # the batch has at most select.FEW_PIXELS_MAX output pixels, on AVX2 at most its product tile's 32
    (F, "resnet18 256->256 @4", None, {"avx512": V.FEW_PIXELS, "avx2": V.GEMM}),
    (BI, "resnet18 256->256 @4", None, V.GEMM),
    (BW, "resnet18 256->256 @4", None, V.GEMM), (BW, "resnet18 512->512 @2", None, V.GEMM),
    (BW, "resnet18 1x1 256->512 s2", None, V.GEMM),
    (F, "resnet18 1x1 256->512 s2", None, V.FEW_PIXELS), (F, "resnet18 b1 512->512 @2", None, V.FEW_PIXELS),
    (F, "resnet18 b1 256->256 @4", None, V.FEW_PIXELS), (BI, "resnet18 b1 512->512 @2", None, V.GEMM),
    (F, "resnet18 b1 512->512 @2", f64, V.GEMM),
    (F, "resnet18 224 512->512 @7", None, {"avx512": V.FEW_PIXELS, "avx2": V.GEMM}),
    (BI, "resnet18 224 512->512 @7", None, V.GEMM),
    (F, "resnet18 224 b16 512->512 @7", None, V.GEMM),  # 784 pixels in the batch
    (BW, "resnet18 224 512->512 @7", None, V.WINOGRAD_F2),  # Winograd's weight gradient keeps 5x5 to 7x7
    (F, "resnet18 224 256->512 s2", None, {"avx512": V.FEW_PIXELS, "avx2": V.GEMM}),
    (BI, "resnet18 224 256->512 s2", None, V.GEMM),
    (BW, "resnet18 224 256->512 s2", None, V.GEMM),
    (F, "resnet18 224 256->256 @14", None, V.WINOGRAD_F2),  # 14x14: past the GEMM's sizes
    # at most select.FEW_PIXELS_SHARES_MAX output pixels in the batch and a weight FEW_PIXELS streams in shares
    # (2.4 MB): FEW_PIXELS at any output size; a smaller weight (0.6 MB) as before
    (F, "resnet18 224 b1 256->256 @14", None, V.FEW_PIXELS), (BI, "resnet18 224 b1 256->256 @14", None, V.WINOGRAD_F2),
    (F, "resnet18 b1 128->128 @16", None, V.WINOGRAD_F4X2),
    # a tiny output whose rows the forward tiles cover recomputing at most 8 of 7 pixels (select.tiles_cover_rows:
    # AVX-512's 4-pixel tiles at 4 and 7 pixels, not AVX2's 6-pixel ones): 1x1 on POINTWISE while FEW_PIXELS would
    # take it, else DIRECT for a weight of at most select.TINY_DIRECT_MAX_WEIGHT_BYTES (1.2 MB here; 256->256 is 2.4)
    (F, "mobilenetv2 1x1 96->576 @4", None, {"avx512": V.POINTWISE, "avx2": V.GEMM}),
    (F, "mobilenetv2 224 1x1 160->960 @7", None, {"avx512": V.POINTWISE, "avx2": V.GEMM}),
    (F, "mobilenetv2 224 b16 1x1 960->160 @7", None, V.GEMM),  # 784 pixels in the batch
    (F, "resnet18 128->256 s2 @4", None, {"avx512": V.DIRECT, "avx2": V.GEMM}),
    (F, "16->16 @4", None, V.WINOGRAD_F4), (BW, "16->16 @4", None, V.WINOGRAD_F4),  # 16 channels: as before
    (F, "1 channel s2", None, V.GEMM),
    (F, "mobilenetv2 dw 32 @32", None, V.DEPTHWISE), (BI, "mobilenetv2 dw 32 @32", None, V.DEPTHWISE),
    (BW, "mobilenetv2 dw 32 @32", None, V.DEPTHWISE), (F, "mobilenetv2 dw 96 s2", None, V.DEPTHWISE),
    (BI, "mobilenetv2 dw 96 s2", None, V.DEPTHWISE), (BW, "mobilenetv2 dw 96 s2", None, V.DEPTHWISE),
    (F, "mobilenetv2 dw 144 @16", f64, V.DEPTHWISE), (BI, "mobilenetv2 dw 144 @16", f64, V.DEPTHWISE),
    (BW, "mobilenetv2 dw 960 @2", None, V.DEPTHWISE), (F, "depthwise", None, V.DEPTHWISE),
    (BI, "depthwise", f64, V.DEPTHWISE), (BW, "depthwise", f64, V.DEPTHWISE),
    (F, "groups 2", None, V.GENERAL), (BI, "groups 2", f64, V.GENERAL), (BW, "depthwise x2", None, V.GENERAL),
    (F, "depthwise x2", f64, V.GENERAL), (BI, "depthwise x2", None, V.GENERAL),
]
MACHINES = {
    "avx2": Machine("avx2", "haswell", 256, 8, 16, True),
    "avx512": Machine("avx512", "skylake-avx512", 512, 16, 32, True),
}


def _expected(expected, tier):
    """A row's variant on a tier: one Variant for every tier, or a dict where the tiers' tiles decide apart."""
    return expected.get(tier) if isinstance(expected, dict) else expected


def _row_id(row):
    pass_, layer, dtype, expected = row
    name = "-".join(f"{k}:{v.name}" for k, v in expected.items()) if isinstance(expected, dict) else expected.name
    return f"{pass_.value}-{layer}-{np.dtype(dtype or np.float32).name}-{name}"


def _case(layer, dtype):
    return LAYERS[layer].cast(dtype or np.float32)


def test_the_table_covers_every_variant_of_every_pass():
    covered = {(pass_, _expected(expected, "avx512")) for pass_, _, _, expected in TABLE}
    for pass_ in Pass:
        variants = (set(Variant) - ({V.DIRECT_COLUMNS} if pass_ is not BW else set())
                    - ({V.FEW_PIXELS} if pass_ is not F else set()))
        assert {v for p, v in covered if p is pass_} == variants, pass_


@pytest.mark.parametrize("machine", MACHINES)
@pytest.mark.parametrize("row", TABLE, ids=_row_id)
def test_select_picks_the_expected_variant(row, machine):
    pass_, layer, dtype, expected = row
    case = _case(layer, dtype)
    assert select(pass_, case.geometry, case.dtype, machine=MACHINES[machine]) is _expected(expected, machine)
    here = _expected(expected, target_machine().tier)
    if here is not None:  # the machine the kernels are compiled for
        assert select(pass_, case.geometry, case.dtype) is here
        assert select_module.applies(pass_, here, case.dtype, case.geometry)


def test_avx2_and_avx512_differ_only_where_a_tile_width_decides():
    """AVX2's forward tiles are 6 pixels wide where AVX-512's narrow tile is 16: rows of 6 to 15 pixels (and 16
    channels) that fit only the former take a tiled variant on AVX2 and a few-channel or GEMM one on AVX-512;
    AVX-512's broad tile is 4 pixels wide: a tiny output's rows of 4 to 7 pixels, which AVX2's tiles do not cover,
    take a tiled variant on AVX-512 and FEW_PIXELS or GEMM on AVX2; AVX2 prefers FEW_PIXELS for at most its product
    tile's 32 rows, AVX-512 for up to select.FEW_PIXELS_MAX; every other shape selects the same on both."""
    shapes = [(_case(layer, dtype), pass_) for pass_, layer, dtype, _ in TABLE]
    shapes += [(case.cast(dtype), pass_) for case in CASES for dtype in (np.float32, f64) for pass_ in Pass]
    differing = 0
    for case, pass_ in shapes:
        picks = {name: select(pass_, case.geometry, case.dtype, machine=m) for name, m in MACHINES.items()}
        if picks["avx2"] is picks["avx512"]:
            continue
        differing += 1
        rows = case.geometry.x_shape if pass_ is Pass.BACKWARD_INPUT else case.geometry.out_shape
        if picks["avx512"] in (V.DIRECT, V.POINTWISE) and pass_ is Pass.FORWARD and 4 <= rows[2] < 8:
            assert picks["avx2"] in (V.FEW_PIXELS, V.GEMM), (case, pass_, picks)
            continue
        if picks["avx512"] is V.FEW_PIXELS:  # on AVX2 past 32 rows the GEMM, or the 6-pixel tiles where they cover
            covered = select_module.tiles_cover_rows(rows[3], rows[2], MACHINES["avx2"])
            assert (picks["avx2"] is V.GEMM and rows[0] * rows[1] * rows[2] > 32
                    or picks["avx2"] in (V.DIRECT, V.POINTWISE) and covered), (case, pass_, picks)
            continue
        # narrower rows, or (weight gradients) 4-channel AVX2 tiles that pad a folded reduction differently
        assert picks["avx2"] in (V.DIRECT, V.POINTWISE, V.DIRECT_COLUMNS), (case, pass_, picks)
        assert rows[2] < 16 or pass_ is Pass.BACKWARD_WEIGHT, (case, pass_, picks)
    assert differing >= 2


@pytest.mark.parametrize("dtype", [np.float32, f64])
def test_the_selected_variant_applies(dtype):
    """applies() holds for whatever select() picks, on every layer and case the tests use."""
    for case in [c.cast(dtype) for c in (*LAYERS.values(), *CASES)]:
        for pass_ in Pass:
            variant = select(pass_, case.geometry, case.dtype)
            assert select_module.applies(pass_, variant, case.dtype, case.geometry), (case, pass_, variant)


def test_winograd_applies_to_3x3_stride_1_float32_with_whole_channel_blocks():
    rule = select_module.winograd_applies
    f32, shape = np.float32, (3, 3, 64, 64)
    assert rule(f32, shape, (1, 1), (1, 1), (1, 1), 1)
    assert rule(f32, shape, (1, 1), (2, 2), (1, 1), 1)
    for args in ((f64, shape, (1, 1), (1, 1), (1, 1), 1), (f32, shape, (2, 2), (1, 1), (1, 1), 1),
                 (f32, shape, (1, 1), (1, 1), (2, 2), 1), (f32, shape, (1, 1), (3, 3), (1, 1), 1),
                 (f32, shape, (1, 1), (1, 1), (1, 1), 2), (f32, (3, 3, 24, 64), (1, 1), (1, 1), (1, 1), 1),
                 (f32, (3, 3, 64, 40), (1, 1), (1, 1), (1, 1), 1), (f32, (5, 5, 64, 64), (1, 1), (1, 1), (1, 1), 1)):
        assert not rule(*args), args


# ---- force_variant ----

@pytest.mark.parametrize("pass_name, variant, layer", [
    ("forward", V.WINOGRAD_F4, "lenet5 6->16 @14"),        # a 5x5 kernel
    ("forward", V.DIRECT_COLUMNS, "cifar-cnn 3->32 @32"),  # a weight-gradient variant only
    ("backward_input", V.FEW_PIXELS, "resnet18 b1 512->512 @2"),  # a forward variant only
    ("forward", V.FEW_PIXELS, "resnet18 224 b16 512->512 @7"),  # 784 output pixels in the batch
    ("forward", V.FEW_PIXELS, "32->40 3x3"),               # 40 channels: not whole 16-channel strips
    ("backward_input", V.POINTWISE, "resnet20 16->16 @32"),
    ("backward_weight", V.SMALL_ROWS, "resnet20 64->64 @8"),  # too many channels
    ("backward_weight", V.GEMM, "groups 2"),
    ("forward", V.DEPTHWISE, "depthwise x2"),             # two filters per channel
    ("backward_input", V.DEPTHWISE, "groups 2"),
])
def test_forcing_a_variant_that_cannot_run_the_shape_raises_naming_it(pass_name, variant, layer):
    case = LAYERS[layer]
    pass_ = Pass(pass_name)
    assert not select_module.applies(pass_, variant, case.dtype, case.geometry)
    with force_variant(**{pass_name: variant}):
        with pytest.raises(ValueError, match=f"{pass_name} pass cannot run {variant.name}"):
            select(pass_, case.geometry, case.dtype)
        with pytest.raises(ValueError, match=variant.name):
            run_pass(pass_name, case, arrays(case))


def test_force_variant_takes_variants_only():
    with pytest.raises(TypeError, match="forward expected a Variant"):
        with force_variant(forward="gemm"):
            pass


def test_force_variant_applies_to_the_named_passes_until_the_block_ends():
    case = LAYERS["resnet20 16->16 @32"]
    with force_variant(backward_input=V.GEMM):
        assert select(BI, case.geometry, case.dtype) is V.GEMM
        assert select(F, case.geometry, case.dtype) is V.WINOGRAD_F4
        with force_variant(forward=V.DIRECT):  # nested: adds to the outer block
            assert [select(p, case.geometry, case.dtype) for p in Pass] == [V.DIRECT, V.GEMM, V.WINOGRAD_F4]
        assert select(F, case.geometry, case.dtype) is V.WINOGRAD_F4
    assert select(BI, case.geometry, case.dtype) is V.WINOGRAD_F4


def test_force_variant_is_per_thread():
    """Threads may train side by side: a block on one thread leaves another thread's selection alone."""
    case = LAYERS["resnet20 16->16 @32"]
    inside, seen = threading.Event(), {}

    def other_thread():
        inside.wait(10)
        seen["select"] = select(F, case.geometry, case.dtype)
        seen["plan"] = plan(F, case.geometry, case.dtype).variant

    worker = threading.Thread(target=other_thread)
    worker.start()
    with force_variant(forward=V.GEMM):
        inside.set()
        worker.join(10)
        assert select(F, case.geometry, case.dtype) is V.GEMM
    assert seen == {"select": V.WINOGRAD_F4, "plan": V.WINOGRAD_F4}


def test_forcing_is_part_of_the_plan_cache_key():
    """The same shape planned without, under and again without a forced variant: each plan is its own variant's,
    and the entry point's workspace size follows."""
    case = LAYERS["resnet20 16->16 @32"]
    free = plan(F, case.geometry, case.dtype)
    with force_variant(forward=V.GEMM):
        forced = plan(F, case.geometry, case.dtype)
        gemm_bytes = kernels.conv2d_workspace_bytes("forward", case.x_shape, case.weight_shape, case.out_shape,
                                                    case.dtype, **case.options)
    again = plan(F, case.geometry, case.dtype)
    assert (free.variant, forced.variant, again.variant) == (V.WINOGRAD_F4, V.GEMM, V.WINOGRAD_F4)
    assert free.specs != forced.specs and again == free
    assert gemm_bytes != kernels.conv2d_workspace_bytes("forward", case.x_shape, case.weight_shape, case.out_shape,
                                                        case.dtype, **case.options)
