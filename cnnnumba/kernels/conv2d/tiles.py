"""Register tiles of the float32 convolutions: LLVM IR intrinsics whose accumulators stay in vector registers, and
the rules that pick a tile for a layer. Every register-tiled pass (direct, 1x1, the Winograd GEMMs, their weight
gradients) runs these tiles; a tile's shape is a parameter of its builder (pixels or input channels x vectors of
LANES output channels), so a CPU tier can size them for its registers.

A forward tile computes `pixels` output pixels x `vectors` * LANES output channels: per input channel, `vectors`
weight loads and `pixels` broadcast inputs feed pixels * vectors fused multiply-adds. Tiles at the right/bottom
edges are shifted back to overlap their neighbour (recomputing identical values) instead of needing remainder code.
A weight-gradient tile accumulates `rows` input channels x `vectors` * LANES output channels over pixels. The
few-channel kernels' tiles are in pixel_tiles.py; every tier's tile shapes, theirs too, are in TIER_TILES here.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .._runtime import jit
from .._runtime.machine import target_machine
from .._runtime.vector import (INDEX, LANES, broadcast, element_pointer, fma_function, load_vector, splat,
                               store_vector, vector_fma)

# The tiles' shapes per CPU tier: (pixels, vectors of LANES output channels) of the forward tiles and (input
# channels, vectors) of the weight-gradient tiles, for the kinds BROAD, WIDE and NARROW (see forward_tile and
# weight_tile), and (vectors of pixels, output channels) of the largest few-channel tile. A tile's accumulators,
# its loads and a broadcast must fit the tier's vector registers; one <LANES x float> vector is one zmm, two ymm
# (AVX2) or four xmm / NEON registers. The few-channel row-run tiles (small_rows.py) hold one output pixel of
# `row_images` images, and `row_weight_rows` inputs of a weight-gradient row, as vectors of 16 output channels.
# The depthwise tiles (depthwise.py) hold `depthwise_pixels` output pixels of one 64-byte vector of channels
# (forward and input gradient: one weight load per that many input loads and FMAs), and `depthwise_sums` running
# sums of one weight-gradient tap (independent FMA chains, each waiting on its own last result). `product`, where a
# tier has one: ((pixels, vectors), most rows) of the tile few_pixels.py runs for products of at most that many
# rows. `short`, where a tier has one: (pixels, vectors) of a forward tile of fewer pixels that the direct forward
# runs beside or instead of its forward tiles along rows they would cover with overlap (forward_row_cover).
# `weight_short`, where a tier has one: (input channels, vectors) of a weight-gradient tile of fewer rows, of the
# weight tiles' vectors, covering the input channels their rows do not divide (weight_row_cover).
# `kernel_row`, where a tier has one: (run, tiles, lanes) of the weight-gradient tiles of a first layer whose
# kernel rows hold `run` values each, kW * C_in (kernel_row_tile_applies): the tiles take `tiles` rows in turn of a
# group of kernel rows' (kh, kw, ci) reduction, read in place from the strip, x one vector of `lanes` channels.
TIER_TILES = {
    # 32 zmm: 16 accumulators; broad tiles (4 x 64: 4 weight loads and 4 broadcasts per 16 FMAs, against 2 and 8)
    # from 64 output channels, wide (8 x 32) from 32, narrow (16 x 16) for 16-channel layers
    "avx512": {"forward": ((4, 4), (8, 2), (16, 1)), "weight": ((4, 4), (8, 2), (16, 1)), "few_channel": (2, 8),
               "row_images": 8, "row_weight_rows": 15, "depthwise_pixels": 8, "depthwise_sums": 4,
               "product": None,  # the broad tile already reads 4 cache lines of a weight row
               "short": None, "weight_short": None,
               # 9 accumulators a kernel row: cifar-cnn's first layer 0.60 ms against the 8 x 32 tiles' 0.79-0.81,
               # whose columns padded its 27 rows to 32; one 27-row tile was no faster (bench/README.md)
               "kernel_row": (9, (9,), 16)},
    # 16 ymm: 6 x 16 channels is 12 accumulators, 2 loads and a broadcast (BLIS' and OpenBLAS' Haswell sgemm
    # kernels are 6 x 16 too); the weight gradient's 6-row tiles leave multiples of 4 input channels to its
    # 4-row short tiles (8 accumulators, latency-bound: 64x128 Winograd products 98 against 105 GFLOP/s a thread)
    "avx2": {"forward": ((6, 1),) * 3, "weight": ((6, 1),) * 3, "weight_short": (4, 1), "few_channel": (1, 6),
             "row_images": 4,
             "row_weight_rows": 6, "depthwise_pixels": 4, "depthwise_sums": 4,
             # a few rows times a weight streamed from memory: 2 x 32 reads 2 lines of each weight row per strip
             # where 6 x 16 reads 1 (1x2x2 512->512: 0.35 against 0.53 ms; a tie from 32 rows, bench/README.md)
             "product": ((2, 2), 32),
             # 8 accumulators, as many FMAs as 2 ports x 4 cycles keep in flight: on 8-pixel rows, which the 6-pixel
             # tiles cover computing 12, 1x8x8 128->128 ran 0.13-0.14 ms against 0.17-0.18 (bench/README.md)
             "short": (4, 1),
             # 3x3 on 3 channels: its 27 rows as 13 + 14 accumulators of 8 channels (9 a kernel row were FMA
             # latency-bound), one load per 13 or 14 broadcasts and FMAs: 0.80 ms against 0.87 (bench/README.md)
             "kernel_row": (9, (13, 14), 8)},
    # 16 xmm (SSE; NEON has 32 but is only checked for correctness): 2 x 16 is 8 accumulators and 4 loads
    "sse": {"forward": ((2, 1),) * 3, "weight": ((2, 1),) * 3, "few_channel": (1, 2), "row_images": 2,
            "row_weight_rows": 2, "depthwise_pixels": 2, "depthwise_sums": 2, "product": None, "short": None,
            "weight_short": None, "kernel_row": None},
}
_TIER_TABLE = {"avx512": "avx512", "avx2": "avx2", "avx": "avx2", "neon": "avx2", "sse": "sse", "generic": "sse"}
TILES = TIER_TILES[_TIER_TABLE[target_machine().tier]]

(BROAD_TILE_PIXELS, _broad), (TILE_PIXELS, _wide), (NARROW_TILE_PIXELS, _narrow) = TILES["forward"]
BROAD_TILE_CHANNELS, TILE_CHANNELS, NARROW_TILE_CHANNELS = _broad * LANES, _wide * LANES, _narrow * LANES
(BROAD_WEIGHT_TILE_ROWS, _broad), (WEIGHT_TILE_ROWS, _wide), (NARROW_WEIGHT_TILE_ROWS, _narrow) = TILES["weight"]
BROAD_WEIGHT_TILE_CHANNELS, WEIGHT_TILE_CHANNELS, NARROW_WEIGHT_TILE_CHANNELS = (
    _broad * LANES, _wide * LANES, _narrow * LANES)
(PRODUCT_TILE_PIXELS, _product), PRODUCT_TILE_MAX_ROWS = TILES["product"] or ((0, 0), 0)
PRODUCT_TILE_CHANNELS = _product * LANES
SHORT_TILE_PIXELS, _short = TILES["short"] or (0, 0)
SHORT_TILE_CHANNELS = _short * LANES
KERNEL_ROW_RUN, _kernel_row_rows, KERNEL_ROW_TILE_LANES = TILES["kernel_row"] or (0, (1,), LANES)  # run 0: none
SHORT_WEIGHT_TILE_ROWS, _short_weight = TILES["weight_short"] or (0, 0)  # 0 rows: none
# The most output pixels a forward tile covers: scratch for one tile's row of outputs holds this many.
MAX_TILE_PIXELS = max(pixels for pixels, _ in TILES["forward"])


# The forward tiles' relu argument (and the depthwise tile's): 0 stores the sums, 1 clamps them at 0 (ReLU),
# RELU6_CODE at 0 and 6, NaN kept either way; a conv's ReLU6 then costs no pass of its own over the output.
RELU6_CODE = 2

# The tile-kind rules, one per pass kind; kinds number the tiles run_forward_tile and run_weight_tile run.
BROAD, WIDE, NARROW = 2, 1, 0
PRODUCT = 3  # TILES["product"], run by run_product_tile only
SHORT = 4  # TILES["short"] in run_row_tile, TILES["weight_short"] in run_weight_tile


@jit
def forward_tile(channels_out):
    """(kind, pixels, channels) of the forward tile for a layer of channels_out outputs (forward, 1x1, the
    Winograd GEMMs): the widest tile the channels fill, edge tiles overlapping."""
    if channels_out >= BROAD_TILE_CHANNELS:
        return BROAD, BROAD_TILE_PIXELS, BROAD_TILE_CHANNELS
    if channels_out >= TILE_CHANNELS:
        return WIDE, TILE_PIXELS, TILE_CHANNELS
    return NARROW, NARROW_TILE_PIXELS, NARROW_TILE_CHANNELS


@jit
def weight_tile(channels_out):
    """(kind, input channels, output channels) of the weight-gradient tile: the widest whose channels divide
    channels_out (a weight gradient's tiles cannot overlap: they accumulate)."""
    if channels_out % BROAD_WEIGHT_TILE_CHANNELS == 0:
        return BROAD, BROAD_WEIGHT_TILE_ROWS, BROAD_WEIGHT_TILE_CHANNELS
    if channels_out % WEIGHT_TILE_CHANNELS == 0:
        return WIDE, WEIGHT_TILE_ROWS, WEIGHT_TILE_CHANNELS
    return NARROW, NARROW_WEIGHT_TILE_ROWS, NARROW_WEIGHT_TILE_CHANNELS


@jit
def forward_row_cover(channels_out, width):
    """How the direct and 1x1 forwards cover rows of `width` output pixels: (kind, pixels, channels, main_end,
    short_end). Tiles of `kind` (pixels x channels) start at 0, pixels, ... before main_end, the tier's short tiles
    at main_end, main_end + SHORT_TILE_PIXELS, ... before short_end, and where short_end < width one more tile of
    `kind` ends at width, overlapping its neighbour (it recomputes their shared pixels over the whole reduction).
    Where the tier has a short tile of the same channels, the most full tiles whose remainder the short tiles fill
    exactly (32 pixels: 4 x 6 + 2 x 4 computes 32 against 36; 14: 6 + 2 x 4); where no such split exists (odd
    widths), short tiles alone where they compute at most 7/8 of the pixels (7 and 19: 8 and 20 against 12 and 24).
    Short tiles along a whole row cost more per pixel than the overlap (112-pixel rows 1.12x slower), hence the
    most full tiles first (bench/README.md)."""
    kind, pixels, channels = forward_tile(channels_out)
    if SHORT_TILE_PIXELS and channels == SHORT_TILE_CHANNELS:
        for full in range(width // pixels, -1, -1):
            if (width - full * pixels) % SHORT_TILE_PIXELS == 0:
                return kind, pixels, channels, full * pixels, width
        if width >= SHORT_TILE_PIXELS \
                and 8 * -(-width // SHORT_TILE_PIXELS) * SHORT_TILE_PIXELS <= 7 * -(-width // pixels) * pixels:
            whole = width - width % SHORT_TILE_PIXELS
            return SHORT, SHORT_TILE_PIXELS, SHORT_TILE_CHANNELS, whole, whole
    whole = width - width % pixels
    return kind, pixels, channels, whole, whole


def product_tile(rows, channels_out):
    """(kind, pixels, channels) of the forward tile for a product of `rows` pixel rows split into strips of output
    channels (few_pixels.py): the tier's product tile for at most its rows where its channels divide channels_out;
    else, as strips must not overlap (each adds its reduction blocks into out), the widest of the broad, wide and
    narrow tiles whose channels divide channels_out: it reads the most of each weight row per broadcast input
    (AVX-512's 4 x 64 tile ran 1x7x7 512->512 1.22 ms against the 8 x 32's 1.46, bench/README.md)."""
    if PRODUCT_TILE_PIXELS and rows <= PRODUCT_TILE_MAX_ROWS and channels_out % PRODUCT_TILE_CHANNELS == 0:
        return PRODUCT, PRODUCT_TILE_PIXELS, PRODUCT_TILE_CHANNELS
    if channels_out % BROAD_TILE_CHANNELS == 0:
        return BROAD, BROAD_TILE_PIXELS, BROAD_TILE_CHANNELS
    if channels_out % TILE_CHANNELS == 0:
        return WIDE, TILE_PIXELS, TILE_CHANNELS
    return NARROW, NARROW_TILE_PIXELS, NARROW_TILE_CHANNELS


def tile_shapes():
    """The register tiles, for reports: pass kind -> [(pixels or input channels, output channels), ...]."""
    return {"forward": [(BROAD_TILE_PIXELS, BROAD_TILE_CHANNELS), (TILE_PIXELS, TILE_CHANNELS),
                        (NARROW_TILE_PIXELS, NARROW_TILE_CHANNELS)],
            "weight": [(BROAD_WEIGHT_TILE_ROWS, BROAD_WEIGHT_TILE_CHANNELS), (WEIGHT_TILE_ROWS, WEIGHT_TILE_CHANNELS),
                       (NARROW_WEIGHT_TILE_ROWS, NARROW_WEIGHT_TILE_CHANNELS)],
            "few-channel": [(TILES["few_channel"][0] * LANES, TILES["few_channel"][1])],
            "product": [(PRODUCT_TILE_PIXELS, PRODUCT_TILE_CHANNELS)] if PRODUCT_TILE_PIXELS else [],
            "short row": [(SHORT_TILE_PIXELS, SHORT_TILE_CHANNELS)] if SHORT_TILE_PIXELS else [],
            "short weight": [(SHORT_WEIGHT_TILE_ROWS, _short_weight * LANES)] if SHORT_WEIGHT_TILE_ROWS else [],
            "kernel row": [(rows, KERNEL_ROW_TILE_LANES) for rows in _kernel_row_rows] if KERNEL_ROW_RUN else []}


def tiles_of(machine=None):
    """The tile table of `machine`'s tier (default: the tier these kernels are compiled for), for the selector's
    rules; the kernels themselves always run TILES."""
    return TILES if machine is None else TIER_TILES[_TIER_TABLE[machine.tier]]


def forward_row_tile_pixels(channels, machine=None):
    """Pixels of the forward tile forward_tile picks for `channels` output channels, on `machine`'s tier."""
    (broad_pixels, broad_vectors), (wide_pixels, wide_vectors), (narrow_pixels, _) = tiles_of(machine)["forward"]
    if channels >= broad_vectors * LANES:
        return broad_pixels
    return wide_pixels if channels >= wide_vectors * LANES else narrow_pixels


def forward_tiles_fit(channels, width, machine=None):
    """Whether a forward output of `channels` channels and `width` pixels per row holds one whole tile of the kind
    forward_tile picks for its channels."""
    narrow_vectors = tiles_of(machine)["forward"][2][1]
    return channels >= narrow_vectors * LANES and width >= forward_row_tile_pixels(channels, machine)


def kernel_row_tile_applies(weight_shape, dilation_w, machine=None):
    """Whether `machine`'s tier has kernel-row tiles (TIER_TILES' `kernel_row`) that a weight gradient of
    weight_shape (kH, kW, C_in, C_out) runs: kW * C_in values side by side (dilation 1 across) make the tiles' run,
    their groups of kernel rows make kH, and their lanes divide C_out."""
    tile = tiles_of(machine)["kernel_row"]
    return tile is not None and dilation_w == 1 and weight_shape[1] * weight_shape[2] == tile[0] \
        and weight_shape[0] * tile[0] % sum(tile[1]) == 0 and weight_shape[3] % tile[2] == 0


def weight_rows_multiple(channels_out, machine=None):
    """The multiple of input channels the weight-gradient tiles for channels_out cover exactly on `machine`'s tier:
    its short weight tile's rows where it has one (weight_row_cover), else the rows of weight_tile's pick."""
    table = tiles_of(machine)
    if table["weight_short"]:
        return table["weight_short"][0]
    for rows, vectors in table["weight"][:2]:
        if channels_out % (vectors * LANES) == 0:
            return rows
    return table["weight"][2][0]


@jit
def weight_row_cover(channels_in, tile_rows):
    """Where the tiles of tile_rows input channels end over channels_in (a multiple of weight_rows_multiple): the
    most whose remainder the short weight tiles fill exactly (64: 10 x 6 + 4; 32: 4 x 6 + 2 x 4), channels_in on a
    tier without them."""
    if SHORT_WEIGHT_TILE_ROWS:
        for full in range(channels_in // tile_rows, -1, -1):
            if (channels_in - full * tile_rows) % SHORT_WEIGHT_TILE_ROWS == 0:
                return full * tile_rows
    return channels_in


@jit(inline="always")
def weight_row_tile(kind, tile_rows, ci, main_end):
    """(kind, input channels) of the weight-gradient tile starting at input channel ci: weight_tile's before
    main_end (weight_row_cover), the short weight tile from there."""
    if ci < main_end:
        return kind, tile_rows
    return SHORT, SHORT_WEIGHT_TILE_ROWS


def _make_forward_tile(pixels, vectors):
    """An intrinsic computing one forward tile of `pixels` output pixels x `vectors` * 16 output channels."""

    @intrinsic
    def forward_tile(typingctx, out, out_offset, out_pixel_step, accumulate, relu, x, x_offset, x_pixel_step, weight,
                     weight_offset, bias, bias_offset, kernel_h, kernel_w, x_tap_h_step, x_tap_w_step, weight_tap_step,
                     channels_in, channels_out):
        """out[p * out_pixel_step + 0:V*16] = start + sum over (kh, kw, ci) of x[p * x_pixel_step + taps + ci] *
        weight[taps, ci, 0:V*16] for the pixels p of one tile, where start is bias[0:V*16], or the tile's own
        out values when accumulate is nonzero, and the stored sums clamped at 0 (NaN kept) when relu is nonzero, also
        at 6 when it is RELU6_CODE; offsets and steps count float32 elements, the row step of weight is channels_out."""
        index = types.intp
        signature = types.void(out, index, index, index, index, x, index, index, weight, index, bias, index, index,
                               index, index, index, index, index, index)

        def codegen(context, builder, sig, args):
            (out_value, out_offset, out_pixel_step, accumulate, relu, x_value, x_offset, x_pixel_step, weight_value,
             weight_offset, bias_value, bias_offset, kernel_h, kernel_w, x_tap_h_step, x_tap_w_step, weight_tap_step,
             channels_in, channels_out) = args
            fma = vector_fma(builder)
            out_pointer = element_pointer(context, builder, sig.args[0], out_value, out_offset)
            x_pointer = element_pointer(context, builder, sig.args[5], x_value, x_offset)
            weight_pointer = element_pointer(context, builder, sig.args[8], weight_value, weight_offset)
            bias_pointer = element_pointer(context, builder, sig.args[10], bias_value, bias_offset)
            bias_vectors = [load_vector(builder, builder.gep(bias_pointer, [ir.Constant(INDEX, v * LANES)]))
                            for v in range(vectors)]
            from_out = builder.icmp_signed("!=", accumulate, ir.Constant(INDEX, 0))
            accumulators = []
            for p in range(pixels):
                out_pixel = builder.gep(out_pointer, [builder.mul(out_pixel_step, ir.Constant(INDEX, p))])
                for v in range(vectors):
                    slot = cgutils.alloca_once(builder, bias_vectors[v].type)
                    with builder.if_else(from_out) as (then, otherwise):
                        with then:
                            previous = load_vector(builder, builder.gep(out_pixel, [ir.Constant(INDEX, v * LANES)]))
                            builder.store(previous, slot)
                        with otherwise:
                            builder.store(bias_vectors[v], slot)
                    accumulators.append(slot)
            with cgutils.for_range(builder, kernel_h) as tap_h:
                with cgutils.for_range(builder, kernel_w) as tap_w:
                    x_tap = builder.gep(x_pointer, [builder.add(builder.mul(tap_h.index, x_tap_h_step),
                                                                builder.mul(tap_w.index, x_tap_w_step))])
                    tap = builder.add(builder.mul(tap_h.index, kernel_w), tap_w.index)
                    weight_tap = builder.gep(weight_pointer, [builder.mul(tap, weight_tap_step)])
                    with cgutils.for_range(builder, channels_in) as channel:
                        weight_row = builder.gep(weight_tap, [builder.mul(channel.index, channels_out)])
                        weights = [load_vector(builder, builder.gep(weight_row, [ir.Constant(INDEX, v * LANES)]))
                                   for v in range(vectors)]
                        x_channel = builder.gep(x_tap, [channel.index])
                        for p in range(pixels):
                            pixel = builder.mul(x_pixel_step, ir.Constant(INDEX, p))
                            value = broadcast(builder, builder.load(builder.gep(x_channel, [pixel])))
                            for v in range(vectors):
                                slot = accumulators[vectors * p + v]
                                builder.store(builder.call(fma, [value, weights[v], builder.load(slot)]), slot)
            zero = ir.Constant(bias_vectors[0].type, [0.0] * LANES)
            # the upper bound: 6 for ReLU6, else +inf, which no sum exceeds
            upper = broadcast(builder, builder.select(builder.icmp_signed("==", relu, ir.Constant(INDEX, RELU6_CODE)),
                                                      ir.Constant(ir.FloatType(), 6.0),
                                                      ir.Constant(ir.FloatType(), float("inf"))))
            # two store sequences behind one branch, so a tile without the ReLU pays nothing for it
            with builder.if_else(builder.icmp_signed("!=", relu, ir.Constant(INDEX, 0))) as (clamped, plain):
                for clamp, block in ((True, clamped), (False, plain)):
                    with block:
                        for p in range(pixels):
                            out_pixel = builder.gep(out_pointer,
                                                    [builder.mul(out_pixel_step, ir.Constant(INDEX, p))])
                            for v in range(vectors):
                                total = builder.load(accumulators[vectors * p + v])
                                if clamp:
                                    # ordered `<` is false for NaN, so NaN passes through, as in PyTorch
                                    total = builder.select(builder.fcmp_ordered("<", total, zero), zero, total)
                                    total = builder.select(builder.fcmp_ordered(">", total, upper), upper, total)
                                store_vector(builder, total, builder.gep(out_pixel, [ir.Constant(INDEX, v * LANES)]))
            return context.get_dummy_value()

        return signature, codegen

    return forward_tile


def _make_weight_tile(rows_per_tile, vectors, lanes=LANES, kernel_rows=None):
    """An intrinsic accumulating one weight-gradient tile of `rows_per_tile` input channels x `vectors` * `lanes`
    output channels; with kernel_rows (first, run), a kernel-row tile: its row r is row first + r of a group of
    kernel rows' folded (kh, kw, ci) reduction, read at kh * x_kernel_row_step + kw * C_in + ci (an argument more)."""
    vector = ir.VectorType(ir.FloatType(), lanes)
    first, run = kernel_rows or (0, rows_per_tile)
    places = [divmod(first + r, run) for r in range(rows_per_tile)]  # (kernel row, value) of each tile row

    def codegen(context, builder, sig, args):
        arguments, kinds = list(args), list(sig.args)
        kernel_row_step = None
        if kernel_rows:  # the kernel-row tile's extra argument, after x_row_step
            kernel_row_step = arguments.pop(6)
            kinds.pop(6)
        (grad_weight_value, grad_weight_offset, x_value, x_offset, x_pixel_step, x_row_step, grad_out_value,
         grad_out_offset, grad_out_row_step, rows, columns, channels_out) = arguments
        fma = fma_function(builder, vector)
        grad_weight_pointer = element_pointer(context, builder, kinds[0], grad_weight_value, grad_weight_offset)
        x_pointer = element_pointer(context, builder, kinds[2], x_value, x_offset)
        grad_out_pointer = element_pointer(context, builder, kinds[6], grad_out_value, grad_out_offset)
        x_offsets = [builder.add(builder.mul(kernel_row_step, ir.Constant(INDEX, kernel_row)),
                                 ir.Constant(INDEX, value)) if kernel_row else ir.Constant(INDEX, value)
                     for kernel_row, value in places]
        accumulators = []
        for r in range(rows_per_tile):
            row_pointer = builder.gep(grad_weight_pointer, [builder.mul(channels_out, ir.Constant(INDEX, first + r))])
            for v in range(vectors):
                current = load_vector(builder, builder.gep(row_pointer, [ir.Constant(INDEX, v * lanes)]), vector)
                slot = cgutils.alloca_once(builder, current.type)
                builder.store(current, slot)
                accumulators.append((slot, row_pointer, v))
        with cgutils.for_range(builder, rows) as row:
            x_row = builder.gep(x_pointer, [builder.mul(row.index, x_row_step)])
            grad_row = builder.gep(grad_out_pointer, [builder.mul(row.index, grad_out_row_step)])
            with cgutils.for_range(builder, columns) as column:
                x_pixel = builder.gep(x_row, [builder.mul(column.index, x_pixel_step)])
                grad_pixel = builder.gep(grad_row, [builder.mul(column.index, channels_out)])
                grads = [load_vector(builder, builder.gep(grad_pixel, [ir.Constant(INDEX, v * lanes)]), vector)
                         for v in range(vectors)]
                for r in range(rows_per_tile):
                    value = splat(builder, builder.load(builder.gep(x_pixel, [x_offsets[r]])), vector)
                    for v in range(vectors):
                        slot = accumulators[vectors * r + v][0]
                        builder.store(builder.call(fma, [value, grads[v], builder.load(slot)]), slot)
        for slot, row_pointer, v in accumulators:
            store_vector(builder, builder.load(slot), builder.gep(row_pointer, [ir.Constant(INDEX, v * lanes)]))
        return context.get_dummy_value()

    index = types.intp
    if kernel_rows:
        @intrinsic
        def kernel_row_tile(typingctx, grad_weight, grad_weight_offset, x, x_offset, x_pixel_step, x_row_step,
                            x_kernel_row_step, grad_out, grad_out_offset, grad_out_row_step, rows, columns,
                            channels_out):
            return types.void(grad_weight, index, x, index, index, index, index, grad_out, index, index, index,
                              index, index), codegen

        return kernel_row_tile

    @intrinsic
    def weight_tile(typingctx, grad_weight, grad_weight_offset, x, x_offset, x_pixel_step, x_row_step, grad_out,
                    grad_out_offset, grad_out_row_step, rows, columns, channels_out):
        """grad_weight[r, 0:V*16] += sum over (row, column) of x[row, column, r] * grad_out[row, column, 0:V*16]
        for the input channels r of one tile; grad_out pixels are channels_out apart, grad_weight rows too."""
        return types.void(grad_weight, index, x, index, index, index, grad_out, index, index, index, index,
                          index), codegen

    return weight_tile


_forward_tile_broad, _forward_tile_wide, _forward_tile_narrow = (_make_forward_tile(*shape)
                                                                 for shape in TILES["forward"])
_weight_tile_broad, _weight_tile_wide, _weight_tile_narrow = (_make_weight_tile(*shape) for shape in TILES["weight"])
# a tier without a short weight tile never runs it (weight_row_cover); the narrow tile's shape stands in
_weight_tile_short = _make_weight_tile(*(TILES["weight_short"] or TILES["weight"][2]))
# the kernel-row tiles in turn (at most 2: direct.py runs them), each from its first row of a group of kernel rows;
# a tier without them never runs them (kernel_row_tile_applies): a 1-row stand-in keeps the names defined
KERNEL_ROW_FIRSTS = tuple(sum(_kernel_row_rows[:k]) for k in range(len(_kernel_row_rows)))
KERNEL_ROW_GROUP = sum(_kernel_row_rows)  # rows of a group of kernel rows (a multiple of KERNEL_ROW_RUN)
kernel_row_tile, second_kernel_row_tile = (
    _make_weight_tile(rows, 1, KERNEL_ROW_TILE_LANES, (first, max(KERNEL_ROW_RUN, 1)))
    for first, rows in zip(KERNEL_ROW_FIRSTS + (0,), (_kernel_row_rows + (1,))[:2]))
# a tier without a product tile never selects PRODUCT; the broad tile's shape stands in so the code compiles
_forward_tile_product = _make_forward_tile(*(TILES["product"] or TILES["forward"][:1])[0])


# The tile dispatchers are inlined into their callers: a call passes each array as its fields, some 60 values
# through the stack, for every tile; 1x1 layers of 16-32 input channels ran 1.3-1.4x slower called than inlined
# (AVX2), 3x3 ones 1.1x (bench/README.md).
@jit(inline="always")
def run_forward_tile(kind, out, out_offset, out_pixel_step, accumulate, relu, x, x_offset, x_pixel_step, weight,
                      weight_offset, bias, bias_offset, kernel_h, kernel_w, x_tap_h_step, x_tap_w_step, weight_tap_step,
                      channels_in, channels_out):
    """The forward tile of the given kind (forward_tile)."""
    if kind == BROAD:
        _forward_tile_broad(out, out_offset, out_pixel_step, accumulate, relu, x, x_offset, x_pixel_step, weight,
                            weight_offset, bias, bias_offset, kernel_h, kernel_w, x_tap_h_step, x_tap_w_step,
                            weight_tap_step, channels_in, channels_out)
    elif kind == WIDE:
        _forward_tile_wide(out, out_offset, out_pixel_step, accumulate, relu, x, x_offset, x_pixel_step, weight,
                      weight_offset, bias, bias_offset, kernel_h, kernel_w, x_tap_h_step, x_tap_w_step, weight_tap_step,
                      channels_in, channels_out)
    else:
        _forward_tile_narrow(out, out_offset, out_pixel_step, accumulate, relu, x, x_offset, x_pixel_step, weight,
                             weight_offset, bias, bias_offset, kernel_h, kernel_w, x_tap_h_step, x_tap_w_step,
                             weight_tap_step, channels_in, channels_out)


@jit
def run_product_tile(kind, out, out_offset, out_pixel_step, accumulate, relu, x, x_offset, x_pixel_step, weight,
                     weight_offset, bias, bias_offset, kernel_h, kernel_w, x_tap_h_step, x_tap_w_step, weight_tap_step,
                     channels_in, channels_out):
    """The forward tile of a kind product_tile returns: the tier's product tile, or as run_forward_tile (kept apart
    so that the kernels running only the forward tiles do not compile the product tile too)."""
    if kind == PRODUCT:
        _forward_tile_product(out, out_offset, out_pixel_step, accumulate, relu, x, x_offset, x_pixel_step, weight,
                              weight_offset, bias, bias_offset, kernel_h, kernel_w, x_tap_h_step, x_tap_w_step,
                              weight_tap_step, channels_in, channels_out)
    else:
        run_forward_tile(kind, out, out_offset, out_pixel_step, accumulate, relu, x, x_offset, x_pixel_step, weight,
                         weight_offset, bias, bias_offset, kernel_h, kernel_w, x_tap_h_step, x_tap_w_step,
                         weight_tap_step, channels_in, channels_out)


# run_row_tile: the forward tile of a kind forward_row_cover returns, on a tier without a short tile run_forward_tile
# itself.
if SHORT_TILE_PIXELS:
    _forward_tile_short = _make_forward_tile(*TILES["short"])

    @jit(inline="always")
    def run_row_tile(kind, out, out_offset, out_pixel_step, accumulate, relu, x, x_offset, x_pixel_step, weight,
                     weight_offset, bias, bias_offset, kernel_h, kernel_w, x_tap_h_step, x_tap_w_step,
                     weight_tap_step, channels_in, channels_out):
        if kind == SHORT:
            _forward_tile_short(out, out_offset, out_pixel_step, accumulate, relu, x, x_offset, x_pixel_step, weight,
                                weight_offset, bias, bias_offset, kernel_h, kernel_w, x_tap_h_step, x_tap_w_step,
                                weight_tap_step, channels_in, channels_out)
        else:
            run_forward_tile(kind, out, out_offset, out_pixel_step, accumulate, relu, x, x_offset, x_pixel_step,
                             weight, weight_offset, bias, bias_offset, kernel_h, kernel_w, x_tap_h_step,
                             x_tap_w_step, weight_tap_step, channels_in, channels_out)
else:
    run_row_tile = run_forward_tile


@jit(inline="always")
def run_weight_tile(kind, grad_weight, grad_weight_offset, x, x_offset, x_pixel_step, x_row_step, grad_out,
                     grad_out_offset, grad_out_row_step, rows, columns, channels_out):
    """The weight-gradient tile of the given kind (weight_tile, weight_row_tile)."""
    if kind == BROAD:
        _weight_tile_broad(grad_weight, grad_weight_offset, x, x_offset, x_pixel_step, x_row_step, grad_out,
                           grad_out_offset, grad_out_row_step, rows, columns, channels_out)
    elif kind == WIDE:
        _weight_tile_wide(grad_weight, grad_weight_offset, x, x_offset, x_pixel_step, x_row_step, grad_out,
                     grad_out_offset, grad_out_row_step, rows, columns, channels_out)
    elif SHORT_WEIGHT_TILE_ROWS and kind == SHORT:  # a constant 0 first: LLVM drops the branch where there is none
        _weight_tile_short(grad_weight, grad_weight_offset, x, x_offset, x_pixel_step, x_row_step, grad_out,
                           grad_out_offset, grad_out_row_step, rows, columns, channels_out)
    else:
        _weight_tile_narrow(grad_weight, grad_weight_offset, x, x_offset, x_pixel_step, x_row_step, grad_out,
                            grad_out_offset, grad_out_row_step, rows, columns, channels_out)


@jit(inline="always")
def run_weight_tiles(grad_weight, grad_weight_offset, x, x_offset, x_pixel_step, x_row_step, grad_out,
                     grad_out_offset, grad_out_row_step, rows, columns, input_channels, channels_out):
    """Every weight-gradient tile of an input_channels x channels_out block (weight_tile's, then weight_row_cover's
    short ones): grad_weight[ci, co] += sum over pixels of x[x_offset + ci] * grad_out[grad_out_offset + co]."""
    kind, tile_rows, tile_channels = weight_tile(channels_out)
    main_end = weight_row_cover(input_channels, tile_rows)
    ci = 0
    while ci < input_channels:
        row_kind, tile_input_channels = weight_row_tile(kind, tile_rows, ci, main_end)
        for co in range(0, channels_out, tile_channels):
            run_weight_tile(row_kind, grad_weight, grad_weight_offset + ci * channels_out + co, x, x_offset + ci,
                            x_pixel_step, x_row_step, grad_out, grad_out_offset + co, grad_out_row_step, rows,
                            columns, channels_out)
        ci += tile_input_channels
