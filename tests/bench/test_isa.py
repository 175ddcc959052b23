"""`cnnnumba bench --isa`: the environment per tier, the refusal of a tier above the host's, the report of what the
workers ran, and one tiny real run restricted to AVX2."""
import json
import subprocess
import sys

import pytest

from cnnnumba.bench import isa, report
from cnnnumba.cli import main


def test_every_restricted_tier_sets_every_library_s_variable():
    expected = {
        "avx512": ("skylake-avx512", "avx512", "AVX512_CORE", "AVX512", "SkylakeX"),
        "avx2": ("haswell", "avx2", "AVX2", "AVX2", "Haswell"),
        "sse": ("nehalem", "default", "SSE41", "SSE4_2", "Nehalem"),
    }
    for tier, (cpu, aten, onednn, mkl, openblas) in expected.items():
        settings = isa.environment(tier)
        assert settings["NUMBA_CPU_NAME"] == cpu and settings["NUMBA_CPU_FEATURES"] == ""
        assert (settings["ATEN_CPU_CAPABILITY"], settings["ONEDNN_MAX_CPU_ISA"]) == (aten, onednn)
        assert (settings["MKL_ENABLE_INSTRUCTIONS"], settings["OPENBLAS_CORETYPE"]) == (mkl, openblas)
        assert settings["NPY_ENABLE_CPU_FEATURES"] is None  # NumPy refuses it beside NPY_DISABLE_CPU_FEATURES
    assert isa.environment("native") == {}


def test_numpy_loses_exactly_its_dispatched_targets_above_the_tier(monkeypatch):
    # NumPy 2.x names (X86_V3/X86_V4) and 1.x names (AVX512_SKX, FMA3...) alike
    monkeypatch.setattr(isa, "_numpy_cpu_lists", lambda: (
        ["SSE", "SSE42", "X86_V2"], ["SSE41", "AVX", "F16C", "FMA3", "AVX2", "X86_V3", "X86_V4", "AVX512F",
                                     "AVX512_SKX", "AVX512_SPR"], {}))
    assert isa.numpy_disabled_features("avx512") == ([], [])
    assert isa.numpy_disabled_features("avx2") == (["X86_V4", "AVX512F", "AVX512_SKX", "AVX512_SPR"], [])
    assert isa.numpy_disabled_features("sse")[0] == ["AVX", "F16C", "FMA3", "AVX2", "X86_V3", "X86_V4", "AVX512F",
                                                     "AVX512_SKX", "AVX512_SPR"]
    assert isa.environment("avx2")["NPY_DISABLE_CPU_FEATURES"] == "X86_V4 AVX512F AVX512_SKX AVX512_SPR"


def test_a_numpy_built_above_the_tier_is_reported_not_disabled(monkeypatch):
    """Naming a baseline feature in NPY_DISABLE_CPU_FEATURES makes NumPy's import fail: leave it, and say so."""
    monkeypatch.setattr(isa, "_numpy_cpu_lists", lambda: (["X86_V2", "X86_V3"], ["X86_V4"], {}))
    monkeypatch.setattr(isa, "host", lambda: ("avx512", "sapphirerapids"))
    assert isa.numpy_disabled_features("sse") == (["X86_V4"], ["X86_V3"])
    document = {"isa": isa.describe_request("sse", environ={})}
    assert document["isa"]["numpy_baseline_above_tier"] == ["X86_V3"]
    assert "X86_V3" not in document["isa"]["environment"]["NPY_DISABLE_CPU_FEATURES"]
    assert any("NumPy cannot be restricted" in line for line in isa.report_lines(document))


