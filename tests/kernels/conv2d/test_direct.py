"""The register-tiled direct variants (direct.py): Variant.DIRECT for every pass (the strided input gradient by
phases) and Variant.DIRECT_COLUMNS, the weight gradient as one column matrix; reduction blocks, weight-gradient
partials and strip bands under changed planning constants."""
import numpy as np
import pytest

from cnnnumba.kernels._runtime.machine import Machine, target_machine

from cnnnumba.kernels.conv2d import Pass, Variant, direct, plan, tiles, workspace
from tests.kernels.conv2d.common import (CASES, ConvCase, arrays, assert_close, case_id, check_passes,
                                         expected_pass, forced, on_threads, run_pass, select_module)

# The cases whose shapes the direct tiles take, per pass (float32; never float64)
DIRECT_APPLIES = {
    Pass.FORWARD: (9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32,
                   33),
    Pass.BACKWARD_INPUT: (11, 15, 16, 19, 20, 21, 22, 23, 24, 25, 27, 28, 29, 30),
    Pass.BACKWARD_WEIGHT: (9, 10, 12, 14, 15, 16, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32,
                           33),
}
PASS_NAMES = {Pass.FORWARD: "forward", Pass.BACKWARD_INPUT: "backward_input", Pass.BACKWARD_WEIGHT: "backward_weight"}


# Rows of 4 pixels: AVX-512's 4-pixel broad tile fits them, AVX2's 6-pixel tiles do not
BROAD_TILE_ROWS = {32}


def _direct_applies(index, pass_):
    """Whether the direct tiles run `pass_` of CASES[index] on the tiles compiled here."""
    return select_module.applies(pass_, Variant.DIRECT, np.float32, CASES[index].geometry)


def test_direct_applies_to_exactly_the_tiled_cases():
    """The case table must keep exercising the register-tiled kernels, not only the general ones. The list is the
    AVX-512 tiles'; narrower tiles (AVX2's 6 pixels, SSE's 2) fit more rows, except the rows of 4 pixels of
    BROAD_TILE_ROWS on AVX2."""
    exact = target_machine().tier == "avx512"
    for index, case in enumerate(CASES):
        for pass_, indices in DIRECT_APPLIES.items():
            applies = _direct_applies(index, pass_)
            if exact:
                assert applies == (index in indices), (index, pass_)
            else:
                assert applies or index not in indices or index in BROAD_TILE_ROWS, (index, pass_)
            assert not select_module.applies(pass_, Variant.DIRECT, np.float64, case.geometry), (index, pass_)


@pytest.mark.parametrize("index", sorted(set().union(*DIRECT_APPLIES.values())))
def test_forced_direct_matches_the_reference(index):
    """Every pass the direct tiles can run, run by them (where select prefers Winograd or the 1x1 tiles too)."""
    case = CASES[index]
    names = [PASS_NAMES[p] for p, indices in DIRECT_APPLIES.items() if index in indices and _direct_applies(index, p)]
    with forced(Variant.DIRECT, *names):
        check_passes(case, names=names)
        check_passes(case, names=("forward",) if "forward" in names else (), bias=False, relu=True)


# Rows of 7 and 8 output pixels (AVX2 runs its 4-pixel short tile along them), rows of 10, 14 and 32 (full tiles then
# short ones), 3x3 and stride 2 (the strided input gradient's phase rows too), 48 channels (the last channel tile
# overlaps), and 1x1 layers on 8- and 10-pixel rows
SHORT_ROW_CASES = [ConvCase(2, 8, 8, 32, 48, padding=1), ConvCase(2, 7, 7, 16, 64, padding=1),
                   ConvCase(2, 15, 16, 16, 64, stride=2, padding=1), ConvCase(3, 16, 16, 16, 64, kernel=1, stride=2),
                   ConvCase(2, 14, 14, 16, 48, padding=1), ConvCase(1, 9, 32, 3, 32, padding=1),
                   ConvCase(2, 10, 10, 24, 32, kernel=1), ConvCase(2, 21, 20, 16, 64, stride=2, padding=1)]


