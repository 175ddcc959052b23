"""Data-parallel training speed: N ranks × T threads against 1 rank × N·T threads and against PyTorch's DDP (gloo,
on 127.0.0.1) on the same cores and the same global batch, the all-reduce's share of the step, and the projection
of the step to larger clusters.

    python bench/distributed.py run [--ranks 2] [--threads 1] [--model cifar-cnn] [--global-batch 128]
                                    [--steps 20] [--warmup 3] [--no-torch] [--simulate-gbit G] [--json PATH]
    python bench/distributed.py project --step-ms T --grad-mb S [--backward-share 0.67] [--last-bucket-mb 1]
                                        [--latency-us 5 50] [--gbit 10 100] [--ranks 8 64 512] [--batch B]
                                        [--algorithm ring|halving-doubling]

`run` starts `mpiexec -n N` for cnnnumba, one process for the single-rank baseline, and N processes joined by
gloo for PyTorch. Each cnnnumba rank also times a blocking all-reduce of the model's gradient size and a sweep of
sizes, fitting t(S) = a + b·S, so that the ring model (`project`) can be checked against this machine.
`--simulate-gbit G` holds every gradient bucket back until a link of G Gbit/s would have carried it and times
the captured step twice: buckets started as backward produces them (overlap) and all started after the backward.
"""
import argparse
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SWEEP_BYTES = [2**k for k in range(12, 25, 2)]  # 4 KiB .. 16 MiB


# ----- the communication model ------------------------------------------------------------------------------------

def ring_allreduce_seconds(ranks, nbytes, latency_s, bytes_per_s):
    """A ring all-reduce: 2(N-1) steps, each one latency and a 1/N share of the bytes; 2(N-1)/N x bytes in all."""
    if ranks == 1:
        return 0.0
    return 2 * (ranks - 1) * latency_s + 2 * (ranks - 1) / ranks * nbytes / bytes_per_s


def halving_doubling_allreduce_seconds(ranks, nbytes, latency_s, bytes_per_s):
    """Rabenseifner's all-reduce (reduce-scatter by recursive halving, all-gather by doubling), which MPI
    libraries pick for many ranks: the ring's bytes, but 2 log2(N) latencies instead of 2(N-1)."""
    if ranks == 1:
        return 0.0
    return 2 * math.ceil(math.log2(ranks)) * latency_s + 2 * (ranks - 1) / ranks * nbytes / bytes_per_s


ALGORITHMS = {"ring": ring_allreduce_seconds, "halving-doubling": halving_doubling_allreduce_seconds}


def projected_step(step_s, nbytes, ranks, latency_s, bytes_per_s, backward_share, last_bucket_bytes,
                   allreduce=ring_allreduce_seconds):
    """(step without overlap, step with the buckets overlapped with the backward) for a fixed per-rank batch.

    `step_s` is one rank's compute time per step. At most `backward_share` of it can hide communication, and the
    last bucket (the first layers' gradients, complete only when the backward ends) is never hidden."""
    communication = allreduce(ranks, nbytes, latency_s, bytes_per_s)
    exposed = max(allreduce(ranks, min(last_bucket_bytes, nbytes), latency_s, bytes_per_s),
                  communication - backward_share * step_s)
    return step_s + communication, step_s + exposed