def test_the_restriction_replaces_the_user_s_values_and_says_so(monkeypatch):
    monkeypatch.setattr(isa, "host", lambda: ("avx512", "sapphirerapids"))
    base = {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "1048576", "NPY_ENABLE_CPU_FEATURES": "AVX2",
            "PATH": "/bin"}
    worker = isa.apply("sse", dict(base))
    assert worker["OPENBLAS_CORETYPE"] == "Nehalem" and "NPY_ENABLE_CPU_FEATURES" not in worker
    assert worker["OPENBLAS_L2_SIZE"] == "1048576" and worker["PATH"] == "/bin"
    assert isa.apply("native", dict(base)) == base  # native leaves the user's environment as it is
    described = isa.describe_request("sse", environ=base)
    assert described["replaced"] == {"OPENBLAS_CORETYPE": "Haswell", "NPY_ENABLE_CPU_FEATURES": "AVX2"}


@pytest.mark.parametrize("host, tier, message", [
    (("avx2", "znver3"), "avx512", "--isa avx512: this CPU (znver3) has no AVX-512; available: avx2, sse, native"),
    (("avx", "sandybridge"), "avx2", "--isa avx2: this CPU (sandybridge) has no AVX2 with FMA; available: sse, "
                                     "native"),
    (("neon", "apple-m1"), "sse", "--isa sse: this CPU (apple-m1) is not x86 (neon); available: native"),
])
def test_a_tier_above_the_host_s_is_refused(monkeypatch, capsys, host, tier, message):
    monkeypatch.setattr(isa, "host", lambda: host)
    with pytest.raises(ValueError, match="available"):
        isa.check(tier)
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--isa", tier])
    assert exit_info.value.code == 2
    assert f"argument {message}" in capsys.readouterr().err


def test_a_tier_the_host_has_is_accepted(monkeypatch):
    monkeypatch.setattr(isa, "host", lambda: ("avx2", "znver3"))
    isa.check("avx2")
    isa.check("sse")
    assert isa.available("avx512") == ["avx512", "avx2", "sse", "native"]


def _observed(numba_tier, torch_capability, onednn, openblas="Haswell", numpy=("X86_V3",)):
    return {"numba": {"cpu": "haswell", "tier": numba_tier}, "numpy": list(numpy),
            "openblas": {"libopenblas.so": openblas}, "torch": torch_capability, "onednn": onednn,
            "mkl": "Intel(R) Advanced Vector Extensions 2 (Intel(R) AVX2)"}


def test_the_report_names_the_tier_and_a_library_that_ignored_it(monkeypatch):
    monkeypatch.setattr(isa, "host", lambda: ("avx512", "sapphirerapids"))
    document = {"isa": isa.describe_request("avx2", environ={}), "sgemm_peak": {"isa": _observed("avx2", None, None)},
                "records": [{"isa_observed": _observed("avx2", "AVX2", "Intel AVX2")},
                            {"isa_observed": _observed("avx2", "AVX512", "Intel AVX-512 with AVX512BW")}]}
    info = isa.summarize(document)["isa"]
    assert info["requested"] == "avx2" and info["restricted"] is True and info["host_tier"] == "avx512"
    assert info["numba_target"] == {"cpu": "haswell", "tier": "avx2"}
    assert info["observed"]["torch"] == ["AVX2", "AVX512"]
    assert set(info["ignored_by"]) == {"torch", "onednn"}
    assert {"numba", "numpy", "openblas", "mkl"} <= set(info["honoured_by"])
    lines = isa.report_lines(document)
    assert lines[0].startswith("instruction set: avx2 RESTRICTED (host sapphirerapids, avx512)")
    assert any(line.startswith("WARNING: PyTorch did not honour --isa avx2 (it ran AVX2, AVX512)") for line in lines)
    assert isa.title(document) == "ISA avx2 (restricted on a avx512 host)"


def test_a_numba_target_or_numpy_target_above_the_tier_counts_as_ignored(monkeypatch):
    monkeypatch.setattr(isa, "host", lambda: ("avx512", "sapphirerapids"))
    document = {"isa": isa.describe_request("sse", environ={}),
                "profile": {"isa": _observed("avx2", None, None, openblas="Nehalem", numpy=["X86_V3"])}}
    info = isa.summarize(document)["isa"]
    # MKL's AVX2 line names an ISA wider than SSE too
    assert set(info["ignored_by"]) == {"numba", "numpy", "mkl"} and info["honoured_by"] == ["openblas"]


