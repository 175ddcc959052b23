"""The Winograd weight gradients' plan and driver, F(2x2) (weight_f2.py) or F(4x4) (weight_f4.py) as the selector
chose: the tiles of the batch are split into chunks that depend on the shape only, each chunk's products summed
into its own partial, the partials summed in chunk order and inverse-transformed."""
from ..workspace import slots_within, spec_bytes, specs_bytes, sum_partials
from . import f4, weight_f2, weight_f4
from .f2 import PATCH, POSITIONS, TILE
from .weight_f2 import JOB_TILES, MAX_CHUNKS, TILES_PER_CHUNK


def backward_weight_plan(dtype, x_shape, weight_shape, out_shape, padding, budget, use_f4):
    """(scratch specs, details) of the Winograd weight gradient, or None when its partials do not fit half the
    budget. The chunk count depends on the shape and budget only. details[4] is the tile size: 4 for F(4x4)."""
    _, _, channels_in, channels_out = weight_shape
    batch, out_h, out_w, _ = out_shape
    tile, positions = (f4.TILE, f4.POSITIONS) if use_f4 else (TILE, POSITIONS)
    tiles_w = -(-out_w // tile)
    tiles_per_image = -(-out_h // tile) * tiles_w
    total = batch * tiles_per_image
    # F(4x4)'s 36 positions as 6 x 6, as F(2x2)'s 16 are 4 x 4: the partials then have one type on both paths, so
    # sum_partials and the weight tiles compile one signature between them
    side = f4.PATCH if use_f4 else PATCH
    partial = (side, side, channels_in, channels_out)
    half = budget // 2
    wanted = max(2, min(MAX_CHUNKS, total // TILES_PER_CHUNK) // 2 * 2)
    chunks = int(max(1, min(wanted, total, half // spec_bytes(partial, dtype))))
    if chunks * spec_bytes(partial, dtype) > half:
        return None
    specs = (("partials", (chunks, *partial), dtype),)
    if chunks > 1:
        specs += (("summed", partial, dtype),)
    capacity = min(JOB_TILES, total) + 1
    per_slot = (spec_bytes((positions, capacity, channels_in), dtype)
                + spec_bytes((positions * capacity * channels_out,), dtype)
                + spec_bytes((PATCH, PATCH, channels_in), dtype))
    slots = slots_within(per_slot, specs_bytes(specs), chunks, budget)
    if specs_bytes(specs) + slots * per_slot > budget:
        return None
    specs += (("vs", (slots, positions, capacity, channels_in), dtype),
              ("zs", (slots, positions * capacity * channels_out), dtype),
              ("patches", (slots, PATCH, PATCH, channels_in), dtype))
    return specs, (padding[0], padding[1], tiles_w, tiles_per_image, tile)


def backward_weight(x, grad_out, out, scratch, geometry):
    """The Winograd weight gradient of contiguous float32 x and grad_out into out (3, 3, C_in, C_out), with the
    scratch carved from backward_weight_plan's specs and its geometry."""
    partials = scratch["partials"]
    use_f4 = geometry[4] == f4.TILE
    if use_f4:
        weight_f4.weight_gradient(x, grad_out, partials, scratch["vs"], scratch["zs"], geometry)
    else:
        weight_f2.weight_gradient(x, grad_out, partials, scratch["vs"], scratch["zs"], scratch["patches"],
                                  geometry[:4])
    if partials.shape[0] > 1:
        summed = scratch["summed"]
        sum_partials(partials, summed)
    else:
        summed = partials[0]
    if use_f4:
        weight_f4.inverse_transform_weight_grad(summed, out)
    else:
        weight_f2.inverse_transform_weight_grad(summed, out)
    return out