def projection_table(step_s, nbytes, ranks_list, gbits, latencies_s, backward_share, last_bucket_bytes,
                     algorithm="ring", batch=None):
    allreduce = ALGORITHMS[algorithm]
    lines = [f"per-rank step {step_s * 1e3:.1f} ms, gradients {nbytes / 2**20:.2f} MiB (last bucket "
             f"{min(last_bucket_bytes, nbytes) / 2**20:.2f} MiB), backward share {backward_share:.2f}, {algorithm} "
             "all-reduce (2(N-1)/N x the gradient bytes per step)",
             f"{'ranks':>6} {'link':>9} {'latency':>8} {'all-reduce':>11} {'step, no overlap':>17} "
             f"{'step, overlap':>14} {'efficiency':>11}" + (f" {'images/s':>10}" if batch else "")]
    for gbit in gbits:
        for latency in latencies_s:
            for ranks in ranks_list:
                communication = allreduce(ranks, nbytes, latency, gbit * 1e9 / 8)
                plain, overlapped = projected_step(step_s, nbytes, ranks, latency, gbit * 1e9 / 8, backward_share,
                                                   last_bucket_bytes, allreduce)
                line = (f"{ranks:>6} {gbit:>5g} Gb/s {latency * 1e6:>6g}us {communication * 1e3:>9.2f}ms "
                        f"{plain * 1e3:>15.1f}ms {overlapped * 1e3:>12.1f}ms {step_s / overlapped:>10.0%}")
                if batch:
                    line += f" {ranks * batch / overlapped:>10.0f}"
                lines.append(line)
    return "\n".join(lines)


def fit_latency_and_bandwidth(sizes, seconds, ranks):
    """(latency s, bytes/s) of the ring model fitted to all-reduce times measured at `sizes` bytes."""
    slope, intercept = np.polyfit(np.asarray(sizes, float), np.asarray(seconds, float), 1)
    latency = max(intercept, 0.0) / (2 * (ranks - 1))
    bandwidth = 2 * (ranks - 1) / ranks / slope if slope > 0 else float("inf")
    return latency, bandwidth


# ----- workers --------------------------------------------------------------------------------------------------

def _timed_steps(step, batches, steps, warmup, barrier):
    for images, labels in batches[:warmup]:
        step(images, labels)
    barrier()
    started = time.perf_counter()
    for k in range(steps):
        images, labels = batches[warmup + k % (len(batches) - warmup)]
        step(images, labels)
    barrier()
    return (time.perf_counter() - started) / steps


class _SimulatedLink:
    """Requests from all_reduce_start complete no sooner than one link of `gbit`, carrying them one after another
    in the order they started, would have delivered their 2(N-1)/N x bytes."""

    def __init__(self, dist, gbit):
        self.dist, self.bytes_per_s = dist, gbit * 1e9 / 8
        self.start, self.test, self.wait = dist.all_reduce_start, dist.test, dist.wait
        self.due, self.link_free_at = {}, 0.0

    def install(self):
        world = self.dist.get_world_size()

        def start(array, op="sum"):
            request = self.start(array, op)
            begins = max(time.perf_counter(), self.link_free_at)
            self.link_free_at = begins + 2 * (world - 1) / world * array.nbytes / self.bytes_per_s
            self.due[id(request)] = self.link_free_at
            return request

        def test(request):
            return self.test(request) and time.perf_counter() >= self.due.get(id(request), 0.0)

        def wait(request):
            self.wait(request)
            while time.perf_counter() < self.due.get(id(request), 0.0):
                pass

        self.dist.all_reduce_start, self.dist.test, self.dist.wait = start, test, wait


