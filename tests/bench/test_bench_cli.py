"""`cnnnumba bench` end to end on tiny sizes: the JSON's structure, the profile's, torch missing, bad arguments.

No timing is asserted: the machine is shared, and the numbers only have to be present and positive.
"""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cnnnumba.cli import main
from tests.helpers import requires_torch

TINY = ["--quick", "--models", "lenet5", "--batch-size", "4", "--steps", "2", "--warmup", "0", "--threads", "1"]
LENET5_FORWARD_PER_IMAGE = 2 * (28 * 28 * 6 * 25 + 10 * 10 * 16 * 6 * 25 + 400 * 120 + 120 * 84 + 84 * 10)
LENET5_CONV1_PER_IMAGE = 2 * 28 * 28 * 6 * 25
RECORD_KEYS = {"model", "batch_size", "mode", "framework", "variant", "threads", "status", "ms_per_step", "step_ms",
               "images_per_second", "flops_per_step", "gflops", "percent_of_peak", "first_step_ms",
               "peak_memory_mib", "check", "other_load_cores"}


def _bench(arguments, hide_torch=False):
    code = "import sys\n"
    if hide_torch:
        code += "sys.modules['torch'] = None\n"
    code += "from cnnnumba.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run([sys.executable, "-c", code, "bench", *arguments], capture_output=True, text=True,
                          timeout=600)


def _check_header(document, threads):
    assert document["schema"] == "cnnnumba.bench/1"
    assert document["threads"] == threads
    assert {"cpu", "cores", "memory_gib", "platform", "load_average_at_start"} <= document["machine"].keys()
    assert {"python", "numpy", "numba", "cnnnumba", "torch"} <= document["versions"].keys()
    assert "multiply-adds count 2 FLOPs" in document["flops_counted"]
    assert document["sgemm_peak"]["status"] == "ok" and document["sgemm_peak"]["gflops"] > 0


def _check_record(record, mode):
    assert RECORD_KEYS <= record.keys(), record
    assert record["status"] == "ok" and record["model"] == "lenet5" and record["batch_size"] == 4
    assert record["threads"] == 1 and len(record["step_ms"]) == 2
    assert record["ms_per_step"] > 0 and record["first_step_ms"] > 0 and record["gflops"] > 0
    assert record["other_load_cores"] >= 0
    forward = 4 * LENET5_FORWARD_PER_IMAGE
    # training: forward, backward-input and backward-weight, except conv1's backward-input (its input needs none)
    expected = forward if mode == "inference" else 3 * forward - 4 * LENET5_CONV1_PER_IMAGE
    assert record["flops_per_step"] == expected


@pytest.mark.slow
@requires_torch
def test_quick_bench_writes_records_for_each_model_framework_and_mode(tmp_path):
    path, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    # the plot needs the [plot] extra; with .[dev] alone the rest is still checked
    plotting = importlib.util.find_spec("matplotlib") is not None
    finished = _bench(TINY + ["--json", str(path)] + (["--plot", str(plot)] if plotting else []))
    assert finished.returncode == 0, finished.stderr
    assert "sgemm peak" in finished.stdout and "ms/step" in finished.stdout
    document = json.loads(path.read_text())
    _check_header(document, threads=1)
    assert document["torch_missing"] is False
    keys = [(r["mode"], r["framework"], r["variant"]) for r in document["records"]]
    variant = document["records"][0]["variant"]
    assert variant in ("eager", "captured")
    assert keys == [(mode, framework, v) for mode in ("train", "inference")
                    for framework, v in (("cnnnumba", variant), ("torch", "nchw"), ("torch", "channels_last"))]
    for record in document["records"]:
        _check_record(record, record["mode"])
        if record["framework"] == "torch":
            # same weights, same batch: the first loss (or the logits) must agree before any time counts
            assert record["agrees_with_cnnnumba"], record
            assert record["cnnnumba_time_over_this"] > 0
        else:
            assert record["time_over_torch_nchw"] > 0
    if plotting:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_bench_without_torch_runs_cnnnumba_alone(tmp_path):
    path = tmp_path / "bench.json"
    finished = _bench(TINY + ["--modes", "inference", "--eager", "--rounds", "2", "--json", str(path)],
                      hide_torch=True)
    assert finished.returncode == 0, finished.stderr
    assert "torch is missing" in finished.stdout
    document = json.loads(path.read_text())
    assert document["torch_missing"] is True and document["versions"]["torch"] is None
    assert [(r["framework"], r["variant"]) for r in document["records"]] == [("cnnnumba", "eager")]
    record = document["records"][0]
    _check_record(record, "inference")
    assert [r["round"] for r in record["rounds"]] == [1, 2] and record["round"] in (1, 2)
    assert record["other_load_cores"] == min(r["other_load_cores"] for r in record["rounds"])


