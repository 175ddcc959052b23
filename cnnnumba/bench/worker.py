"""One measurement in a process of its own: `python -m cnnnumba.bench.worker SPEC_JSON` prints one result line.

Each framework runs in a fresh process with the thread count fixed by the parent's environment, so thread pools
(Numba's, OpenMP's, BLAS's) never compete inside one process, and each run's peak memory is its own. A --scaling
run alone switches its own framework between 1 thread and that count, step by step.
"""
import json
import math
import os
import resource
import statistics
import sys
import time
import traceback

RESULT_MARKER = "cnnnumba-bench-result: "


def _rss_mib():
    """Resident memory now, in MiB (Linux /proc; elsewhere the peak so far, the best available)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return _peak_rss_mib()


def _peak_rss_mib():
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _sgemm_operands(size):
    """(a, b, out) for a float32 (size × size) @ (size × size) NumPy matmul, after one product checked at a
    random element."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    out = np.empty((size, size), dtype=np.float32)
    np.matmul(a, b, out=out)
    probe = rng.integers(0, size, 2)
    expected = float(a[probe[0]] @ b[:, probe[1]])
    if not math.isclose(float(out[probe[0], probe[1]]), expected, rel_tol=1e-3, abs_tol=1e-2):
        raise RuntimeError("the sgemm measurement computed a wrong product")
    return a, b, out


# The first products of a process ran at half speed (95-100 against 180-200 GFLOP/s, Intel Xeon restricted to
# AVX2) until OpenBLAS's second thread got going: the peak is timed after this much warm-up.
SGEMM_WARMUP_SECONDS = 0.3


def sgemm_peak(size, repeats):
    """Median GFLOP/s of a float32 (size × size) @ (size × size) NumPy matmul, after SGEMM_WARMUP_SECONDS of
    products."""
    import numpy as np

    a, b, out = _sgemm_operands(size)
    started = time.perf_counter()
    while time.perf_counter() - started < SGEMM_WARMUP_SECONDS:
        np.matmul(a, b, out=out)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - started)
    seconds = statistics.median(times)
    return {"size": size, "dtype": "float32", "repeats": repeats, "median_ms": seconds * 1e3,
            "gflops": 2.0 * size**3 / seconds / 1e9}


def measure_scaling(spec):
    """`steps` pairs of one run on 1 thread and one on spec["threads"], back to back, in turn first: a cnnnumba step
    of spec["model"], or for "sgemm" one NumPy float32 product of spec["size"]. The two runs of a pair are at most
    a step apart, so the speed drift of a shared VM (a 1-thread cifar-cnn step measured 65-103 ms in processes
    minutes apart) cancels in their ratio. Both counts run in this one process, started on spec["threads"]."""
    from ..kernels._runtime import blas

    threads = spec["threads"]
    if spec["model"] == "sgemm":
        import numpy as np

        _, set_threads = blas.openblas_thread_setters("numpy")
        if set_threads is None:
            raise RuntimeError("NumPy's BLAS is not an OpenBLAS whose thread count can be set: no sgemm to compare")
        a, b, out = _sgemm_operands(spec["size"])
        runs = [lambda: np.matmul(a, b, out=out)]
    else:
        from .. import set_num_threads
        from . import runners

        model = runners.build_model(spec["model"], spec["seed"], image_size=spec.get("image_size"))
        batches = runners.make_batches(spec["model"], spec["batch_size"], spec["distinct_batches"], spec["seed"] + 1,
                                       image_size=spec.get("image_size"))
        step, _ = runners.cnnnumba_step(model, spec["mode"], eager=spec["eager"])
        # the step's BLAS calls (im2col GEMMs through NumPy, large linear layers through SciPy) follow the count too,
        # as they would in a process started on it
        blas_setters = [setter for _, setter in map(blas.openblas_thread_setters, ("numpy", "scipy")) if setter]

        def set_threads(count):
            set_num_threads(count)
            for setter in blas_setters:
                setter(count)

        runs = [lambda images=images, labels=labels: step(images, labels) for images, labels in batches]
    for count in (threads, 1):
        set_threads(count)
        for index in range(1 + spec["warmup"]):
            runs[index % len(runs)]()
    pairs = []
    for index in range(spec["steps"]):
        pair = {}
        for count in (1, threads) if index % 2 == 0 else (threads, 1):
            set_threads(count)
            run = runs[index % len(runs)]
            started = time.perf_counter()
            run()
            pair[str(count)] = time.perf_counter() - started
        pairs.append(pair)
    set_threads(threads)
    return {"pairs": pairs}