def _covered(channels, width):
    """The pixels forward_row_cover's tiles compute along a row of `width`, and whether each pixel is computed."""
    kind, pixels, _, main_end, short_end = tiles.forward_row_cover(channels, width)
    starts = [(start, pixels) for start in range(0, main_end, pixels)]
    starts += [(start, tiles.SHORT_TILE_PIXELS) for start in range(main_end, short_end, tiles.SHORT_TILE_PIXELS or 1)]
    if short_end < width:
        starts.append((width - pixels, pixels))
    hit = np.zeros(width, bool)
    for start, count in starts:
        assert 0 <= start and start + count <= width, (channels, width, start, count)
        hit[start:start + count] = True
    return sum(count for _, count in starts), bool(hit.all())


def test_row_covers_compute_each_pixel_once_where_the_short_tile_fits_them():
    """AVX2 covers a row with its 6-pixel tiles then 4-pixel short tiles wherever they fit it exactly (8: two short,
    14: 6 + 4 + 4, 32: 4 x 6 + 2 x 4); odd widths take the short tile alone where it computes at most 7/8 of what
    the 6-pixel tiles would (7, 19), else 6-pixel tiles with the last overlapping. Tiers without a short tile keep
    forward_tile's with the last overlapping. Rows holding no whole tile are not the row kernels'."""
    for channels in (16, 64):
        for width in (6, 7, 8, 9, 10, 14, 16, 19, 20, 32, 112):
            if not tiles.forward_tiles_fit(channels, width):
                continue  # the row kernels do not run: a row holds no whole tile
            computed, complete = _covered(channels, width)
            kind, pixels, tile_channels, main_end, short_end = tiles.forward_row_cover(channels, width)
            assert complete, (channels, width)
            if target_machine().tier == "avx2":
                assert tile_channels == 16
                if width % 2 == 0:
                    assert computed == width and short_end == width, (channels, width)
                    assert main_end == width - (width % 6 if width % 6 != 2 else 8), (channels, width)
                else:
                    assert (kind == tiles.SHORT) == (width in (7, 19)), (channels, width)
            else:
                assert (kind, pixels, tile_channels) == tuple(tiles.forward_tile(channels)), (channels, width)
                assert main_end == short_end == width - width % pixels


def _weight_rows_covered(channels_in, channels_out):
    """The (kind, first input channel, rows) of the weight-gradient tiles over channels_in input channels."""
    kind, tile_rows, _ = tiles.weight_tile(channels_out)
    main_end = tiles.weight_row_cover(channels_in, tile_rows)
    covered, ci = [], 0
    while ci < channels_in:
        row_kind, rows = tiles.weight_row_tile(kind, tile_rows, ci, main_end)
        covered.append((row_kind, ci, rows))
        ci += rows
    return covered


def test_weight_row_covers_take_each_input_channel_once():
    """AVX2's weight gradients run 6-row tiles then 4-row short tiles over any multiple of 4 input channels (64:
    10 x 6 + 4; 32: 4 x 6 + 2 x 4; 8: 2 x 4), the most 6-row tiles first; tiers without a short weight tile
    run weight_tile's alone. No tile reaches past the channels: a weight gradient's tiles accumulate."""
    for channels_out in (16, 32, 48, 64, 128):
        multiple = tiles.weight_rows_multiple(channels_out)
        for channels_in in range(multiple, 257, multiple):
            covered = _weight_rows_covered(channels_in, channels_out)
            assert [ci for _, ci, _ in covered] == list(np.cumsum([0] + [rows for _, _, rows in covered[:-1]]))
            assert covered[-1][1] + covered[-1][2] == channels_in, (channels_in, channels_out)
            short = [ci for kind, ci, rows in covered if kind == tiles.SHORT]
            if target_machine().tier == "avx2":
                assert multiple == 4 and all(rows == (4 if kind == tiles.SHORT else 6) for kind, _, rows in covered)
                assert short == list(range(channels_in - channels_in % 12, channels_in, 4)), channels_in
            else:
                assert not short and channels_in % covered[0][2] == 0


