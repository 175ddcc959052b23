"""The comparison and the profile as text tables, a JSON file and a bar chart."""
import json
import os
import tempfile

from .harness import framework_label
from .isa import report_lines, title


def _number(value, digits=1):
    return "-" if value is None else f"{value:,.{digits}f}"


def _render(headers, rows, right_from):
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = []
    for row in [headers] + rows:
        cells = [str(cell).rjust(width) if index >= right_from else str(cell).ljust(width)
                 for index, (cell, width) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def comparison_table(document):
    """One row per record: time per step, throughput, GFLOP/s, % of peak, ratio, first step and memory."""
    headers = ["model", "batch", "mode", "framework", "ms/step", "img/s", "GFLOP/s", "% peak", "cn/this",
               "first ms", "mem MiB", "check", "others"]
    rows = []
    for record in document["records"]:
        head = [record["model"], record["batch_size"], record["mode"], framework_label(record)]
        if record["status"] != "ok":
            rows.append(head + ["failed: " + record["error"][:60]] + [""] * 8)
            continue
        ratio = record.get("cnnnumba_time_over_this", record.get("time_over_best_torch"))
        check = {True: "ok", False: "DIFFERS", None: ""}[record.get("agrees_with_cnnnumba")]
        rows.append(head + [_number(record["ms_per_step"], 2), _number(record["images_per_second"], 0),
                            _number(record["gflops"]), _number(record["percent_of_peak"]),
                            "-" if ratio is None else f"{ratio:.2f}", _number(record["first_step_ms"], 0),
                            _number(record["peak_memory_mib"], 0), check,
                            _number(record.get("other_load_cores"), 2)])
    peak = document["sgemm_peak"]
    lines = [_render(headers, rows, 4), "",
             f"{document['threads']} threads; sgemm peak {_number(peak.get('gflops'))} GFLOP/s (NumPy float32 "
             f"matmul {peak.get('size')}²); median of {document['settings']['steps']} timed steps after the "
             f"first step and {document['settings']['warmup']} untimed warm-up step(s)"
             + (f", from the round of {document['settings']['rounds']} with the least outside load"
                if document['settings'].get('rounds', 1) > 1 else "")
             + "; first ms = the first step (compilation, cache loading) apart.",
             "cn/this = cnnnumba's time / this row's time (below 1: cnnnumba is faster), taken round by round "
             "(the runs of one round follow each other within seconds) and the median of the rounds; on cnnnumba's "
             "row, over the fastest PyTorch variant of each round;",
             "mem = peak RSS growth of the run's process; check = first loss (train) or logits (inference) agree "
             "with cnnnumba's;",
             "others = cores that other processes kept busy meanwhile (0 on a quiet machine).",
             f"FLOPs counted: {document['flops_counted']}."]
    if document.get("torch_missing"):
        lines.append("torch is missing: cnnnumba ran alone.")
    return "\n".join(report_lines(document) + lines)


def scaling_table(document):
    """One row per model × batch × mode: time on 1 thread and on more, and the speed-up; NumPy's sgemm below."""
    threads = document["threads"]
    headers = ["model", "batch", "mode", "1 thread ms", f"{threads} threads ms", "speed-up", "rounds",
               "others"]
    rows, sgemm = [], None
    for record in document["scaling"]:
        if record["model"] == "sgemm":
            sgemm = record
            continue
        head = [record["model"], record["batch_size"], record["mode"]]
        if record["status"] != "ok":
            rows.append(head + ["failed: " + record["error"][:60]] + [""] * 4)
            continue
        by_round = record["speedup_by_round"]
        milliseconds = [_number(record["seconds"][key] * 1e3, 2) for key in ("1", str(threads))]
        rows.append(head + milliseconds + [f"{record['speedup']:.2f}", f"{min(by_round):.2f}-{max(by_round):.2f}",
                                           _number(record["other_load_cores"], 2)])
    lines = report_lines(document) + [_render(headers, rows, 3), ""]
    if sgemm is not None and sgemm["status"] == "ok":
        size, by_round = sgemm["batch_size"], sgemm["speedup_by_round"]
        gflops = {key: 2 * size ** 3 / seconds / 1e9 for key, seconds in sgemm["seconds"].items()}
        lines.append(f"NumPy float32 sgemm ({size}²) measured the same way: {gflops['1']:.1f} GFLOP/s on 1 thread, "
                     f"{gflops[str(threads)]:.1f} on {threads}: speed-up {sgemm['speedup']:.2f} "
                     f"({min(by_round):.2f}-{max(by_round):.2f}), what the machine gives a tuned BLAS.")
    elif sgemm is not None:
        lines.append(f"NumPy float32 sgemm: failed ({sgemm['error']})")
    settings = document["settings"]
    lines += [f"speed-up = the median over all pairs (a pair: one step on 1 thread and one on {threads}, back to "
              f"back, in turn first; {settings['steps']} pairs a round) of the 1-thread time over the "
              f"{threads}-thread time; rounds = the range of each round's median over {settings['rounds']} "
              f"round(s), one process each, started on {threads} threads; ms = medians over all pairs;",
              "others = the most cores other processes kept busy during a round."]
    return "\n".join(lines)


def profile_table(document):
    """One row per op (eager) or graph node (captured) and phase of the profiled training step, then the optimizer,
    the rest and the total."""
    profile = document["profile"]
    if profile["status"] != "ok":
        return "\n".join(report_lines(document) + [f"profile failed: {profile['error']}"])
    captured = profile.get("path") == "captured"
    step = profile["step_ms"]
    headers = ["phase", "node" if captured else "layer", "op" if not captured else "value",
               "input shape (NHWC)" if captured else "input shape", "ms", "GFLOP/s", "% peak", "% step"]
    rows, accounted = [], profile["optimizer_ms"]
    ops = profile["ops"]
    for phase, ordered in (("forward", ops), ("backward", list(reversed(ops)))):
        for op in ordered:
            milliseconds = op[f"{phase}_ms"]
            if milliseconds is None:
                continue
            accounted += milliseconds
            label = (op["node"], op["value"]) if captured else (op["module"], op["op"])
            rows.append([phase, *label, "x".join(str(d) for d in op["input_shape"]),
                         _number(milliseconds, 2), _number(op[f"{phase}_gflops"]),
                         _number(op[f"{phase}_percent_of_peak"]), _number(100.0 * milliseconds / step)])
    update = "fused update" if captured else "optimizer.step"
    rows.append(["update", "", update, "", _number(profile["optimizer_ms"], 2), "-", "-",
                 _number(100.0 * profile["optimizer_ms"] / step)])
    # captured: the median over steps of each step's own time outside the nodes (medians of the parts need not
    # add up to the median step); eager: what the op and optimizer medians leave of the median step
    rest = profile["executor_ms"] if captured else step - accounted
    other = "executor (outside nodes)" if captured else "autograd walk, Python"
    rows.append(["other", "", other, "", _number(rest, 2), "-", "-", _number(100.0 * rest / step)])
    rows.append(["total", "", "training step", "", _number(step, 2), "-", "-", "100.0"])
    for phase in ("forward", "backward"):
        total = sum(op[f"{phase}_ms"] or 0.0 for op in ops)
        flops = sum(op[f"{phase}_flops"] for op in ops)
        rows.append([f"all {phase}", "", "", "", _number(total, 2),
                     _number(flops / total / 1e6 if total else None), "", _number(100.0 * total / step)])
    path = (f"one captured training step (graph replay; median of {profile['steps']} timed steps, each node's "
            f"median; steps without timers: {_number(profile.get('untimed_step_ms'), 2)} ms)" if captured else
            f"one eager training step (median of {profile['steps']} steps)")
    heading = (f"profile: {profile['model']}, batch {profile['batch_size']}, {path}, {document['threads']} "
               f"threads, sgemm peak {_number(document['sgemm_peak'].get('gflops'))} GFLOP/s; other processes kept "
               f"{_number(profile.get('other_load_cores'), 2)} cores busy meanwhile")
    return "\n".join(report_lines(document) + [heading, _render(headers, rows, 4)])


def write_json(document, path):
    """Write the document atomically: a temporary file in the same folder, then a rename over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".bench-", suffix=".json")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(document, stream, indent=2)
            stream.write("\n")
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def plot(document, path):
    """A bar chart of images per second, one group of bars per model × batch × mode, one bar per framework."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in document["records"] if r["status"] == "ok"]
    groups = list(dict.fromkeys((r["model"], r["batch_size"], r["mode"]) for r in records))
    labels = list(dict.fromkeys(framework_label(r) for r in records))
    width = 0.8 / max(len(labels), 1)
    figure, axes = plt.subplots(figsize=(max(6.0, 1.6 * len(groups) + 2), 4.5))
    for index, label in enumerate(labels):
        values = [next((r["images_per_second"] for r in records
                        if (r["model"], r["batch_size"], r["mode"]) == group and framework_label(r) == label), 0.0)
                  for group in groups]
        axes.bar([g + (index - (len(labels) - 1) / 2) * width for g in range(len(groups))], values, width,
                 label=label)
    axes.set_xticks(range(len(groups)))
    axes.set_xticklabels([f"{m}\nbatch {b}\n{mode}" for m, b, mode in groups])
    axes.set_yscale("log")  # LeNet-5 and the cifar-cnn differ by orders of magnitude
    axes.set_ylabel("images / s, log scale (higher is better)")
    axes.set_title(f"cnnnumba vs PyTorch, {title(document)}, {document['threads']} threads, "
                   f"{document['machine']['cpu']}", fontsize=9)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
