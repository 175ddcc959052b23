"""The comparison and the profile: runs every measurement in a worker process and gathers the records."""
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

from . import isa
from .flops import COUNTED, model_flops
from .worker import RESULT_MARKER

SCHEMA = "cnnnumba.bench/1"
TORCH_VARIANTS = ("nchw", "channels_last")
WORKER_TIMEOUT_S = 1800


def torch_version():
    """PyTorch's version if it is installed (found without importing it), else None."""
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib():
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine_info():
    """Where the numbers come from: CPU, cores, memory, OS and the load at the time."""
    import llvmlite.binding as llvm

    return {"cpu": _cpu_name(), "llvm_cpu": llvm.get_host_cpu_name(), "cores": os.cpu_count(),
            "memory_gib": _memory_gib(), "platform": platform.platform(),
            "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def versions():
    import numba
    import numpy

    import cnnnumba

    return {"python": platform.python_version(), "numpy": numpy.__version__, "numba": numba.__version__,
            "cnnnumba": cnnnumba.__version__, "torch": torch_version()}


def _busy_cpu_seconds():
    """CPU seconds all processes have spent busy since boot (Linux /proc/stat), or None elsewhere."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_worker(spec, threads, timeout=WORKER_TIMEOUT_S):
    """Run one measurement in a fresh process pinned to `threads` threads (and restricted to spec["isa"], when
    given, through isa.apply); returns its result dict.

    The result also says how busy the rest of the machine was meanwhile: `other_load_cores`, the cores that
    other processes kept busy on average while the worker ran (0 on a quiet machine).
    """
    environment = isa.apply(spec.get("isa", "native"), dict(os.environ))
    for variable in ("CNNNUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        environment[variable] = str(threads)
    busy_before, own_before, started = _busy_cpu_seconds(), _children_cpu_seconds(), time.perf_counter()
    try:
        finished = subprocess.run([sys.executable, "-m", "cnnnumba.bench.worker", json.dumps(spec)],
                                  capture_output=True, text=True, env=environment, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "error": f"timed out after {timeout} s"}
    wall, busy_after = time.perf_counter() - started, _busy_cpu_seconds()
    other_load = None
    if busy_before is not None and busy_after is not None and wall > 0:
        others = (busy_after - busy_before) - (_children_cpu_seconds() - own_before)
        other_load = max(others, 0.0) / wall
    for line in reversed(finished.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            result = json.loads(line[len(RESULT_MARKER):])
            result["other_load_cores"] = other_load
            return result
    tail = " | ".join(finished.stderr.strip().splitlines()[-3:])
    return {"status": "failed", "error": f"worker exited with code {finished.returncode}: {tail}"[:500],
            "other_load_cores": other_load}


def _record(spec, result, flops, peak_gflops):
    record = {"model": spec["model"], "batch_size": spec["batch_size"], "mode": spec["mode"],
              "framework": spec["framework"], "variant": spec.get("variant") or result.get("variant"),
              "threads": spec["threads"], "status": result["status"],
              "other_load_cores": result.get("other_load_cores"), "isa_observed": result.get("isa")}
    if result["status"] != "ok":
        record["error"] = result["error"]
        return record
    seconds = statistics.median(result["step_ms"]) / 1e3
    gflops = flops / seconds / 1e9
    record.update(ms_per_step=seconds * 1e3, step_ms=result["step_ms"],
                  images_per_second=spec["batch_size"] / seconds, flops_per_step=flops, gflops=gflops,
                  percent_of_peak=100.0 * gflops / peak_gflops if peak_gflops else None,
                  first_step_ms=result["first_step_ms"],
                  peak_memory_mib=max(result["peak_rss_mib"] - result["rss_before_model_mib"], 0.0),
                  peak_rss_mib=result["peak_rss_mib"], check=result["check"],
                  memory_mib={key[:-4]: result[key] for key in result if key.endswith("_mib")})
    return record


def _quietest(attempts):
    """Of one run's rounds, the successful one during which other processes were least busy.

    The choice looks only at the outside load, never at the times, so it cannot favour a framework; every
    round's time and load stay in the record under "rounds".
    """
    succeeded = [r for r in attempts if r["status"] == "ok"] or attempts
    chosen = dict(min(succeeded, key=lambda r: (r.get("other_load_cores") is None, r.get("other_load_cores") or 0.0)))
    chosen["rounds"] = [{"round": r["round"], "status": r["status"], "ms_per_step": r.get("ms_per_step"),
                         "other_load_cores": r.get("other_load_cores")} for r in attempts]
    return chosen


def _paired_ratios(mine, theirs):
    """cnnnumba's time over another run's, round by round: only rounds where both succeeded, since a round's
    runs follow each other within seconds and share the machine's speed of the moment (which drifts between
    rounds on a VM)."""
    theirs_by_round = {r["round"]: r for r in theirs if r["status"] == "ok"}
    return [m["ms_per_step"] / theirs_by_round[m["round"]]["ms_per_step"]
            for m in mine if m["status"] == "ok" and m["round"] in theirs_by_round]


def _compare_group(records, attempts):
    """Ratios and the validation of one model × batch × mode group against its cnnnumba record; attempts holds
    every round of each record, in the same order."""
    import numpy as np

    reference_index = next((i for i, r in enumerate(records) if r["framework"] == "cnnnumba" and r["status"] == "ok"),
                           None)
    if reference_index is None:
        return
    reference, own_rounds = records[reference_index], attempts[reference_index]
    torch_eager = next((r for r in records if r["variant"] == "nchw" and r["status"] == "ok"), None)
    if torch_eager is not None:
        reference["time_over_torch_nchw"] = reference["ms_per_step"] / torch_eager["ms_per_step"]
    torch_rounds = [rounds for record, rounds in zip(records, attempts) if record["framework"] == "torch"]
    best_by_round = []
    for own in own_rounds:
        times = [r["ms_per_step"] for rounds in torch_rounds for r in rounds
                 if r["round"] == own["round"] and r["status"] == "ok"]
        if own["status"] == "ok" and len(times) == len(torch_rounds) and times:
            best_by_round.append(own["ms_per_step"] / min(times))
    if best_by_round:
        reference["time_over_best_torch_by_round"] = best_by_round
        reference["time_over_best_torch"] = float(np.median(best_by_round))
    for record, rounds in zip(records, attempts):
        if record is reference or record["status"] != "ok":
            continue
        paired = _paired_ratios(own_rounds, rounds)
        record["cnnnumba_time_over_this_by_round"] = paired
        record["cnnnumba_time_over_this"] = float(np.median(paired)) if paired else None
        mine, theirs = np.asarray(reference["check"]), np.asarray(record["check"])
        record["max_abs_difference_to_cnnnumba"] = float(np.max(np.abs(mine - theirs)))
        record["agrees_with_cnnnumba"] = bool(np.allclose(mine, theirs, rtol=1e-3, atol=1e-3))


def measure_peak(settings, log):
    peak = run_worker({"kind": "peak", "size": settings["peak_size"], "repeats": settings["peak_repeats"],
                       "isa": settings.get("isa", "native")}, settings["threads"])
    if peak["status"] == "ok":
        log(f"sgemm peak (NumPy float32 matmul {peak['size']}x{peak['size']}, {settings['threads']} threads): "
            f"{peak['gflops']:.1f} GFLOP/s")
    else:
        log(f"sgemm peak: failed ({peak['error']}); % of peak is left out")
    return peak


def _header(settings, peak):
    return {"schema": SCHEMA, "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": machine_info(), "versions": versions(), "threads": settings["threads"],
            "settings": {key: value for key, value in settings.items() if key != "threads"},
            "flops_counted": COUNTED, "sgemm_peak": peak,
            "isa": isa.describe_request(settings.get("isa", "native"))}


def run_comparison(settings, log=print):
    """Every model × batch size × mode in cnnnumba and (when installed) PyTorch; returns the JSON document."""
    peak = measure_peak(settings, log)
    peak_gflops = peak.get("gflops")
    document = _header(settings, peak)
    document["torch_missing"] = document["versions"]["torch"] is None
    if document["torch_missing"]:
        log("torch is missing: running cnnnumba alone (pip install torch==2.13.0 for the comparison)")
    variants = [] if document["torch_missing"] or settings["no_torch"] else list(TORCH_VARIANTS)
    if variants and settings["torch_compile"]:
        variants.append("compile")
    records = []
    for model in settings["models"]:
        from .runners import build_model, model_input

        counted = {}  # per image and mode, from the first cnnnumba worker that ran (it counts after its timing)

        def per_image(mode, result):
            if "flops_per_image" in result:
                counted.update(result["flops_per_image"])
            if mode not in counted:  # no cnnnumba run has succeeded yet: count here, nothing is timed after it
                channels, size, _ = model_input(model, settings.get("image_size"))
                counted.update({m: model_flops(build_model(model, settings["seed"], image_size=size),
                                               (1, channels, size, size))
                                .per_step(m) for m in ("train", "inference")})
            return counted[mode]

        by_mode = settings.get("batch_sizes_by_mode") or {}
        sizes = dict.fromkeys(b for mode in settings["modes"] for b in by_mode.get(mode, settings["batch_sizes"]))
        for batch_size in sorted(sizes) if by_mode else sizes:
            for mode in [m for m in settings["modes"] if batch_size in by_mode.get(m, settings["batch_sizes"])]:
                runs = [("cnnnumba", None)] + [("torch", v) for v in variants]
                attempts = {run: [] for run in runs}
                for round_index in range(settings["rounds"]):
                    # rounds interleave the frameworks, so a burst of outside load hits them alike
                    for framework, variant in runs:
                        spec = {"kind": "model", "framework": framework, "variant": variant, "model": model,
                                "batch_size": batch_size, "mode": mode, "steps": settings["steps"],
                                "warmup": settings["warmup"], "seed": settings["seed"], "eager": settings["eager"],
                                "distinct_batches": settings["distinct_batches"], "threads": settings["threads"],
                                "isa": settings.get("isa", "native"), "image_size": settings.get("image_size")}
                        result = run_worker(spec, settings["threads"])
                        flops = per_image(mode, result) * batch_size if result["status"] == "ok" else 0
                        record = _record(spec, result, flops, peak_gflops)
                        record["round"] = round_index + 1
                        attempts[(framework, variant)].append(record)
                        log(_progress_line(record))
                group = [_quietest(attempts[run]) for run in runs]
                _compare_group(group, [attempts[run] for run in runs])
                records.extend(group)
    document["records"] = records
    isa.summarize(document)
    document["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return document


def framework_label(record):
    if record["framework"] == "cnnnumba":
        return f"cnnnumba {record['variant'] or ''}".strip()
    return f"torch {record['variant']}"


def _progress_line(record):
    where = (f"{record['model']} batch {record['batch_size']} {record['mode']}, {framework_label(record)}, "
             f"round {record['round']}")
    if record["status"] != "ok":
        return f"  {where}: FAILED ({record['error']})"
    return (f"  {where}: {record['ms_per_step']:.2f} ms/step, first step {record['first_step_ms']:.0f} ms, "
            f"others busy {record['other_load_cores'] or 0:.2f} cores")


def _scaling_run(group, threads, settings):
    """One round of a --scaling group, a worker process started on `threads` threads: (its pairs, each
    {"1": seconds, str(threads): seconds}, or None when it failed; its error or None; the cores other processes
    kept busy meanwhile; what it saw of its instruction set)."""
    model, batch_size, mode = group
    spec = {"kind": "scaling", "model": model, "threads": threads, "steps": settings["steps"],
            "warmup": settings["warmup"], "isa": settings.get("isa", "native"),
            "image_size": settings.get("image_size")}
    if model == "sgemm":
        spec["size"] = batch_size
    else:
        spec.update(batch_size=batch_size, mode=mode, seed=settings["seed"], eager=settings["eager"],
                    distinct_batches=settings["distinct_batches"])
    result = run_worker(spec, threads)
    return (result["pairs"] if result["status"] == "ok" else None), result.get("error"), \
        result.get("other_load_cores"), result.get("isa")


def _pair_speedups(pairs, threads):
    return [pair["1"] / pair[str(threads)] for pair in pairs]


def _scaling_summary(group, rounds, threads):
    """The record of one --scaling group from its rounds: the median over all pairs of a pair's speed-up (its
    1-thread time over its `threads`-thread time), each round's median, and the median time per count; rounds
    whose worker failed are left out."""
    import numpy as np

    model, batch_size, mode = group
    done = [r for r in rounds if r["pairs"]]
    record = {"model": model, "batch_size": batch_size, "mode": mode, "threads": [1, threads], "rounds": rounds,
              "status": "ok" if done else "failed"}
    if not done:
        record["error"] = next((r["error"] for r in rounds if r.get("error")), "no round succeeded")
        return record
    pairs = [pair for r in done for pair in r["pairs"]]
    record.update(speedup=float(np.median(_pair_speedups(pairs, threads))), pairs=len(pairs),
                  speedup_by_round=[float(np.median(_pair_speedups(r["pairs"], threads))) for r in done],
                  seconds={key: float(np.median([pair[key] for pair in pairs])) for key in ("1", str(threads))},
                  other_load_cores=max(r["other_load_cores"] or 0.0 for r in done))
    return record


def run_scaling(settings, log=print):
    """cnnnumba's training step or inference on 1 thread and on settings["threads"], and NumPy's sgemm likewise
    (what the machine itself gives): each round is one worker process per group that times `steps` pairs, one run
    on each count back to back, in turn first. The speed-up is the median over all pairs of a pair's ratio.
    Returns the JSON document."""
    threads = settings["threads"]
    document = _header(settings, {"status": "not measured"})
    groups = [("sgemm", settings["peak_size"], None)] + [(model, batch_size, mode) for model in settings["models"]
                                                         for batch_size in settings["batch_sizes"]
                                                         for mode in settings["modes"]]
    rounds = {group: [] for group in groups}
    for round_index in range(settings["rounds"]):
        for group in groups:
            pairs, error, load, observed = _scaling_run(group, threads, settings)
            rounds[group].append({"round": round_index + 1, "pairs": pairs, "error": error,
                                  "other_load_cores": load, "isa": observed})
            where = f"{group[0]} " + (f"{group[1]}x{group[1]}" if group[0] == "sgemm" else
                                      f"batch {group[1]} {group[2]}")
            if pairs:
                medians = [statistics.median(pair[key] for pair in pairs) * 1e3 for key in ("1", str(threads))]
                log(f"  {where}, round {round_index + 1}: 1 thread {medians[0]:.2f} ms, {threads} threads "
                    f"{medians[1]:.2f} ms, speed-up {statistics.median(_pair_speedups(pairs, threads)):.2f} "
                    f"(median of {len(pairs)} pairs)")
            else:
                log(f"  {where}, round {round_index + 1}: FAILED ({error})")
    document["scaling"] = [_scaling_summary(group, rounds[group], threads) for group in groups]
    return isa.summarize(document)


def run_profile(settings, log=print):
    """One cnnnumba training step broken into its graph nodes (captured, the default) or its ops (eager);
    returns the JSON document."""
    peak = measure_peak(settings, log)
    peak_gflops = peak.get("gflops")
    document = _header(settings, peak)
    spec = {"kind": "profile", "model": settings["models"][0], "batch_size": settings["batch_sizes"][0],
            "image_size": settings.get("image_size"), "steps": settings["steps"], "warmup": settings["warmup"],
            "seed": settings["seed"], "eager": settings["eager"], "isa": settings.get("isa", "native")}
    result = run_worker(spec, settings["threads"])
    if result["status"] == "ok":
        for op in result["ops"]:
            for phase in ("forward", "backward"):
                milliseconds, flops = op[f"{phase}_ms"], op[f"{phase}_flops"]
                gflops = flops / milliseconds / 1e6 if flops and milliseconds else None
                op[f"{phase}_gflops"] = gflops
                op[f"{phase}_percent_of_peak"] = 100.0 * gflops / peak_gflops if gflops and peak_gflops else None
    document["profile"] = result
    return isa.summarize(document)