def test_weight_rows_multiple_per_tier():
    # AVX2: its short weight tile's 4 rows whatever the output channels; AVX-512: the rows of weight_tile's pick
    for channels_out, on_avx512 in ((128, 4), (64, 4), (96, 8), (32, 8), (48, 16), (16, 16)):
        assert tiles.weight_rows_multiple(channels_out, AVX2) == 4
        assert tiles.weight_rows_multiple(channels_out, AVX512) == on_avx512, channels_out


@pytest.mark.parametrize("case", SHORT_ROW_CASES, ids=case_id)
def test_short_rows_match_the_reference(case, small_reduction_blocks):
    """The row kernels with the short tile where the tier has one, with reduction blocks of 8 (the later blocks add
    into out) and the ReLU on the last."""
    variant = Variant.POINTWISE if case.kernel == (1, 1) else Variant.DIRECT
    names = [PASS_NAMES[p] for p in (Pass.FORWARD, Pass.BACKWARD_INPUT)
             if select_module.applies(p, variant, np.float32, case.geometry)]
    assert "forward" in names
    with forced(variant, *names):
        check_passes(case, names=names)
        check_passes(case, names=("forward",), bias=False, relu=True)


@pytest.mark.parametrize("case", [CASES[i] for i in (11, 16, 21, 23, 26)], ids=case_id)
def test_reduction_blocks_add_up(case, small_reduction_blocks):
    """Wide layers split the reduction into blocks that accumulate in out; blocks of 8 make these cases do it, and
    the ReLU clamps only after the last block (a clamp before it would lose negatives)."""
    names = [PASS_NAMES[p] for p in (Pass.FORWARD, Pass.BACKWARD_INPUT)
             if CASES.index(case) in DIRECT_APPLIES[p]]
    with forced(Variant.DIRECT, *names):
        check_passes(case, names=names)
        check_passes(case, names=("forward",), relu=True)


def test_split_output_channels_give_the_same_bits(plan_constant):
    """At a batch under JOBS_WANTED, a weight past SPLIT_CHANNELS_WEIGHT_BYTES splits the output channels among the
    forward's jobs, each running whole images: the same sums in the same order as bands of rows (so the same bits),
    on 1 and 2 threads."""
    case = ConvCase(2, 6, 9, 16, 128, padding=1)  # 128 channels: 2 tiles of 64 (AVX-512), 8 of 16 (AVX2, SSE)
    data = arrays(case)
    with forced(Variant.DIRECT, "forward"):
        assert plan(Pass.FORWARD, case.geometry, case.dtype).details[2] == 1
        unsplit = run_pass("forward", case, data, relu=True)
        plan_constant(direct, "SPLIT_CHANNELS_WEIGHT_BYTES", 16 << 10)
        assert plan(Pass.FORWARD, case.geometry, case.dtype).details[2] > 1
        for split in on_threads(lambda: run_pass("forward", case, data, relu=True)):
            np.testing.assert_array_equal(split, unsplit)
    assert_close(unsplit, expected_pass("forward", case, data, relu=True))


def test_weight_gradient_partials_shrink_under_a_small_budget_and_stay_thread_independent(plan_constant):
    """With a budget that holds two partials instead of the usual count, the result still matches the reference
    and is bit-identical on 1 and 2 threads (the chunk count depends on the shape and the budget only)."""
    case = CASES[19]
    partial = 3 * 96 * 32 * 4  # kH x (kW * C_in) x C_out, the folded layout
    plan_constant(workspace, "WORKSPACE_BYTES", 2 * (2 * partial + 256))
    data = arrays(case)
    with forced(Variant.DIRECT, "backward_weight"):
        variant, _, (shape, chunks, band_rows) = plan(Pass.BACKWARD_WEIGHT, case.geometry, case.dtype)
        assert variant is Variant.DIRECT and shape == (3, 1, 96, 32) and chunks == 2
        one, two = on_threads(lambda: run_pass("backward_weight", case, data))
    np.testing.assert_array_equal(one, two)
    assert_close(one, expected_pass("backward_weight", case, data))


