"""Where a cold first training step spends its compile time: exclusive CPU seconds per Numba dispatcher and signature.

Run in a fresh process with an empty cache, e.g.
    rm -rf /tmp/cold && CNNNUMBA_CACHE_DIR=/tmp/cold python bench/compile_profile.py --model cifar-cnn [-v] [--json out.json]
It listens to Numba's "numba:compile" events (cache loads do not fire them), charges each compile its own CPU
time with the nested compiles it triggered subtracted, and times the captured step's first call (eager, traced)
and second call (the first replay) apart. CPU time, not wall time, because a loaded machine stretches the wall
time while compilation stays single-threaded.
"""
import argparse
import collections
import json
import os
import time

import numba  # noqa: F401  (cnnnumba._config settles the cache directory even when numba came first)
from numba.core import event


class CompileRecorder(event.Listener):
    """(function, argument types, parent function, exclusive CPU seconds) for every compile."""

    def __init__(self):
        self.records, self._stack = [], []

    def on_start(self, ev):
        self._stack.append([time.process_time(), 0.0, ev.data])

    def on_end(self, ev):
        started, nested, data = self._stack.pop()
        spent = time.process_time() - started
        if self._stack:
            self._stack[-1][1] += spent
        parent = self._stack[-1][2]["dispatcher"] if self._stack else None
        self.records.append((_name(data["dispatcher"]), str(data["args"]), _name(parent), spent - nested))


def _name(dispatcher):
    if dispatcher is None:
        return "-"
    function = getattr(dispatcher, "py_func", dispatcher)
    return f"{function.__module__.split('.')[-1]}.{function.__name__}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar-cnn")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("-v", "--verbose", action="store_true", help="list every signature")
    parser.add_argument("--json", help="write the records here")
    args = parser.parse_args()
    recorder = CompileRecorder()
    event.register("numba:compile", recorder)
    from cnnnumba.bench import runners

    model = runners.build_model(args.model, 0)
    batches = runners.make_batches(args.model, args.batch_size, 2, 1)
    step, variant = runners.cnnnumba_step(model, "train")
    timings = []
    for images, labels in batches:
        wall, cpu = time.perf_counter(), time.process_time()
        step(images, labels)
        timings.append((time.perf_counter() - wall, time.process_time() - cpu))
    print(f"{args.model} batch {args.batch_size} {variant}: first step {timings[0][0]:.2f} s wall "
          f"({timings[0][1]:.2f} s CPU), second {timings[1][0]:.2f} s ({timings[1][1]:.2f} s CPU); "
          f"{len(recorder.records)} compiles, {sum(r[3] for r in recorder.records):.2f} s CPU; "
          f"load {os.getloadavg()[0]:.2f}")
    by_function = collections.defaultdict(list)
    for name, signature, parent, seconds in recorder.records:
        by_function[name].append((seconds, signature, parent))
    for name, compiles in sorted(by_function.items(), key=lambda item: -sum(c[0] for c in item[1])):
        print(f"{sum(c[0] for c in compiles):7.2f} s {len(compiles):3d} sig  {name}")
        if args.verbose:
            for seconds, signature, parent in compiles:
                print(f"          {seconds:6.2f}  {signature}  <- {parent}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"timings": timings, "records": recorder.records}, out)


if __name__ == "__main__":
    main()
