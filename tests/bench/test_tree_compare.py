"""bench/compare_outputs.py and bench/compare_trees.py on tiny settings with this checkout as both trees, and the
bit comparison itself on arrays made to differ. No timing is asserted."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"


@pytest.fixture(scope="module")
def compare_outputs():
    sys.path.insert(0, str(BENCH))
    try:
        import compare_outputs
        yield compare_outputs
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def cache_root(request, tmp_path_factory):
    """Kept between test runs where pytest's cache is on, so the scripts' workers start with compiled kernels."""
    cache = getattr(request.config, "cache", None)
    return cache.mkdir("tree-compare") if cache is not None else tmp_path_factory.mktemp("tree-compare")


def _script(name, *arguments, cache_root=None):
    command = [sys.executable, str(BENCH / name), *map(str, arguments)]
    command += ["--cache-root", str(cache_root)] if cache_root else []
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


@pytest.mark.slow  # 13 s with the workers' caches warm, about a minute cold
def test_compare_outputs_finds_the_same_tree_identical(cache_root, tmp_path):
    cases = ["conv2d/model_layers[1]/float32", "pool2d/max[0]/float64", "functional/chain/float32", "models/lenet5"]
    finished = _script("compare_outputs.py", ROOT, ROOT, "--out", tmp_path, "--threads", "1", "--cases", *cases,
                       cache_root=cache_root)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    for case in cases:
        assert f"{case}: identical" in finished.stdout
    assert "4 of 4 cases identical" in finished.stdout
    outputs = np.load(tmp_path / "new.npz", allow_pickle=False)
    assert {"models/lenet5:losses", "models/lenet5:logits", "conv2d/model_layers[1]/float32:backward_weight"} \
        <= set(outputs.files)
    assert outputs["models/lenet5:losses"].shape == (3,) and np.isfinite(outputs["models/lenet5:losses"]).all()
    meta = json.loads((tmp_path / "old.json").read_text())
    assert meta["cnnnumba"] == str(ROOT / "cnnnumba" / "__init__.py") and meta["errors"] == {}


@pytest.mark.slow  # four worker processes: 6 s warm
def test_compare_trees_completes_and_pairs_the_rounds(cache_root, tmp_path):
    report = tmp_path / "runs.json"
    finished = _script("compare_trees.py", ROOT, ROOT, "--models", "lenet5", "--modes", "train", "--rounds", "2",
                       "--steps", "2", "--warmup", "0", "--batch-size", "4", "--threads", "1", "--json", report,
                       cache_root=cache_root)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "lenet5 train: old" in finished.stdout and "new/old median" in finished.stdout
    document = json.loads(report.read_text())
    assert [(run["round"], run["side"]) for run in document["runs"]] == [(1, "old"), (1, "new"), (2, "new"),
                                                                         (2, "old")]
    assert all(run["status"] == "ok" and len(run["step_ms"]) == 2 for run in document["runs"])
    summary, = document["summaries"]
    assert summary["rounds"] == 2 and len(summary["ratios"]) == 2 and summary["checks_differ_in_rounds"] == []


@pytest.mark.parametrize("script, arguments, message", [
    ("compare_trees.py", [ROOT, ROOT, "--env-old", "NUMBA_CPU_NAME"], "--env-old expects NAME=VALUE"),
    ("compare_trees.py", [ROOT, BENCH], "is not a cnnnumba checkout"),
    ("compare_outputs.py", [ROOT], "expected two trees"),
    ("compare_outputs.py", [ROOT, ROOT, "--cases", "no-such-case*"], "no case matches"),
])
def test_bad_arguments_are_refused_before_any_run(script, arguments, message):
    finished = _script(script, *arguments)
    assert finished.returncode == 2 and message in finished.stderr


def test_arrays_compare_bit_for_bit(compare_outputs):
    compare = compare_outputs.compare_arrays
    values = np.array([1.0, -2.0, np.nan], np.float32)
    assert compare(values, values.copy()) is None
    other_nan = values.copy()
    other_nan.view(np.uint32)[2] += 1  # another NaN payload
    assert compare(values, other_nan) == "1 of 3 elements differ (signed zeros or NaN payloads)"
    assert "signed zeros" in compare(np.zeros(2), np.array([0.0, -0.0]))
    assert compare(values, np.array([1.5, -2.0, np.nan], np.float32)) == "1 of 3 elements differ, max abs difference 0.5"
    assert "NaN where the other is not" in compare(values, np.array([1.0, -2.0, 3.0], np.float32))
    assert compare(np.arange(3), np.arange(3.0)) == "old is int64 (3,), new is float64 (3,)"
    assert compare(np.array([True, False]), np.array([True, True])) == "1 of 2 elements differ"


def _write_run(folder, side, arrays, errors=None):
    np.savez(folder / f"{side}.npz", **arrays)
    cases = list(dict.fromkeys(key.rpartition(":")[0] for key in arrays)) + list(errors or {})
    (folder / f"{side}.json").write_text(json.dumps({"cases": cases, "errors": errors or {}}))


def test_a_run_with_a_changed_output_or_a_raising_case_fails(compare_outputs, tmp_path):
    old = {"a:out": np.arange(4.0), "b:out": np.ones(2, np.float32), "b:extra": np.zeros(1)}
    _write_run(tmp_path, "old", old)
    _write_run(tmp_path, "new", old)
    lines = []
    assert compare_outputs.compare_runs(tmp_path, lines.append) == 0
    assert lines == ["a: identical", "b: identical", "2 of 2 cases identical"]
    _write_run(tmp_path, "new", {"a:out": np.array([0.0, 1.0, 2.5, 3.0]), "b:out": np.ones(2, np.float32)},
               errors={"c": "ValueError: boom"})
    _write_run(tmp_path, "old", {**old, "c:out": np.zeros(1)})
    lines = []
    assert compare_outputs.compare_runs(tmp_path, lines.append) == 3
    assert lines[0] == "a: DIFFERS\n    out: 1 of 4 elements differ, max abs difference 0.5"
    assert lines[1] == "b: DIFFERS\n    extra: only in old"
    assert lines[2] == "c: DIFFERS\n    raised in new: ValueError: boom"