def cnnnumba_worker(spec):
    import cnnnumba as cn
    from cnnnumba import distributed as dist
    from cnnnumba.bench.runners import build_model, cnnnumba_step, make_batches
    from cnnnumba.nn.parallel import DistributedDataParallel

    cn.set_num_threads(spec["threads"])
    parallel = dist.launcher_world_size() > 1
    if parallel:
        dist.init_process_group()
    rank, world = (dist.get_rank(), dist.get_world_size()) if parallel else (0, 1)
    model = build_model(spec["model"], seed=0)
    batch = spec["global_batch"] // world
    batches = make_batches(spec["model"], batch, spec["warmup"] + 4, seed=1 + rank)
    wrapped = DistributedDataParallel(model, bucket_cap_mb=spec["bucket_cap_mb"]) if parallel else model
    step, variant = cnnnumba_step(wrapped, "train")
    barrier = dist.barrier if parallel else (lambda: None)
    result = {"framework": "cnnnumba", "variant": variant, "ranks": world, "threads": spec["threads"],
              "batch_per_rank": batch, "parameters": int(sum(p.size for p in model.parameters()))}
    result["gradient_bytes"] = int(sum(p.data.nbytes for p in model.parameters()))
    if parallel:
        result.update(_communication_figures(dist, world, result["gradient_bytes"]))
        if spec.get("simulate_gbit"):
            _SimulatedLink(dist, spec["simulate_gbit"]).install()
    seconds = _timed_steps(step, batches, spec["steps"], spec["warmup"], barrier)
    if parallel:
        seconds = _max_over_ranks(dist, seconds)
        sync = _gradient_sync_of(step)
        if sync is not None:
            result["buckets"] = len(sync.buckets)
            result["last_bucket_bytes"] = int(sync.buckets[-1].array.nbytes)
        if spec.get("simulate_gbit"):
            result["step_ms_without_overlap"] = 1e3 * _step_without_overlap(dist, spec, step, batches)
    result.update(step_ms=seconds * 1e3, images_per_second=spec["global_batch"] / seconds)
    if rank == 0:
        print("RESULT " + json.dumps(result), flush=True)


def _max_over_ranks(dist, value):
    array = np.array([value])
    dist.all_reduce(array, op="max")
    return float(array[0])


