"""Time two cnnnumba checkouts against each other, paired: alternating runs on one machine, ratios per round.

    python3 bench/compare_trees.py OLD_TREE NEW_TREE [--models lenet5 cifar-cnn resnet20] [--rounds N]
        [--steps N] [--batch-size 64] [--image-size N] [--threads T] [--cold] [--env-old NAME=VALUE]
        [--env-new NAME=VALUE]

Every run is one `cnnnumba bench` worker process of the tree it times (`python -m cnnnumba.bench.worker`,
PYTHONPATH=<tree>, the tree's own Numba cache folder, the extra environment of its side): the captured training
step or inference of one model, the first step apart, --warmup untimed steps, then --steps timed ones, whose median
is the run's time. Each round runs both trees on every model and mode, old first in odd rounds and new first in
even ones (ABBA...), so slow drift of a shared machine hits both alike. Reported per model and mode: each tree's
median over the rounds, the ratio new/old of every round, and their median and interquartile range. With --cold,
each round also runs each tree once on an empty cache folder and compares the first step (compilation included).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import tree_env

SIDES = ("old", "new")
RESULT_MARKER = "cnnnumba-bench-result: "  # what cnnnumba/bench/worker.py prints before its JSON result
MODELS = ("lenet5", "cifar-cnn", "resnet20", "small-cnn", "resnet18", "mobilenet_v2")
TIMING_FILES = ("cnnnumba/bench/worker.py", "cnnnumba/bench/runners.py")


def run_worker(tree, environment, spec, timeout):
    """One `cnnnumba.bench.worker` run in `tree`; its result dict ("status" "ok" or "failed" with an "error")."""
    try:
        finished = subprocess.run([sys.executable, "-m", "cnnnumba.bench.worker", json.dumps(spec)], cwd=tree,
                                  env=environment, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "error": f"timed out after {timeout} s"}
    for line in reversed(finished.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER):])
    tail = " | ".join(finished.stderr.strip().splitlines()[-3:])
    return {"status": "failed", "error": f"worker exited with code {finished.returncode}: {tail}"[:500]}


def quartiles(values):
    """(25th percentile, median, 75th percentile), linear interpolation (NumPy's default)."""
    ordered = sorted(values)

    def at(fraction):
        position = fraction * (len(ordered) - 1)
        low = int(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    return at(0.25), at(0.5), at(0.75)


def _spec(model, mode, args, steps, warmup):
    return {"kind": "model", "framework": "cnnnumba", "variant": None, "model": model, "mode": mode,
            "batch_size": args.batch_size, "steps": steps, "warmup": warmup, "seed": args.seed, "eager": False,
            "distinct_batches": 4, "threads": args.threads or os.cpu_count(), "image_size": args.image_size}


def _timed_run(side, round_index, group, args, cold):
    """One run of `side` for group (model, mode), warm (the side's cache) or cold (an empty folder): its record."""
    tree, extra_env = args.trees[side], args.extra_env[side]
    cache = tree_env.cache_dir(args.cache_root, side, tree, extra_env)
    if cold:
        os.makedirs(args.cache_root, exist_ok=True)
        cache = tempfile.mkdtemp(prefix=f"cold-{side}-", dir=args.cache_root)
    spec = _spec(*group, args, 1 if cold else args.steps, 0 if cold else args.warmup)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    try:
        result = run_worker(tree, tree_env.tree_environment(tree, cache, extra_env, args.threads), spec, args.timeout)
    finally:
        if cold:
            shutil.rmtree(cache, ignore_errors=True)
    record = {"side": side, "round": round_index + 1, "model": group[0], "mode": group[1], "cold": cold,
              "load_average_at_start": load, "status": result["status"]}
    if result["status"] != "ok":
        record["error"] = result["error"]
    else:
        record.update(first_step_ms=result["first_step_ms"], step_ms=result["step_ms"], check=result["check"],
                      ms_per_step=statistics.median(result["step_ms"]))
    return record


def _progress(record):
    where = f"  round {record['round']} {record['model']} {record['mode']} {record['side']}" + \
        (" cold" if record["cold"] else "")
    if record["status"] != "ok":
        return f"{where}: FAILED ({record['error']})"
    timing = f"first step {record['first_step_ms']:.0f} ms" if record["cold"] else \
        f"{record['ms_per_step']:.2f} ms/step (first step {record['first_step_ms']:.0f} ms)"
    load = record["load_average_at_start"]
    return f"{where}: {timing}" + (f", load {load:.1f}" if load is not None else "")


def summarize(records, group, cold):
    """The lines and the summary dict of one (model, mode) group's warm or cold runs."""
    key = "first_step_ms" if cold else "ms_per_step"
    by_round = {}
    for record in records:
        if (record["model"], record["mode"], record["cold"]) == (*group, cold) and record["status"] == "ok":
            by_round.setdefault(record["round"], {})[record["side"]] = record
    pairs = [sides for _, sides in sorted(by_round.items()) if len(sides) == 2]
    label = f"{group[0]} {group[1]}" + (" cold first step" if cold else "")
    if not pairs:
        return [f"{label}: no round where both trees succeeded"], {"rounds": 0}
    ratios = [sides["new"][key] / sides["old"][key] for sides in pairs]
    low, median, high = quartiles(ratios)
    medians = {side: statistics.median(sides[side][key] for sides in pairs) for side in SIDES}
    unit = "ms" if not cold else "s"
    scale = 1.0 if not cold else 1e-3
    lines = [f"{label}: old {medians['old'] * scale:.2f} {unit}, new {medians['new'] * scale:.2f} {unit}; "
             f"new/old median {median:.3f}, IQR {low:.3f}-{high:.3f} over {len(ratios)} rounds",
             "    per round: " + " ".join(f"{ratio:.3f}" for ratio in ratios)]
    differing = [sides["old"]["round"] for sides in pairs if sides["old"]["check"] != sides["new"]["check"]]
    if differing:
        lines.append(f"    note: the first step's loss or logits differ between the trees (rounds {differing})")
    return lines, {"rounds": len(ratios), "ratios": ratios, "median_ratio": median, "iqr": [low, high],
                   "median_ms": medians, "checks_differ_in_rounds": differing}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs=2, metavar="TREE", help="OLD_TREE NEW_TREE: the two checkouts' roots")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=["lenet5", "cifar-cnn", "resnet20"],
                        metavar="MODEL", help=f"of {', '.join(MODELS)} (default: %(default)s)")
    parser.add_argument("--modes", nargs="+", choices=("train", "inference"), default=["train", "inference"],
                        help="captured training step and/or inference (default: both)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of paired runs (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after the first (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="threads for both trees (default: all cores)")
    parser.add_argument("--image-size", type=int, help="square input size (default: each model's own)")
    parser.add_argument("--seed", type=int, default=0, help="weights and batches (default: %(default)s)")
    parser.add_argument("--cold", action="store_true",
                        help="also time each tree's first step on an empty cache folder, once per round")
    parser.add_argument("--env-old", action="append", metavar="NAME=VALUE", help="extra environment, old tree")
    parser.add_argument("--env-new", action="append", metavar="NAME=VALUE", help="extra environment, new tree")
    parser.add_argument("--cache-root", default=tree_env.default_cache_root(),
                        help="where each side's Numba cache folder lives (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run (default: %(default)s)")
    parser.add_argument("--json", metavar="PATH", help="write every run and the summaries as JSON")
    args = parser.parse_args(argv)
    for option in ("rounds", "steps", "batch_size", "threads"):
        value = getattr(args, option)
        if value is not None and value < 1:
            parser.error(f"--{option.replace('_', '-')} expects a positive number, but got {value}")
    if args.warmup < 0:
        parser.error(f"--warmup expects a number of steps >= 0, but got {args.warmup}")
    try:
        args.trees = dict(zip(SIDES, (tree_env.checkout_root(tree) for tree in args.trees)))
        args.extra_env = {"old": tree_env.parse_env(args.env_old, "--env-old"),
                          "new": tree_env.parse_env(args.env_new, "--env-new")}
    except ValueError as error:
        parser.error(str(error))
    for side, tree in args.trees.items():
        if not os.path.isfile(os.path.join(tree, TIMING_FILES[0])):
            parser.error(f"the {side} tree {tree} has no {TIMING_FILES[0]} to time it with")
    return args


def _timing_code_differs(trees):
    def read(tree, path):
        with open(os.path.join(tree, path), "rb") as file:
            return file.read()

    return [path for path in TIMING_FILES if read(trees["old"], path) != read(trees["new"], path)]


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    for side in SIDES:
        extra = " ".join(f"{k}={v}" for k, v in args.extra_env[side].items())
        print(f"{side}: {args.trees[side]}" + (f" with {extra}" if extra else ""))
    for path in _timing_code_differs(args.trees):
        print(f"note: {path} differs between the trees; each tree is timed by its own")
    groups = [(model, mode) for model in args.models for mode in args.modes]
    records, started = [], time.perf_counter()
    for round_index in range(args.rounds):
        order = SIDES if round_index % 2 == 0 else SIDES[::-1]
        for group in groups:
            for cold in (False, True) if args.cold else (False,):
                for side in order:
                    records.append(_timed_run(side, round_index, group, args, cold))
                    print(_progress(records[-1]), flush=True)
    print(f"\n{args.rounds} rounds in {time.perf_counter() - started:.0f} s, batch {args.batch_size}, "
          f"{args.steps} timed steps per run")
    summaries = []
    for group in groups:
        for cold in (False, True) if args.cold else (False,):
            lines, summary = summarize(records, group, cold)
            print("\n".join(lines))
            summaries.append({"model": group[0], "mode": group[1], "cold": cold, **summary})
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"trees": args.trees, "extra_env": args.extra_env, "settings": {
                key: getattr(args, key) for key in ("models", "modes", "rounds", "steps", "warmup", "batch_size",
                                                    "threads", "seed", "cold")},
                "summaries": summaries, "runs": records}, file, indent=1)
        print(f"results written to {args.json}")
    return 1 if any(record["status"] != "ok" for record in records) else 0


if __name__ == "__main__":
    sys.exit(main())