@pytest.mark.slow
def test_profile_eager_breaks_a_training_step_into_ops(tmp_path):
    path = tmp_path / "profile.json"
    finished = _bench(["--profile", "--eager", "--models", "lenet5", "--batch-size", "4", "--steps", "2",
                       "--warmup", "1", "--threads", "1", "--json", str(path)])
    assert finished.returncode == 0, finished.stderr
    assert "optimizer.step" in finished.stdout and "training step" in finished.stdout
    document = json.loads(path.read_text())
    _check_header(document, threads=1)
    profile = document["profile"]
    assert profile["status"] == "ok" and profile["model"] == "lenet5" and profile["batch_size"] == 4
    ops = profile["ops"]
    assert [(op["module"], op["op"]) for op in ops][:3] == [("0", "Conv2d"), ("1", "ReLU"), ("2", "MaxPool2d")]
    assert ops[-1]["op"] == "CrossEntropy" and ops[-1]["module"] == "(outside)"
    conv1 = ops[0]
    assert conv1["input_shape"] == [4, 1, 28, 28] and conv1["output_shape"] == [4, 6, 28, 28]
    assert conv1["forward_flops"] == 4 * LENET5_CONV1_PER_IMAGE
    assert conv1["backward_flops"] == 4 * LENET5_CONV1_PER_IMAGE  # weight gradient only: the input needs none
    assert conv1["forward_gflops"] > 0 and conv1["forward_percent_of_peak"] > 0
    for op in ops:
        assert op["forward_ms"] >= 0 and op["backward_ms"] is not None and op["backward_ms"] >= 0
    assert sum(op["forward_flops"] for op in ops) == 4 * LENET5_FORWARD_PER_IMAGE
    assert profile["step_ms"] > 0 and profile["optimizer_ms"] >= 0
    assert profile["path"] == "eager"


@pytest.mark.slow
def test_profile_breaks_the_captured_step_into_graph_nodes(tmp_path):
    path = tmp_path / "profile.json"
    finished = _bench(["--profile", "--models", "lenet5", "--batch-size", "4", "--steps", "2", "--warmup", "1",
                       "--threads", "1", "--json", str(path)])
    assert finished.returncode == 0, finished.stderr
    assert "fused update" in finished.stdout and "executor (outside nodes)" in finished.stdout
    profile = json.loads(path.read_text())["profile"]
    assert profile["status"] == "ok" and profile["path"] == "captured" and profile["batch_size"] == 4
    nodes = profile["ops"]
    # graph nodes in schedule order: the NCHW->NHWC input edge, then conv1 with its ReLU fused in
    assert [op["node"] for op in nodes][:3] == ["input", "conv+bias+relu", "maxpool"]
    assert nodes[-1]["node"] == "cross_entropy"
    conv1 = nodes[1]
    assert conv1["input_shape"] == [4, 28, 28, 1] and conv1["output_shape"] == [4, 28, 28, 6]
    assert conv1["forward_flops"] == 4 * LENET5_CONV1_PER_IMAGE
    assert conv1["backward_flops"] == 4 * LENET5_CONV1_PER_IMAGE  # weight gradient only: the input needs none
    assert nodes[0]["backward_ms"] is None  # the input needs no gradient, so its node has no backward
    assert all(op["forward_ms"] >= 0 for op in nodes)
    # the same FLOPs as the eager count: the graph runs the same convolutions and linear layers
    assert sum(op["forward_flops"] for op in nodes) == 4 * LENET5_FORWARD_PER_IMAGE
    assert profile["step_ms"] > 0 and profile["optimizer_ms"] >= 0 and profile["untimed_step_ms"] > 0
    inside = sum(op["forward_ms"] + (op["backward_ms"] or 0.0) for op in nodes) + profile["optimizer_ms"]
    assert abs(profile["step_ms"] - inside - profile["executor_ms"]) < 0.05 * profile["step_ms"]