def _check_values(output):
    """What the parent compares across frameworks: the loss of the first step, or the first logits."""
    import numpy as np

    if isinstance(output, float):
        return [output]
    return np.asarray(output, dtype=np.float64)[:4].ravel().tolist()


def measure_model(spec):
    """Time one model × framework × mode: the first step apart, `warmup` more untimed, then `steps` timed."""
    from . import runners

    rss_before = _rss_mib()
    # the framework's import (Numba and llvmlite, or torch) apart from what the run itself adds
    if spec["framework"] == "cnnnumba":
        from .. import kernels  # noqa: F401
    else:
        import torch  # noqa: F401
    rss_after_import = _rss_mib()
    model = runners.build_model(spec["model"], spec["seed"], image_size=spec.get("image_size"))
    batches = runners.make_batches(spec["model"], spec["batch_size"], spec["distinct_batches"], spec["seed"] + 1,
                                   image_size=spec.get("image_size"))
    if spec["framework"] == "cnnnumba":
        step, variant = runners.cnnnumba_step(model, spec["mode"], eager=spec["eager"])
    else:
        import torch

        torch.set_num_threads(spec["threads"])
        torch.manual_seed(spec["seed"])
        variant = spec["variant"]
        step = runners.torch_step(runners.torch_model(model), spec["mode"], variant)
    started = time.perf_counter()
    first = step(*batches[0])
    first_seconds = time.perf_counter() - started
    rss_after_first_step, peak_after_first_step = _rss_mib(), _peak_rss_mib()
    for index in range(spec["warmup"]):
        step(*batches[(index + 1) % len(batches)])
    rss_after_warmup = _rss_mib()
    times = []
    for index in range(spec["steps"]):
        images, labels = batches[(index + 1 + spec["warmup"]) % len(batches)]
        started = time.perf_counter()
        step(images, labels)
        times.append(time.perf_counter() - started)
    result = {}
    if spec["framework"] == "cnnnumba":
        # counted here, after the timed steps: a FLOP trace before the first step would compile (and cache) the
        # forward kernels, and the first step would no longer show the compile time
        from .flops import model_flops

        channels, size, _ = runners.model_input(spec["model"], spec.get("image_size"))
        counted = model_flops(runners.build_model(spec["model"], spec["seed"], image_size=size),
                              (1, channels, size, size))
        result["flops_per_image"] = {mode: counted.per_step(mode) for mode in ("train", "inference")}
    return {**result, "variant": variant, "first_step_ms": first_seconds * 1e3, "step_ms": [t * 1e3 for t in times],
            "check": _check_values(first), "rss_before_model_mib": rss_before, "rss_after_import_mib": rss_after_import,
            "rss_after_first_step_mib": rss_after_first_step, "peak_after_first_step_mib": peak_after_first_step,
            "rss_after_warmup_mib": rss_after_warmup, "rss_end_mib": _rss_mib(), "peak_rss_mib": _peak_rss_mib()}


