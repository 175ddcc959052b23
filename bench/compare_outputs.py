"""Are two cnnnumba checkouts bit-identical? Runs the same fixed cases in each and compares every output bit for bit.

    python3 bench/compare_outputs.py OLD_TREE NEW_TREE [--out DIR] [--cases PATTERN ...] [--threads T]

Each tree runs in a subprocess of its own (PYTHONPATH=<tree>, its own Numba cache folder, so neither loads the
other's compiled kernels) that computes the cases of kernel_cases.py and api_cases.py with fixed seeds and saves
every output array to DIR/old.npz and DIR/new.npz (what each run imported and which cases raised: old.json,
new.json). Then each case is "identical" (every output the same bytes: NaN payloads and signed zeros count) or
its differing outputs are listed with their largest absolute difference and the count of differing elements.
Exits 1 when any case differs or raised, 2 on bad arguments.
"""
import argparse
import fnmatch
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

import tree_env

SIDES = ("old", "new")


def all_cases():
    """name -> function returning {output: ndarray}, in a fixed order (importing cnnnumba only when called)."""
    from api_cases import api_cases
    from kernel_cases import kernel_cases

    return {**kernel_cases(), **api_cases()}


def select(cases, patterns):
    """The cases named by any of the patterns, exactly or as an fnmatch pattern (where "[1]" is a character class:
    a case name given whole always matches itself); all of them without patterns."""
    if not patterns:
        return dict(cases)
    return {name: run for name, run in cases.items()
            if any(name == pattern or fnmatch.fnmatchcase(name, pattern) for pattern in patterns)}


# ---- the worker: runs inside one tree ----

def run_worker(out_path, patterns, tree):
    """Compute the selected cases with the cnnnumba on PYTHONPATH, which must be `tree`'s; write out_path (.npz)
    and its .json beside it."""
    import cnnnumba
    import numba

    imported = os.path.realpath(cnnnumba.__file__)
    if not imported.startswith(os.path.join(tree, "")):
        raise RuntimeError(f"imported cnnnumba from {imported}, not from the tree {tree}")
    arrays, errors, seconds = {}, {}, {}
    for name, run in select(all_cases(), patterns).items():
        started = time.perf_counter()
        try:
            outputs = run()
        except Exception as error:  # recorded and compared: a case that raises in one tree is a difference
            traceback.print_exc()
            errors[name] = f"{type(error).__name__}: {error}"[:500]
            outputs = {}
        seconds[name] = time.perf_counter() - started
        arrays.update({f"{name}:{output}": np.asarray(value) for output, value in outputs.items()})
    np.savez(out_path, **arrays)
    meta = {"cnnnumba": imported, "numba": numba.__version__, "numpy": np.__version__, "cases": list(seconds),
            "errors": errors, "seconds": seconds, "threads": numba.get_num_threads(),
            "cpu": numba.config.CPU_NAME or None}
    with open(os.path.splitext(out_path)[0] + ".json", "w") as file:
        json.dump(meta, file, indent=1)


# ---- the comparison ----

def _bits(array):
    """The array's elements as unsigned integers of the same width, so NaN payloads and -0.0 compare too."""
    array = np.ascontiguousarray(array)
    if array.dtype.itemsize in (1, 2, 4, 8) and array.dtype.kind in "fiub":
        return array.view(f"u{array.dtype.itemsize}")
    return array.view(np.uint8).reshape(*array.shape, -1)  # other dtypes: byte rows, one per element


def compare_arrays(old, new):
    """None when the two arrays are the same bytes, else a sentence saying how they differ."""
    if old.dtype != new.dtype or old.shape != new.shape:
        return f"old is {old.dtype} {old.shape}, new is {new.dtype} {new.shape}"
    old_bits, new_bits = _bits(old), _bits(new)
    differs = old_bits != new_bits
    if differs.ndim > old.ndim:
        differs = differs.any(axis=-1)
    count = int(differs.sum())
    if count == 0:
        return None
    text = f"{count} of {old.size} elements differ"
    if old.dtype.kind in "fiu":
        a, b = old[differs].astype(np.float64), new[differs].astype(np.float64)
        with np.errstate(invalid="ignore"):
            gaps = np.abs(a - b)
        nan_mismatches = int((np.isnan(a) != np.isnan(b)).sum())
        largest = float(np.nanmax(gaps, initial=0.0))  # NaN gaps are NaN against NaN or against a number
        text += f", max abs difference {largest:.3g}" if largest > 0 else ""
        text += f", {nan_mismatches} NaN where the other is not" if nan_mismatches else ""
        if largest == 0 and not nan_mismatches:
            text += " (signed zeros or NaN payloads)"
    return text