@pytest.mark.parametrize("arguments, message", [
    (["--threads", "0"], "--threads: expected a positive integer, but got 0"),
    (["--threads", "100000"], "--threads: expected at most"),
    (["--models", "resnet101"], "invalid choice: 'resnet101'"),
    (["--batch-size", "-3"], "--batch-size: expected a positive integer, but got -3"),
    (["--steps", "many"], "--steps: expected a positive integer, but got 'many'"),
    (["--warmup", "-1"], "--warmup: expected a non-negative integer, but got -1"),
    (["--modes", "predict"], "invalid choice: 'predict'"),
    (["--rounds", "0"], "--rounds: expected a positive integer, but got 0"),
    (["--profile", "--plot", "x.png"], "--plot: the plot shows the comparison"),
    (["--scaling", "--plot", "x.png"], "--plot: the plot shows the comparison; leave it out with --scaling"),
    (["--scaling", "--profile"], "--scaling: --profile and --scaling are separate runs"),
    (["--scaling", "--threads", "1"], "--scaling: compares 1 thread with more, but --threads is 1"),
    (["--json", "/no/such/folder/out.json"], "--json: the folder of /no/such/folder/out.json does not exist"),
])
def test_bad_arguments_exit_2(capsys, arguments, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_rounds_keep_the_quietest_successful_round_whatever_its_time():
    from cnnnumba.bench.harness import _quietest

    attempts = [{"round": 1, "status": "ok", "ms_per_step": 5.0, "other_load_cores": 0.9},
                {"round": 2, "status": "ok", "ms_per_step": 9.0, "other_load_cores": 0.1},
                {"round": 3, "status": "failed", "error": "boom", "other_load_cores": 0.0}]
    chosen = _quietest(attempts)
    assert chosen["round"] == 2 and chosen["ms_per_step"] == 9.0
    assert [(r["round"], r["status"]) for r in chosen["rounds"]] == [(1, "ok"), (2, "ok"), (3, "failed")]


def test_ratios_pair_the_runs_of_each_round_and_take_the_median():
    """The VM's speed drifts between rounds: a ratio must divide times from the same round, never the quietest
    round of one framework by another round of the other."""
    from cnnnumba.bench.harness import _compare_group, _quietest

    def rounds(framework, variant, times, loads):
        return [{"round": i + 1, "status": "ok" if t else "failed", "ms_per_step": t, "other_load_cores": load,
                 "framework": framework, "variant": variant, "check": [1.0], "error": "boom"}
                for i, (t, load) in enumerate(zip(times, loads))]

    attempts = [rounds("cnnnumba", "captured", [10.0, 20.0, 30.0], [0.0, 0.5, 0.5]),
                rounds("torch", "nchw", [40.0, 40.0, 40.0], [0.5, 0.0, 0.5]),
                rounds("torch", "channels_last", [20.0, 16.0, None], [0.5, 0.5, 0.0])]
    records = [_quietest(a) for a in attempts]
    _compare_group(records, attempts)
    cnnnumba, nchw, channels_last = records
    assert nchw["cnnnumba_time_over_this_by_round"] == [0.25, 0.5, 0.75]
    assert nchw["cnnnumba_time_over_this"] == 0.5
    assert channels_last["cnnnumba_time_over_this_by_round"] == [0.5, 1.25]  # round 3 failed on its side
    assert channels_last["cnnnumba_time_over_this"] == 0.875
    # against the fastest variant of each round, only where every variant ran
    assert cnnnumba["time_over_best_torch_by_round"] == [0.5, 1.25]
    assert cnnnumba["time_over_best_torch"] == 0.875
    # the quietest rounds alone would have said 10 / 40 and 10 / 16
    assert (cnnnumba["round"], nchw["round"]) == (1, 2)


def test_flops_are_counted_after_the_first_cnnnumba_step_not_before_it(monkeypatch):
    """A FLOP trace in the parent before the workers would compile and cache the forward kernels, so the worker's
    "first step" would hide the compile time: the count must come from the cnnnumba worker, after its timing."""
    from cnnnumba.bench import harness

    events = []

    def fake_worker(spec, threads):
        events.append(spec.get("kind") if spec.get("kind") == "peak" else spec["framework"])
        if spec.get("kind") == "peak":
            return {"status": "ok", "gflops": 100.0, "size": 8}
        result = {"status": "ok", "variant": spec.get("variant") or "captured", "step_ms": [2.0], "first_step_ms": 5.0,
                  "check": [0.0], "rss_before_model_mib": 1.0, "peak_rss_mib": 2.0}
        if spec["framework"] == "cnnnumba":
            result["flops_per_image"] = {"train": 3_000_000, "inference": 1_000_000}
        return result

    monkeypatch.setattr(harness, "run_worker", fake_worker)
    monkeypatch.setattr(harness, "model_flops", lambda *args: events.append("parent trace"))
    settings = {"models": ["lenet5"], "batch_sizes": [4], "modes": ["train", "inference"], "steps": 1, "warmup": 0,
                "rounds": 1, "threads": 1, "eager": False, "no_torch": True, "torch_compile": False, "seed": 0,
                "distinct_batches": 1, "peak_size": 8, "peak_repeats": 1}
    document = harness.run_comparison(settings, log=lambda line: None)
    assert "parent trace" not in events
    assert [r["flops_per_step"] for r in document["records"]] == [4 * 3_000_000, 4 * 1_000_000]


def test_scaling_takes_the_median_over_all_pairs_of_each_pair_s_ratio(monkeypatch):
    """The speed-up divides a 1-thread time by the other count's time of the same pair (the VM's speed drifts
    between processes and within one), and takes the median over the pairs of every round; a failed round is left
    out."""
    from cnnnumba.bench import harness, report

    specs = []
    pairs_by_round = {1: [(90.0, 50.0), (80.0, 50.0), (70.0, 50.0)], 2: [(60.0, 40.0), (60.0, 30.0), (66.0, 30.0)],
                      3: None}

    def fake_worker(spec, threads):
        specs.append((spec, threads))
        round_index = 1 + sum(1 for seen, _ in specs[:-1] if seen["model"] == spec["model"])
        if spec["model"] == "sgemm":
            return {"status": "ok", "pairs": [{"1": 2.0, "2": 1.0}] * 2, "other_load_cores": 0.0}
        if pairs_by_round[round_index] is None:
            return {"status": "failed", "error": "boom", "other_load_cores": 0.1}
        return {"status": "ok", "pairs": [{"1": a / 1e3, "2": b / 1e3} for a, b in pairs_by_round[round_index]],
                "other_load_cores": 0.05 * round_index}

    monkeypatch.setattr(harness, "run_worker", fake_worker)
    settings = {"models": ["cifar-cnn"], "batch_sizes": [64], "modes": ["train"], "steps": 3, "warmup": 0,
                "rounds": 3, "threads": 2, "eager": False, "seed": 0, "distinct_batches": 1, "peak_size": 100,
                "peak_repeats": 1}
    document = harness.run_scaling(settings, log=lambda line: None)
    assert all(threads == 2 and spec["kind"] == "scaling" and spec["threads"] == 2 for spec, threads in specs)
    assert [spec["model"] for spec, _ in specs] == ["sgemm", "cifar-cnn"] * 3
    assert specs[0][0]["size"] == 100 and specs[1][0]["batch_size"] == 64 and specs[1][0]["steps"] == 3
    sgemm, cifar = document["scaling"]
    assert sgemm["model"] == "sgemm" and sgemm["speedup"] == 2.0 and sgemm["speedup_by_round"] == [2.0, 2.0, 2.0]
    assert cifar["status"] == "ok" and cifar["threads"] == [1, 2] and cifar["pairs"] == 6
    # pair ratios 1.8, 1.6, 1.4 | 1.5, 2.0, 2.2: round medians 1.6 and 2.0, overall median (1.6 + 1.8) / 2
    assert cifar["speedup_by_round"] == pytest.approx([1.6, 2.0])
    assert cifar["speedup"] == pytest.approx(1.7)
    assert cifar["seconds"] == pytest.approx({"1": 0.068, "2": 0.045})
    assert cifar["other_load_cores"] == pytest.approx(0.1)
    table = report.scaling_table(document)
    assert "cifar-cnn" in table and "1.70" in table and "1.60-2.00" in table
    assert "speed-up 2.00" in table  # sgemm


def test_a_scaling_worker_times_each_pair_on_both_counts_in_turn_first(monkeypatch):
    from cnnnumba.bench import worker
    from cnnnumba.kernels._runtime import blas

    get_threads, set_threads = blas.openblas_thread_setters("numpy")
    if set_threads is None:
        pytest.skip("NumPy's BLAS thread count cannot be set here")
    counts, before = [], get_threads()

    def recording_setter(count):
        counts.append(count)
        set_threads(count)

    monkeypatch.setattr(blas, "openblas_thread_setters", lambda package: (get_threads, recording_setter))
    try:
        result = worker.measure_scaling({"model": "sgemm", "size": 64, "threads": 3, "steps": 4, "warmup": 1})
    finally:
        set_threads(before)
    assert len(result["pairs"]) == 4
    assert all(pair.keys() == {"1", "3"} and min(pair.values()) > 0 for pair in result["pairs"])
    # the warm-up on both counts, then each pair in turn first, then the process's own count again
    assert counts == [3, 1] + [1, 3, 3, 1, 1, 3, 3, 1] + [3]


@pytest.mark.slow
def test_scaling_reports_the_speed_up_of_a_real_run(tmp_path):
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one thread: nothing to scale to")
    path = tmp_path / "scaling.json"
    finished = _bench(["--scaling", "--models", "lenet5", "--batch-size", "4", "--modes", "train", "--steps", "2",
                       "--warmup", "0", "--rounds", "1", "--threads", "2", "--json", str(path)])
    assert finished.returncode == 0, finished.stderr
    assert "speed-up" in finished.stdout and "NumPy float32 sgemm" in finished.stdout
    document = json.loads(path.read_text())
    assert document["threads"] == 2
    sgemm, lenet = document["scaling"]
    assert lenet["model"] == "lenet5" and lenet["status"] == "ok" and lenet["threads"] == [1, 2]
    assert lenet["seconds"]["1"] > 0 and lenet["seconds"]["2"] > 0
    assert lenet["pairs"] == 2 and len(lenet["rounds"][0]["pairs"]) == 2
    ratios = sorted(pair["1"] / pair["2"] for pair in lenet["rounds"][0]["pairs"])
    assert lenet["speedup"] == pytest.approx(sum(ratios) / 2)
    assert sgemm["status"] == "ok" and sgemm["speedup"] > 0


def test_a_scaling_worker_sets_numba_and_both_blas_libraries_to_each_step_s_count(monkeypatch):
    """A 1-thread step is 1 thread everywhere: the BLAS calls inside a step (im2col GEMMs, large linear layers)
    follow the count too, as in a process started on it."""
    import cnnnumba
    from cnnnumba.bench import runners, worker
    from cnnnumba.kernels._runtime import blas

    seen = {"numba": [], "numpy": [], "scipy": [], "steps": []}
    monkeypatch.setattr(cnnnumba, "set_num_threads", seen["numba"].append)
    monkeypatch.setattr(blas, "openblas_thread_setters", lambda package: (None, seen[package].append))
    monkeypatch.setattr(runners, "build_model", lambda name, seed, image_size=None: None)
    monkeypatch.setattr(runners, "make_batches", lambda name, batch, distinct, seed, image_size=None: [(1, 2)])

    def step(images, labels):
        seen["steps"].append(seen["numba"][-1])
        assert seen["numpy"][-1] == seen["scipy"][-1] == seen["numba"][-1]

    monkeypatch.setattr(runners, "cnnnumba_step", lambda model, mode, eager: (step, "captured"))
    spec = {"model": "cifar-cnn", "batch_size": 4, "mode": "train", "seed": 0, "eager": False,
            "distinct_batches": 1, "threads": 2, "steps": 2, "warmup": 0}
    result = worker.measure_scaling(spec)
    assert len(result["pairs"]) == 2
    assert seen["steps"] == [2, 1] + [1, 2, 2, 1]
    assert seen["numba"][-1] == seen["numpy"][-1] == seen["scipy"][-1] == 2


def test_bench_node_scaling_lists_every_node_on_both_counts():
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one thread: nothing to scale to")
    script = Path(__file__).resolve().parents[2] / "bench" / "node_scaling.py"
    finished = subprocess.run([sys.executable, str(script), "--model", "small-cnn", "--batch-size", "4", "--threads",
                               "2", "--rounds", "2"], capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    lines = finished.stdout.splitlines()
    assert any(line.split()[:2] == ["forward", "conv"] for line in lines)
    assert any(line.split()[:2] == ["backward", "conv"] for line in lines)
    untimed = next(line for line in lines if line.startswith("untimed_step_ms")).split()
    assert float(untimed[1]) > 0 and float(untimed[2]) > 0
    assert lines[-1].startswith("lost ms by node kind: ")


def test_the_imagenet_models_default_to_their_own_batch_sizes_per_mode():
    from cnnnumba.bench.command import settings_from
    from cnnnumba.cli import build_parser

    parser = build_parser()
    settings = settings_from(parser.parse_args(["bench", "--models", "resnet18", "mobilenet_v2", "--image-size",
                                                "64"]), parser)
    assert settings["image_size"] == 64
    assert settings["batch_sizes_by_mode"] == {"train": [16, 32], "inference": [1, 16]}
    mixed = settings_from(parser.parse_args(["bench", "--models", "resnet18", "lenet5"]), parser)
    assert mixed["batch_sizes_by_mode"] is None and mixed["batch_sizes"] == [64, 256]
    given = settings_from(parser.parse_args(["bench", "--models", "resnet18", "--batch-size", "8"]), parser)
    assert given["batch_sizes_by_mode"] is None and given["batch_sizes"] == [8]


@pytest.mark.slow
@requires_torch
def test_resnet18_and_mobilenet_v2_run_against_their_pytorch_twins(tmp_path):
    # 64×64 and batch 4: at 32×32 and batch 2 the last batch norms see two values per channel, and float32 training
    # is then too ill-conditioned for the first losses to agree (PyTorch NCHW and channels_last differ by 5%)
    path = tmp_path / "bench.json"
    finished = _bench(["--models", "resnet18", "mobilenet_v2", "--image-size", "64", "--batch-size", "4",
                       "--steps", "1", "--warmup", "0", "--threads", "1", "--json", str(path)])
    assert finished.returncode == 0, finished.stderr
    records = json.loads(path.read_text())["records"]
    assert {(r["model"], r["mode"]) for r in records} == {(m, mode) for m in ("resnet18", "mobilenet_v2")
                                                          for mode in ("train", "inference")}
    for record in records:
        assert record["status"] == "ok" and record["flops_per_step"] > 0, record
        if record["framework"] == "torch":
            assert record["agrees_with_cnnnumba"], record