def profile_model(spec):
    """Per-op forward/backward times of eager training steps, the median over `steps` steps after a warm-up."""
    from .. import functional as F
    from .. import optim
    from ..autograd import Tensor
    from . import runners
    from .flops import op_flops
    from .instrument import record_ops

    model = runners.build_model(spec["model"], spec["seed"], image_size=spec.get("image_size"))
    images, labels = runners.make_batches(spec["model"], spec["batch_size"], 1, spec["seed"] + 1,
                                          image_size=spec.get("image_size"))[0]
    optimizer = optim.SGD(model.parameters(), lr=runners.LEARNING_RATE, momentum=runners.MOMENTUM)
    model.train()
    steps = []
    for index in range(spec["warmup"] + spec["steps"]):
        with record_ops(model) as calls:
            started = time.perf_counter()
            optimizer.zero_grad()
            loss = F.cross_entropy(model(Tensor(images)), labels)
            loss.backward()
            before_update = time.perf_counter()
            optimizer.step()
            finished = time.perf_counter()
        if index >= spec["warmup"]:
            steps.append((calls, finished - before_update, finished - started))
    ops = []
    for position, call in enumerate(steps[0][0]):
        flops = op_flops(call.op, call.input_shapes, call.output_shape, call.needs_input_grad, call.module)
        forward = statistics.median(step[0][position].forward_seconds for step in steps)
        backward = [sum(step[0][position].backward_seconds) for step in steps]
        ops.append({"module": call.module, "op": call.op, "input_shape": list(call.input_shapes[0] or ()),
                    "output_shape": list(call.output_shape or ()), "forward_ms": forward * 1e3,
                    "backward_ms": statistics.median(backward) * 1e3 if call.backward_seconds else None,
                    "forward_flops": flops.forward if flops else 0, "backward_flops": flops.backward if flops else 0})
    return {"model": spec["model"], "batch_size": spec["batch_size"], "steps": spec["steps"], "path": "eager",
            "optimizer_ms": statistics.median(step[1] for step in steps) * 1e3,
            "step_ms": statistics.median(step[2] for step in steps) * 1e3, "ops": ops}


def _node_flops(node):
    """(forward, backward) counted FLOPs of a graph node: convolutions and linear layers, as flops.py counts them."""
    from ..graph import nodes
    from .flops import conv2d_flops, linear_flops

    if isinstance(node, (nodes.Conv, nodes.FoldedConv)):
        batch, height, width, channels = node.output.shape
        weight_shape = node.inputs[1].shape if isinstance(node, nodes.Conv) else node.conv_weight.shape
        per_pass = conv2d_flops((batch, channels, height, width), weight_shape)
    elif isinstance(node, nodes.Linear):
        per_pass = linear_flops(node.inputs[0].shape, node.inputs[1].shape)
    else:
        return 0, 0
    if isinstance(node, nodes.FoldedConv):
        return per_pass, 0
    return per_pass, per_pass * (int(node.needs(0)) + int(node.needs(1)))


def _timed(record, key, method):
    """`method` wrapped to add its seconds to record[key] (an instance attribute shadowing the class's method)."""
    clock = time.perf_counter

    def timed(*args, **options):
        started = clock()
        result = method(*args, **options)
        record[key] += clock() - started
        return result

    return timed


