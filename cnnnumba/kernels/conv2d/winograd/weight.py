"""The Winograd weight gradients' plan and driver, F(2x2) (weight_f2.py), F(4x4) or F(4x2) (weight_f4.py) as the
selector chose: the tiles of the batch are split into chunks that depend on the shape only, each chunk's products
summed into its own partial, the partials summed in chunk order and inverse-transformed."""
import numpy as np

from ..workspace import slots_within, spec_bytes, specs_bytes, sum_partials
from . import f4, weight_f2, weight_f4
from .f2 import PATCH, TILE
from .weight_f2 import JOB_TILES, MAX_CHUNKS, TILES_PER_CHUNK


def backward_weight_plan(dtype, x_shape, weight_shape, out_shape, padding, budget, columns):
    """(scratch specs, details) of the Winograd weight gradient, or None when its partials do not fit half the
    budget; columns is the tile's output columns: f4.TILE (F(4x4)), f4.NARROW_TILE (F(4x2)) or None (F(2x2)). The
    chunk count depends on the shape and budget only. details[4] is the tile's rows: 4 for f4.py's tiles."""
    _, _, channels_in, channels_out = weight_shape
    batch, out_h, out_w, _ = out_shape
    tile = f4.TILE if columns else TILE
    columns = columns or TILE
    tiles_w = -(-out_w // columns)
    tiles_per_image = -(-out_h // tile) * tiles_w
    total = batch * tiles_per_image
    # F(4x4)'s 36 positions as 6 x 6 (F(4x2)'s 6 x 4), as F(2x2)'s 16 are 4 x 4: the partials then have one type on
    # every path, so sum_partials and the weight tiles compile one signature between them
    partial = ((f4.PATCH, columns + 2) if tile == f4.TILE else (PATCH, PATCH)) + (channels_in, channels_out)
    positions = partial[0] * partial[1]
    half = budget // 2
    wanted = max(2, min(MAX_CHUNKS, total // TILES_PER_CHUNK) // 2 * 2)
    chunks = int(max(1, min(wanted, total, half // spec_bytes(partial, dtype))))
    if chunks * spec_bytes(partial, dtype) > half:
        return None
    specs = (("partials", (chunks, *partial), dtype),)
    if chunks > 1 and tile != f4.TILE:
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
    if tile == f4.TILE:
        # f4.py's tiles sum and inverse-transform the partials in blocks of pairs, each worker in scratch of its own:
        # as many as the blocks and threads allow, not the chunks
        finishing = (("finish_sums", (positions, weight_f4.FINISH_BLOCK_PAIRS), dtype),
                     ("finish_rows", (f4.PATCH, 3, weight_f4.FINISH_BLOCK_PAIRS), np.float64))
        per_worker = sum(spec_bytes(shape, kind) for _, shape, kind in finishing)
        blocks = -(-channels_in * channels_out // weight_f4.FINISH_BLOCK_PAIRS)
        workers = slots_within(per_worker, specs_bytes(specs), blocks, budget)
        if specs_bytes(specs) + workers * per_worker > budget:
            return None
        specs += tuple((name, (workers, *shape), kind) for name, shape, kind in finishing)
    return specs, (padding[0], padding[1], tiles_w, tiles_per_image, tile, columns)


def backward_weight(x, grad_out, out, scratch, geometry):
    """The Winograd weight gradient of contiguous float32 x and grad_out into out (3, 3, C_in, C_out), with the
    scratch carved from backward_weight_plan's specs and its geometry."""
    partials = scratch["partials"]
    if geometry[4] == f4.TILE:
        weight_f4.weight_gradient(x, grad_out, partials, scratch["vs"], scratch["zs"], geometry)
        weight_f4.finish(partials, out, scratch["finish_sums"], scratch["finish_rows"])
        return out
    weight_f2.weight_gradient(x, grad_out, partials, scratch["vs"], scratch["zs"], scratch["patches"], geometry[:4])
    if partials.shape[0] > 1:
        summed = scratch["summed"]
        sum_partials(partials, summed)
    else:
        summed = partials[0]
    weight_f2.inverse_transform_weight_grad(summed, out)
    return out