def compare_runs(out_dir, log=print):
    """Compare out_dir/old.* with out_dir/new.*, case by case; returns the number of cases that differ or raised."""
    metas, arrays = {}, {}
    for side in SIDES:
        with open(os.path.join(out_dir, f"{side}.json")) as file:
            metas[side] = json.load(file)
        arrays[side] = np.load(os.path.join(out_dir, f"{side}.npz"), allow_pickle=False)
    names = list(dict.fromkeys(metas["old"]["cases"] + metas["new"]["cases"]))
    outputs = {side: {} for side in SIDES}
    for side in SIDES:
        for key in arrays[side].files:
            case, _, output = key.rpartition(":")
            outputs[side].setdefault(case, []).append(output)
    failed = 0
    for name in names:
        problems = []
        for side in SIDES:
            if name not in metas[side]["cases"]:
                problems.append(f"not run in {side}")
            elif name in metas[side]["errors"]:
                problems.append(f"raised in {side}: {metas[side]['errors'][name]}")
        if not problems:
            old_outputs, new_outputs = outputs["old"].get(name, []), outputs["new"].get(name, [])
            for output in dict.fromkeys(old_outputs + new_outputs):
                if output not in old_outputs or output not in new_outputs:
                    problems.append(f"{output}: only in {'old' if output in old_outputs else 'new'}")
                    continue
                text = compare_arrays(arrays["old"][f"{name}:{output}"], arrays["new"][f"{name}:{output}"])
                if text:
                    problems.append(f"{output}: {text}")
        failed += bool(problems)
        log(f"{name}: " + ("identical" if not problems else "DIFFERS\n    " + "\n    ".join(problems)))
    log(f"{len(names) - failed} of {len(names)} cases identical" + (f", {failed} differ or raised" if failed else ""))
    return failed


# ---- the driver ----

def _run_side(side, tree, args, cache, extra_env):
    environment = tree_env.tree_environment(tree, cache, extra_env, args.threads)
    out_path = os.path.join(args.out, f"{side}.npz")
    command = [sys.executable, os.path.abspath(__file__), "--worker", out_path, "--tree", tree]
    command += ["--cases", *args.cases] if args.cases else []
    started = time.perf_counter()
    finished = subprocess.run(command, cwd=tree, env=environment, capture_output=True, text=True,
                              timeout=args.timeout)
    with open(os.path.join(args.out, f"{side}.log"), "w") as file:
        file.write(finished.stdout + finished.stderr)
    if finished.returncode != 0:
        tail = "\n".join(finished.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"the {side} worker ({tree}) exited with code {finished.returncode}:\n{tail}")
    with open(os.path.join(args.out, f"{side}.json")) as file:
        meta = json.load(file)
    print(f"{side}: {tree} ({meta['cnnnumba']}), {len(meta['cases'])} cases in {time.perf_counter() - started:.0f} s, "
          f"{len(meta['errors'])} raised; Numba cache {cache}", flush=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="*", metavar="TREE", help="OLD_TREE NEW_TREE: the two checkouts' roots")
    parser.add_argument("--out", help="folder for old/new .npz, .json and .log (default: a new temporary folder)")
    parser.add_argument("--cases", nargs="+", metavar="PATTERN",
                        help="run only the cases matching these fnmatch patterns, e.g. 'conv2d/*' 'models/*'")
    parser.add_argument("--list", action="store_true", help="print the case names (after --cases) and exit")
    parser.add_argument("--threads", type=int, help="threads for both trees (default: as the environment says)")
    parser.add_argument("--env-old", action="append", metavar="NAME=VALUE", help="extra environment, old tree")
    parser.add_argument("--env-new", action="append", metavar="NAME=VALUE", help="extra environment, new tree")
    parser.add_argument("--cache-root", default=tree_env.default_cache_root(),
                        help="where each side's Numba cache folder lives (default: %(default)s; an empty folder "
                             "gives a cold run)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per tree (default: %(default)s)")
    parser.add_argument("--worker", metavar="OUT_NPZ", help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker or args.list:
        return args
    if len(args.trees) != 2:
        parser.error(f"expected two trees, OLD_TREE NEW_TREE, but got {len(args.trees)}")
    try:
        args.trees = [tree_env.checkout_root(tree) for tree in args.trees]
        args.extra_env = [tree_env.parse_env(args.env_old, "--env-old"), tree_env.parse_env(args.env_new, "--env-new")]
    except ValueError as error:
        parser.error(str(error))
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads expects a positive count, but got {args.threads}")
    if args.cases and not select(all_cases(), args.cases):
        parser.error(f"no case matches {args.cases} (see --list)")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.worker:
        run_worker(args.worker, args.cases, args.tree)
        return 0
    if args.list:
        print("\n".join(select(all_cases(), args.cases)))
        return 0
    args.out = os.path.abspath(args.out or tempfile.mkdtemp(prefix="cnnnumba-compare-outputs-"))
    os.makedirs(args.out, exist_ok=True)
    for side, tree, extra_env in zip(SIDES, args.trees, args.extra_env):
        _run_side(side, tree, args, tree_env.cache_dir(args.cache_root, side, tree, extra_env), extra_env)
    print(f"outputs in {args.out}")
    return 1 if compare_runs(args.out) else 0


if __name__ == "__main__":
    sys.exit(main())