def profile_captured(spec):
    """Per-node forward/backward times of the captured training step, the fused update and the executor's own time.

    The step runs through the executor's own replay; each node's forward and backward (and the update) are
    wrapped by a timer, so "executor" = step time − everything inside a node or the update: the Python loop over
    the schedule, label copy, batch-norm counters and the timers' own calls (about a microsecond per node).
    Steps without the timers are run alternately and their median is reported apart (`untimed_step_ms`).
    """
    from . import runners

    model = runners.build_model(spec["model"], spec["seed"], image_size=spec.get("image_size"))
    images, labels = runners.make_batches(spec["model"], spec["batch_size"], 1, spec["seed"] + 1,
                                          image_size=spec.get("image_size"))[0]
    capture = runners.graph_capture()
    if capture is None:
        raise RuntimeError("cnnnumba.graph.capture is missing: profile the eager step (--profile --eager)")
    from .. import functional as F
    from .. import optim

    model.train()
    optimizer = optim.SGD(model.parameters(), lr=runners.LEARNING_RATE, momentum=runners.MOMENTUM)
    step = capture(model, F.cross_entropy, optimizer)
    started = time.perf_counter()
    step(images, labels)  # records the graph (an eager, traced step that also compiles the kernels)
    first_seconds = time.perf_counter() - started
    step(images, labels)
    graph = step.last
    forward_nodes, backward_nodes = graph.schedule.forward_nodes, graph.schedule.backward_nodes
    timers = {id(node): {"forward": 0.0, "backward": 0.0} for node in forward_nodes}
    update_timer = {"update": 0.0}

    def install():
        for node in forward_nodes:
            node.forward = _timed(timers[id(node)], "forward", type(node).forward.__get__(node))
        for node in backward_nodes:
            node.backward = _timed(timers[id(node)], "backward", type(node).backward.__get__(node))
        graph.update.step = _timed(update_timer, "update", type(graph.update).step.__get__(graph.update))

    def remove():
        for node in forward_nodes:
            node.__dict__.pop("forward", None)
        for node in backward_nodes:
            node.__dict__.pop("backward", None)
        graph.update.__dict__.pop("step", None)

    samples, untimed = [], []
    for index in range(spec["warmup"] + spec["steps"]):
        for timer in timers.values():
            timer["forward"] = timer["backward"] = 0.0
        update_timer["update"] = 0.0
        install()
        try:
            begun = time.perf_counter()
            step(images, labels)
            total = time.perf_counter() - begun
        finally:
            remove()
        begun = time.perf_counter()
        step(images, labels)
        plain = time.perf_counter() - begun
        if index >= spec["warmup"]:
            samples.append(({key: dict(timer) for key, timer in timers.items()}, update_timer["update"], total))
            untimed.append(plain)
    backward_ids = {id(node) for node in backward_nodes}
    ops = []
    for node in forward_nodes:
        forward_flops, backward_flops = _node_flops(node)
        times = [sample[0][id(node)] for sample in samples]
        ops.append({"node": node.name, "value": node.output.name,
                    "input_shape": list(node.inputs[0].shape) if node.inputs else list(node.output.shape),
                    "output_shape": list(node.output.shape),
                    "forward_ms": statistics.median(t["forward"] for t in times) * 1e3,
                    "backward_ms": statistics.median(t["backward"] for t in times) * 1e3
                    if id(node) in backward_ids else None,
                    "forward_flops": forward_flops, "backward_flops": backward_flops if id(node) in backward_ids
                    else 0})
    inside = [sum(t["forward"] + t["backward"] for t in sample[0].values()) + sample[1] for sample in samples]
    return {"model": spec["model"], "batch_size": spec["batch_size"], "steps": spec["steps"], "path": "captured",
            "layout": "NHWC inside the graph; shapes are the graph's (N, H, W, C)",
            "first_step_ms": first_seconds * 1e3,
            "optimizer_ms": statistics.median(sample[1] for sample in samples) * 1e3,
            "executor_ms": statistics.median(sample[2] - inner for sample, inner in zip(samples, inside)) * 1e3,
            "step_ms": statistics.median(sample[2] for sample in samples) * 1e3,
            "untimed_step_ms": statistics.median(untimed) * 1e3, "ops": ops}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(argv[0])
    try:
        if spec["kind"] == "peak":
            result = sgemm_peak(spec["size"], spec["repeats"])
        elif spec["kind"] == "scaling":
            result = measure_scaling(spec)
        elif spec["kind"] == "profile":
            result = profile_model(spec) if spec.get("eager") else profile_captured(spec)
        else:
            result = measure_model(spec)
        result["status"] = "ok"
    except Exception as error:  # reported to the parent, which records it and goes on with the other runs
        traceback.print_exc()
        result = {"status": "failed", "error": f"{type(error).__name__}: {error}".strip()[:500]}
    from .isa import observe

    # after the measurement, so the probes (a small convolution in PyTorch) cost the timed steps nothing
    result["isa"] = observe(with_torch=spec.get("framework") == "torch")
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
