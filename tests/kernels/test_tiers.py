"""CPU tiers: the tier a compile target implies, tile tables that fit each tier's registers, IR free of x86-only
intrinsics (so the kernels compile for ARM too), and compiled kernels that never cross tiers."""
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

from cnnnumba.kernels._runtime.machine import _tier
from cnnnumba.kernels.conv2d.tiles import TIER_TILES

KERNELS = pathlib.Path(__file__).resolve().parents[2] / "cnnnumba" / "kernels"


@pytest.mark.parametrize("cpu, features, tier", [
    ("skylake-avx512", "", "avx512"), ("znver4", "", "avx512"), ("haswell", "", "avx2"), ("znver3", "", "avx2"),
    ("sandybridge", "", "avx"), ("nehalem", "", "sse"), ("x86-64", "", "sse"), ("neoverse-n1", "", "neon"),
    ("rocketlake", "+avx,+avx2,+fma,+avx512f", "avx512"), ("znver5", "+avx,+avx2,+fma,-avx512f", "avx2"),
    ("haswell", "+sse4.2,-avx,-avx2,-fma", "sse"),
])
def test_the_tier_follows_the_cpu_name_and_features(cpu, features, tier):
    assert _tier(cpu, features)[0] == tier


@pytest.mark.parametrize("tier, bits, registers", [("avx512", 512, 32), ("avx2", 256, 16), ("sse", 128, 16)])
def test_every_tile_of_a_tier_fits_its_vector_registers(tier, bits, registers):
    # a tile vector is 16 floats: 512 bits, held in 512 // bits registers of the tier
    per_vector = 512 // bits
    tiles = TIER_TILES[tier]
    for pixels, vectors in tiles["forward"]:
        # accumulators, one weight row of vectors, one broadcast
        assert (pixels * vectors + vectors) * per_vector + 1 <= registers, (tier, pixels, vectors)
    for rows, vectors in tiles["weight"]:
        assert (rows * vectors + vectors) * per_vector + 1 <= registers, (tier, rows, vectors)
    if tiles["product"]:
        (pixels, vectors), _ = tiles["product"]
        assert (pixels * vectors + vectors) * per_vector + 1 <= registers, (tier, pixels, vectors)
    frame_vectors, outputs = tiles["few_channel"]
    assert (outputs * frame_vectors + frame_vectors) * per_vector + 1 <= registers, tier
    # the row-run tiles: one vector of 16 channels per image (or weight row), one load and a broadcast
    assert (tiles["row_images"] + 1) * per_vector + 1 <= registers, tier
    assert (tiles["row_weight_rows"] + 1) * per_vector + 1 <= registers, tier
    # the depthwise tiles: a 64-byte vector per pixel and a weight vector and a load; running sums and two loads
    assert (tiles["depthwise_pixels"] + 2) * per_vector <= registers, tier
    assert (tiles["depthwise_sums"] + 2) * per_vector <= registers, tier
    # the input channels a weight gradient's tiles cover exactly divide a 16-channel block: the short weight tile's
    # rows where the tier has one (the weight tiles' rows before it), else the weight tiles' own
    if tiles["weight_short"]:
        rows, vectors = tiles["weight_short"]
        assert 16 % rows == 0 and all(v == vectors for _, v in tiles["weight"]), tier
        assert (rows * vectors + vectors) * per_vector + 1 <= registers, tier
    else:
        assert all(16 % rows == 0 for rows, _ in tiles["weight"]), tier
    if tiles["kernel_row"]:  # accumulators of `lanes` channels, the gradient's vector and a broadcast
        run, tile_rows, lanes = tiles["kernel_row"]
        assert sum(tile_rows) % run == 0 and 1 <= len(tile_rows) <= 2, tier  # whole kernel rows; direct.py runs 2
        for rows in tile_rows:
            assert lanes * 32 % bits == 0 and (rows + 2) * max(1, lanes * 32 // bits) <= registers, tier


def test_no_kernel_source_names_an_x86_intrinsic():
    named = [str(path.relative_to(KERNELS)) for path in KERNELS.rglob("*.py") if "llvm.x86" in path.read_text()]
    assert not named


# LLVM's x86 back end turns Numba's reference-count decrements (an atomic sub and a compare) into this intrinsic
# when it optimises the module for an x86 target; it comes from Numba's runtime, not from cnnnumba's IR, and an
# ARM target never sees it.
RUNTIME_ATOMICS = {"llvm.x86.atomic.sub.cc.i64"}

IR_PROGRAM = textwrap.dedent("""
    import importlib, json, pkgutil, re, warnings
    import numpy as np
    import cnnnumba as cn
    import cnnnumba.kernels as kernels
    from cnnnumba import functional as F
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(0)
    x = cn.Tensor(rng.standard_normal((2, 16, 8, 8)).astype(np.float32), requires_grad=True)
    w = cn.Tensor(rng.standard_normal((32, 16, 3, 3)).astype(np.float32), requires_grad=True)
    depthwise = cn.Tensor(rng.standard_normal((16, 1, 3, 3)).astype(np.float32), requires_grad=True)
    y = F.max_pool2d(F.relu(F.batch_norm(F.conv2d(x, w, padding=1), None, None, training=True)), 2)
    (y.sum() + F.conv2d(x, depthwise, padding=1, stride=2, groups=16).sum()).backward()
    names, checked = set(), 0
    for info in pkgutil.walk_packages(kernels.__path__, kernels.__name__ + "."):
        for value in vars(importlib.import_module(info.name)).values():
            if hasattr(value, "inspect_llvm") and getattr(value, "signatures", None):
                for ir in value.inspect_llvm().values():
                    checked += 1
                    names |= set(re.findall(r"llvm\\.x86\\.[A-Za-z0-9._]+", ir))
    print(json.dumps({"checked": checked, "names": sorted(names)}))
""")


@pytest.mark.slow
def test_the_compiled_ir_names_no_x86_intrinsic_of_its_own(tmp_path):
    # compiled from empty caches: Numba shows the IR only of kernels this process compiled
    env = dict(os.environ, CNNNUMBA_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", IR_PROGRAM], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["checked"] >= 10, report
    assert set(report["names"]) <= RUNTIME_ATOMICS, report["names"]


def test_the_selector_gets_the_tier_of_the_target(monkeypatch):
    from cnnnumba.kernels._runtime.machine import target_machine

    machine = target_machine()
    assert machine.lanes * 32 == machine.vector_bits
    assert re.fullmatch(r"avx512|avx2|avx|sse|neon|generic", machine.tier)