def test_backward_weight_strips_hold_bands_of_rows(plan_constant):
    """Tall images are padded into a chunk's strip a band of rows at a time; the result does not change."""
    case = CASES[20]
    data = arrays(case)
    with forced(Variant.DIRECT, "backward_weight"):
        want = run_pass("backward_weight", case, data)
        plan_constant(direct, "WEIGHT_STRIP_BYTES", 1)  # one output row per band
        assert plan(Pass.BACKWARD_WEIGHT, case.geometry, case.dtype).details[2] == 1
        got = run_pass("backward_weight", case, data)
    np.testing.assert_array_equal(got, want)


# ---- Variant.DIRECT_COLUMNS: all kH * kW * C_in values under an output pixel side by side, one reduction
# padded once to a whole tile (layers with few input channels) ----

COLUMNS = [
    ConvCase(2, 12, 10, 3, 16, padding=1),                                  # a first layer: 27 -> 32 rows of 16
    ConvCase(3, 9, 11, 3, 32, padding=1),                                   # 27 -> 32 rows of 8-row tiles
    ConvCase(2, 11, 18, 3, 64, stride=2, padding=1),                        # stride 2, 4-row tiles of 64 channels
    ConvCase(2, 10, 12, 1, 16),                                             # one channel, no padding
    ConvCase(2, 13, 9, 3, 16, stride=(2, 1), padding=(2, 1), dilation=(2, 1)),  # stride, dilation: height only
    ConvCase(1, 8, 70, 2, 32, kernel=(5, 3), padding=(2, 0)),               # more than a block's pixels in a row
    ConvCase(2, 9, 12, 3, 32, kernel=(2, 4), stride=(1, 2), padding=(1, 2)),  # non-square kernel, strided width
]


@pytest.mark.parametrize("case", COLUMNS, ids=case_id)
def test_the_column_weight_gradient_matches_the_reference(case):
    if target_machine().tier == "avx512":  # where the tiles are narrower, a folded row may pad less
        assert case.selected("backward_weight") is Variant.DIRECT_COLUMNS
    with forced(Variant.DIRECT_COLUMNS, "backward_weight"):
        check_passes(case, names=("backward_weight",))


AVX2 = Machine("avx2", "haswell", 256, 8, 16, True)
AVX512 = Machine("avx512", "skylake-avx512", 512, 16, 32, True)


def test_the_kernel_row_tiles_take_first_layers_whose_kernel_rows_fill_them():
    # kernel rows of 9 values (3x3 on 3 channels): one by one on AVX-512 (9 x 16 output channels), three at a
    # time on AVX2 (27 rows as 13 + 14, x 8 output channels)
    for weight_shape, dilation_w, on_avx2, on_avx512 in (
            ((3, 3, 3, 32), 1, True, True), ((3, 3, 3, 16), 1, True, True), ((7, 3, 3, 64), 1, False, True),
            ((6, 3, 3, 64), 1, True, True),
            ((3, 3, 3, 8), 1, True, False), ((3, 3, 3, 20), 1, False, False), ((3, 3, 3, 32), 2, False, False),
            ((5, 5, 1, 8), 1, False, False), ((3, 3, 4, 32), 1, False, False)):
        assert tiles.kernel_row_tile_applies(weight_shape, dilation_w, AVX2) is on_avx2, weight_shape
        assert tiles.kernel_row_tile_applies(weight_shape, dilation_w, AVX512) is on_avx512, weight_shape
    # its partial is the unpadded column matrix; without it, the columns pad to whole weight tiles
    assert direct._padded_columns((3, 3, 3, 32), AVX2) == 27 and direct._padded_columns((3, 3, 3, 32), AVX512) == 27
    assert direct._padded_columns((3, 3, 3, 20), AVX2) == 28