def test_native_is_reported_as_not_restricted():
    document = {"isa": isa.describe_request("native"), "records": [], "sgemm_peak": {}}
    info = isa.summarize(document)["isa"]
    assert info["restricted"] is False and "ignored_by" not in info
    assert "native" in isa.report_lines(document)[0] and "not restricted" in isa.report_lines(document)[0]


def test_every_worker_gets_the_restriction_in_comparison_profile_and_scaling(monkeypatch):
    """--isa reaches every worker the harness starts: the sgemm peak, each framework's run, the profile and each
    --scaling round."""
    from cnnnumba.bench import harness

    seen, real_run = [], subprocess.run

    def fake_run(command, *args, **kwargs):
        if "cnnnumba.bench.worker" not in command:  # platform's own calls
            return real_run(command, *args, **kwargs)
        seen.append(kwargs["env"])
        return subprocess.CompletedProcess(command, 1, "", "boom")

    monkeypatch.setattr(harness.subprocess, "run", fake_run)
    monkeypatch.setattr(isa, "host", lambda: ("avx512", "sapphirerapids"))
    settings = {"models": ["lenet5"], "batch_sizes": [4], "modes": ["train"], "steps": 1, "warmup": 0, "rounds": 1,
                "threads": 1, "eager": False, "no_torch": True, "torch_compile": False, "seed": 0,
                "distinct_batches": 1, "peak_size": 8, "peak_repeats": 1, "isa": "avx2"}
    harness.run_comparison(settings, log=lambda line: None)
    harness.run_profile(settings, log=lambda line: None)
    document = harness.run_scaling(dict(settings, threads=2), log=lambda line: None)
    assert len(seen) == 2 + 2 + 2  # peak and cnnnumba; peak and profile; sgemm and lenet5 scaling
    assert all(env["NUMBA_CPU_NAME"] == "haswell" and env["ATEN_CPU_CAPABILITY"] == "avx2" for env in seen)
    assert document["isa"]["requested"] == "avx2"
    assert report.scaling_table(document).startswith("instruction set: avx2 RESTRICTED")


@pytest.mark.slow
def test_a_tiny_run_restricted_to_avx2_compiles_for_avx2_and_says_so(tmp_path):
    """The worker's own Numba target is AVX2 (not the parent's plan), and the JSON and the table say so. A new
    target compiles every kernel the model needs again, hence the smallest model and one step."""
    tier, _ = isa.host()
    if "avx2" not in isa.available(tier):
        pytest.skip(f"this CPU ({tier}) has no AVX2")
    path = tmp_path / "bench.json"
    finished = subprocess.run(
        [sys.executable, "-m", "cnnnumba", "bench", "--isa", "avx2", "--models", "lenet5", "--batch-size", "8",
         "--modes", "train", "--steps", "1", "--warmup", "0", "--threads", "1", "--no-torch", "--json", str(path)],
        capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stderr
    assert "instruction set: avx2 RESTRICTED" in finished.stdout
    document = json.loads(path.read_text())
    info = document["isa"]
    assert info["requested"] == "avx2" and info["restricted"] is True and info["host_tier"] == tier
    assert info["numba_target"] == {"cpu": "haswell", "tier": "avx2"}
    record = document["records"][0]
    assert record["status"] == "ok"
    assert record["isa_observed"]["numba"] == {"cpu": "haswell", "tier": "avx2"}
    assert document["sgemm_peak"]["isa"]["numba"]["tier"] == "avx2"
    assert "numba" in info["honoured_by"] and not info["ignored_by"]
    if document["sgemm_peak"]["isa"]["openblas"]:
        assert "openblas" in info["honoured_by"] and info["observed"]["openblas"] == ["Haswell"]
