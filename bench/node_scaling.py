"""Which graph nodes of a captured training step lose time to threads: each node's forward and backward on 1 thread
and on N, both counts in one process, profiled in alternating rounds.

    python bench/node_scaling.py [--model cifar-cnn] [--threads 2] [--rounds 10]

"lost" is the N-thread time less the 1-thread time over N: what a node would save if it scaled perfectly. The
profiles alternate their count round by round, so this VM's drift (a 1-thread cifar-cnn step measured 65-103 ms
in processes minutes apart) reaches both counts alike; `cnnnumba bench --scaling` is the step's own figure.
"""
import argparse
import statistics

import numba

import cnnnumba as cn
from cnnnumba.bench.runners import MODEL_INPUTS
from cnnnumba.bench.worker import profile_captured


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar-cnn", choices=sorted(MODEL_INPUTS))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=numba.config.NUMBA_NUM_THREADS)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    if args.threads < 2:
        parser.error(f"--threads: compares 1 thread with more, but got {args.threads}")
    spec = {"model": args.model, "batch_size": args.batch_size, "steps": 5, "warmup": 1, "seed": 0}
    counts = (1, args.threads)
    profiles = {count: [] for count in counts}
    for round_index in range(args.rounds):
        for count in counts if round_index % 2 == 0 else counts[::-1]:
            cn.set_num_threads(count)
            profiles[count].append(profile_captured(spec))
    one, many = profiles[1], profiles[args.threads]
    lost_by_kind = {}
    print(f"{'phase':8s} {'node':18s} {'value':14s} {'1 thread ms':>11s} {f'{args.threads} threads ms':>12s} "
          f"{'speed-up':>8s} {'lost ms':>8s}")
    for phase in ("forward", "backward"):
        for position, op in enumerate(one[0]["ops"]):
            key = f"{phase}_ms"
            if op[key] is None:
                continue
            single = statistics.median(p["ops"][position][key] for p in one)
            multi = statistics.median(p["ops"][position][key] for p in many)
            lost = multi - single / args.threads
            kind = f"{op['node']} {phase}"
            lost_by_kind[kind] = lost_by_kind.get(kind, 0.0) + lost
            print(f"{phase:8s} {op['node']:18s} {op['value']:14s} {single:11.2f} {multi:12.2f} "
                  f"{single / multi:8.2f} {lost:8.2f}")
    for key in ("optimizer_ms", "executor_ms", "untimed_step_ms"):
        single = statistics.median(p[key] for p in one)
        multi = statistics.median(p[key] for p in many)
        print(f"{key:41s} {single:11.2f} {multi:12.2f} {single / multi:8.2f} {multi - single / args.threads:8.2f}")
    print("lost ms by node kind: " + ", ".join(f"{kind} {lost:.2f}" for kind, lost in
                                               sorted(lost_by_kind.items(), key=lambda item: -item[1])))


if __name__ == "__main__":
    main()