def _communication_figures(dist, world, gradient_bytes):
    """The all-reduce alone at the gradient size, and latency and bandwidth fitted to a sweep of sizes."""
    figures = {"allreduce_ms": _time_allreduce(dist, np.zeros(gradient_bytes // 4, np.float32), 20) * 1e3}
    times = [_time_allreduce(dist, np.zeros(size // 4, np.float32), 10) for size in SWEEP_BYTES]
    latency, bandwidth = fit_latency_and_bandwidth(SWEEP_BYTES, times, world)
    figures.update(latency_us=latency * 1e6, bandwidth_gbit=bandwidth * 8 / 1e9)
    return figures


def _step_without_overlap(dist, spec, step, batches):
    """The captured step's time with every bucket started only after the whole backward."""
    sync = _gradient_sync_of(step)
    last = max(bucket.ready_after for bucket in sync.buckets)
    for bucket in sync.buckets:
        bucket.ready_after = last
    return _max_over_ranks(dist, _timed_steps(step, batches, spec["steps"], spec["warmup"], dist.barrier))


def _gradient_sync_of(step):
    """The GradientSync of the captured step behind the runner's closure."""
    for cell in step.__closure__ or ():
        graph = getattr(cell.cell_contents, "last", None)
        if graph is not None:
            return getattr(graph, "gradient_sync", None)
    return None


def _time_allreduce(dist, buffer, repeats):
    dist.all_reduce(buffer)
    dist.barrier()
    started = time.perf_counter()
    for _ in range(repeats):
        dist.all_reduce(buffer)
    return _max_over_ranks(dist, (time.perf_counter() - started) / repeats)


def torch_worker(spec):
    import torch
    import torch.distributed as tdist

    from cnnnumba.bench.runners import LEARNING_RATE, MOMENTUM, build_model, make_batches, torch_model

    torch.set_num_threads(spec["threads"])
    tdist.init_process_group("gloo")
    rank, world = tdist.get_rank(), tdist.get_world_size()
    model = torch.nn.parallel.DistributedDataParallel(torch_model(build_model(spec["model"], seed=0)))
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    batch = spec["global_batch"] // world
    batches = make_batches(spec["model"], batch, spec["warmup"] + 4, seed=1 + rank)

    def step(images, labels):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(images)), torch.from_numpy(labels))
        loss.backward()
        optimizer.step()

    seconds = _timed_steps(step, batches, spec["steps"], spec["warmup"], tdist.barrier)
    longest = torch.tensor([seconds], dtype=torch.float64)
    tdist.all_reduce(longest, op=tdist.ReduceOp.MAX)
    gradient = torch.zeros(sum(p.numel() for p in model.parameters()))
    tdist.all_reduce(gradient)
    started = time.perf_counter()
    for _ in range(20):
        tdist.all_reduce(gradient)
    allreduce = torch.tensor([(time.perf_counter() - started) / 20], dtype=torch.float64)
    tdist.all_reduce(allreduce, op=tdist.ReduceOp.MAX)
    if rank == 0:
        print("RESULT " + json.dumps({
            "framework": "torch-ddp-gloo", "ranks": world, "threads": spec["threads"], "batch_per_rank": batch,
            "step_ms": float(longest) * 1e3, "images_per_second": spec["global_batch"] / float(longest),
            "allreduce_ms": float(allreduce) * 1e3}), flush=True)
    tdist.destroy_process_group()


# ----- the driver -------------------------------------------------------------------------------------------------

def _result(process_output, what):
    for line in process_output.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{what} printed no result")


def _run(command, env, timeout, what):
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO), **env})
    if completed.returncode != 0:
        raise RuntimeError(f"{what} failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    return _result(completed.stdout, what)


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run_torch(spec, ranks, timeout):
    port = _free_port()
    processes = []
    for rank in range(ranks):
        env = {**os.environ, "PYTHONPATH": str(REPO), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "RANK": str(rank), "WORLD_SIZE": str(ranks), "OMP_NUM_THREADS": str(spec["threads"])}
        processes.append(subprocess.Popen([sys.executable, __file__, "worker", "torch", json.dumps(spec)],
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                          cwd=REPO))
    outputs = [process.communicate(timeout=timeout) for process in processes]
    if any(process.returncode for process in processes):
        raise RuntimeError("PyTorch DDP failed:\n" + "\n".join(err[-2000:] for _, err in outputs))
    return _result(outputs[0][0], "PyTorch DDP")


def run(args):
    spec = {"model": args.model, "global_batch": args.global_batch, "steps": args.steps, "warmup": args.warmup,
            "threads": args.threads, "simulate_gbit": args.simulate_gbit, "bucket_cap_mb": args.bucket_cap_mb}
    if args.global_batch % args.ranks:
        raise SystemExit(f"--global-batch {args.global_batch} must divide among {args.ranks} ranks")
    worker = [sys.executable, __file__, "worker", "cnnnumba"]
    results = [_run(["mpiexec", "-n", str(args.ranks), *worker, json.dumps(spec)], {"CNNNUMBA_NUM_THREADS": ""},
                    args.timeout, f"cnnnumba on {args.ranks} ranks")]
    single = dict(spec, threads=args.ranks * args.threads, simulate_gbit=None)
    # NUMBA_NUM_THREADS: an oversubscribed comparison (4 ranks on 2 cores) needs more threads than cores
    results.append(_run([*worker, json.dumps(single)], {"CNNNUMBA_NUM_THREADS": "",
                                                        "NUMBA_NUM_THREADS": str(single["threads"])},
                        args.timeout, "cnnnumba alone"))
    if not args.no_torch:
        try:
            results.append(_run_torch(spec, args.ranks, args.timeout))
        except (ImportError, RuntimeError) as error:
            print(f"PyTorch DDP skipped: {error}", file=sys.stderr)
    parallel = results[0]
    print(f"{args.model}, global batch {args.global_batch}, {args.steps} timed steps after {args.warmup}")
    for result in results:
        line = (f"  {result['framework']:15s} {result['ranks']} rank(s) x {result['threads']} thread(s): "
                f"{result['step_ms']:8.1f} ms/step {result['images_per_second']:8.0f} images/s")
        if "allreduce_ms" in result:
            line += f", all-reduce of the gradients alone {result['allreduce_ms']:.2f} ms " \
                    f"({result['allreduce_ms'] / result['step_ms']:.1%} of the step)"
        print(line)
    print(f"  {args.ranks} ranks / 1 rank: {parallel['images_per_second'] / results[1]['images_per_second']:.2f}x "
          "images/s")
    if len(results) > 2:
        print(f"  cnnnumba / PyTorch DDP step time: {parallel['step_ms'] / results[2]['step_ms']:.2f}x")
    predicted = ring_allreduce_seconds(args.ranks, parallel["gradient_bytes"], parallel["latency_us"] * 1e-6,
                                       parallel["bandwidth_gbit"] * 1e9 / 8)
    print(f"  fitted here: latency {parallel['latency_us']:.1f} us, bandwidth {parallel['bandwidth_gbit']:.1f} Gbit/s; "
          f"the ring model predicts {predicted * 1e3:.2f} ms for the gradients' all-reduce, measured "
          f"{parallel['allreduce_ms']:.2f} ms")
    if "step_ms_without_overlap" in parallel:
        print(f"  simulated {args.simulate_gbit:g} Gbit/s link: {parallel['step_ms']:.1f} ms/step with buckets "
              f"overlapping the backward, {parallel['step_ms_without_overlap']:.1f} ms started after it")
    print("projection from this run's step (the link figures are assumptions; see `project --help`):")
    print(projection_table(parallel["step_ms"] / 1e3, parallel["gradient_bytes"], [8, 64, 512], [10, 100],
                           [5e-6, 50e-6], 2 / 3, parallel.get("last_bucket_bytes", parallel["gradient_bytes"]),
                           batch=parallel["batch_per_rank"]))
    if args.json:
        Path(args.json).write_text(json.dumps({"spec": spec, "results": results}, indent=2))


def project(args):
    print(projection_table(args.step_ms / 1e3, args.grad_mb * 2**20, args.ranks, args.gbit,
                           [latency * 1e-6 for latency in args.latency_us], args.backward_share,
                           args.last_bucket_mb * 2**20, args.algorithm, args.batch))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        {"cnnnumba": cnnnumba_worker, "torch": torch_worker}[argv[1]](json.loads(argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    measure = commands.add_parser("run", help="measure on this machine")
    measure.add_argument("--ranks", type=int, default=2)
    measure.add_argument("--threads", type=int, default=1, help="threads per rank")
    measure.add_argument("--model", default="cifar-cnn")
    measure.add_argument("--global-batch", type=int, default=128)
    measure.add_argument("--steps", type=int, default=20)
    measure.add_argument("--warmup", type=int, default=3)
    measure.add_argument("--no-torch", action="store_true")
    measure.add_argument("--bucket-cap-mb", type=float, help="DistributedDataParallel's bucket size (default 25)")
    measure.add_argument("--simulate-gbit", type=float, help="hold buckets back as a link of this speed would")
    measure.add_argument("--timeout", type=int, default=1200)
    measure.add_argument("--json", metavar="PATH")
    paper = commands.add_parser("project", help="project the step to larger clusters (ring all-reduce model)")
    paper.add_argument("--step-ms", type=float, required=True, help="one rank's step time at its batch")
    paper.add_argument("--grad-mb", type=float, required=True, help="gradient MiB per step (4 x parameters)")
    paper.add_argument("--backward-share", type=float, default=2 / 3, help="share of the step that can hide "
                                                                           "the all-reduce (the backward)")
    paper.add_argument("--latency-us", type=float, nargs="+", default=[5.0, 50.0])
    paper.add_argument("--gbit", type=float, nargs="+", default=[10.0, 100.0])
    paper.add_argument("--ranks", type=int, nargs="+", default=[8, 64, 512])
    paper.add_argument("--last-bucket-mb", type=float, default=1.0,
                       help="gradients all-reduced after the backward ends (the first layers' bucket)")
    paper.add_argument("--algorithm", choices=sorted(ALGORITHMS), default="ring")
    paper.add_argument("--batch", type=int, help="per-rank batch (adds images/s)")
    args = parser.parse_args(argv)
    (run if args.command == "run" else project)(args)


if __name__ == "__main__":
    main()