KERNEL_ROW_CASES = [COLUMNS[0], COLUMNS[1], COLUMNS[2], COLUMNS[4], ConvCase(3, 33, 35, 3, 48, padding=1),
                    ConvCase(2, 14, 12, 3, 32, kernel=(6, 3), padding=(2, 1))]  # two groups of 3 kernel rows


@pytest.mark.parametrize("case", KERNEL_ROW_CASES, ids=case_id)
def test_the_kernel_row_tile_gives_the_column_kernels_bits(case, plan_constant):
    """Where the compiled tier has the tile (AVX-512, AVX2), the column-matrix weight gradient reads the strip in
    place and copies no columns, with the column copies' sums bit for bit; elsewhere (SSE) it copies columns."""
    data = arrays(case, seed=3)
    geometry = case.geometry
    with forced(Variant.DIRECT_COLUMNS, "backward_weight"):
        specs = dict((name, shape) for name, shape, _ in plan(Pass.BACKWARD_WEIGHT, geometry, case.dtype).specs)
        applies = tiles.kernel_row_tile_applies(geometry.weight_shape, geometry.dilation[1])
        assert ("columns" in specs) is not applies
        in_place = run_pass("backward_weight", case, data)
        plan_constant(direct, "kernel_row_tile_applies", lambda *arguments, **options: False)
        assert "columns" in dict((name, shape) for name, shape, _ in
                                 plan(Pass.BACKWARD_WEIGHT, geometry, case.dtype).specs)
        copied = run_pass("backward_weight", case, data)
    np.testing.assert_array_equal(in_place, copied)
    check_passes(case, data, names=("backward_weight",))


@pytest.mark.parametrize("case", [COLUMNS[0], COLUMNS[5]], ids=case_id)
def test_the_column_weight_gradient_prefetching_its_gradient_gives_the_same_bits(case, monkeypatch):
    data = arrays(case, seed=2)
    with forced(Variant.DIRECT_COLUMNS, "backward_weight"):
        monkeypatch.setattr(direct, "PREFETCH_MIN_BYTES", 1 << 62)
        plain = run_pass("backward_weight", case, data)
        monkeypatch.setattr(direct, "PREFETCH_MIN_BYTES", 0)  # these gradients are small: prefetch them anyway
        check_passes(case, names=("backward_weight",))
        np.testing.assert_array_equal(run_pass("backward_weight", case, data), plain)


@pytest.mark.parametrize("case", [
    ConvCase(2, 16, 16, 16, 32, stride=2, padding=1),  # 16 input channels: a kernel row is whole tiles already
    ConvCase(1, 16, 16, 8, 32, kernel=5, stride=2, padding=2),  # 8 channels under a 5-wide row: 200 rows either way
    ConvCase(2, 9, 12, 8, 32, padding=1, dilation=(1, 2)),  # width dilation: the kW taps are not side by side
], ids=case_id)
def test_layers_whose_kernel_rows_fill_whole_tiles_keep_the_row_path(case):
    assert case.selected("backward_weight") is Variant.DIRECT
    # the column kernel could run them, but would pad the reduction no less than the rows do
    assert not direct.weight_columns_pad_less(case.geometry.weight_shape)


@pytest.mark.parametrize("case", [COLUMNS[1], COLUMNS[4]], ids=case_id)
def test_the_column_weight_gradient_does_not_depend_on_thread_count_or_bands(case, plan_constant):
    data = arrays(case, seed=1)
    results = on_threads(lambda: run_pass("backward_weight", case, data))
    # one output row per band: the strip is refilled for every row, the sums keep their order
    plan_constant(direct, "WEIGHT_STRIP_BYTES", 1)
    columns_plan = plan(Pass.BACKWARD_WEIGHT, case.geometry, case.dtype)
    assert columns_plan.variant is Variant.DIRECT_COLUMNS and columns_plan.details[2] == 1
    results.append(run_pass("backward_weight", case, data))
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])
