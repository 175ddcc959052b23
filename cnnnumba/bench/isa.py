"""`cnnnumba bench --isa`: the environment that restricts every worker process, and every library in it, to one
instruction-set tier; the refusal of a tier the host lacks; and what a worker saw of the restriction it got.

A restricted tier is a stand-in for a real CPU of that tier (the same instructions, not the same caches or clocks),
so every report names the tier and says whether it was restricted and whether each library honoured it.
"""
import ctypes
import os
import sys
import tempfile

TIERS = ("native", "avx512", "avx2", "sse")
# the x86 tiers of kernels._runtime.machine, narrowest first ("avx": 256-bit without FMA, which no --isa names)
_RANK = {"sse": 0, "avx": 1, "avx2": 2, "avx512": 3}
_TIER_NAMES = {"avx512": "AVX-512", "avx2": "AVX2 with FMA", "sse": "SSE4.2"}

# variable: {tier: value}. Each library reads its variable once, when it loads, so it is set in the worker's
# environment before the worker starts; --isa native sets none of them and leaves the user's values.
VARIABLES = {
    # Numba compiles cnnnumba's kernels for this CPU (its register tiles follow kernels._runtime.machine)
    "NUMBA_CPU_NAME": {"avx512": "skylake-avx512", "avx2": "haswell", "sse": "nehalem"},
    # empty: the named CPU's own features, not the host's (which would bring AVX-512 back)
    "NUMBA_CPU_FEATURES": {"avx512": "", "avx2": "", "sse": ""},
    # PyTorch's own ATen kernels (elementwise, reductions, pooling) pick their dispatch level from this
    "ATEN_CPU_CAPABILITY": {"avx512": "avx512", "avx2": "avx2", "sse": "default"},
    # oneDNN (PyTorch's convolutions) caps the ISA its JIT generates code for
    "ONEDNN_MAX_CPU_ISA": {"avx512": "AVX512_CORE", "avx2": "AVX2", "sse": "SSE41"},
    # MKL (PyTorch's linear layers and matmuls) caps the code path it dispatches to
    "MKL_ENABLE_INSTRUCTIONS": {"avx512": "AVX512", "avx2": "AVX2", "sse": "SSE4_2"},
    # OpenBLAS (NumPy's sgemm reference, cnnnumba's im2col GEMMs and np.dot via SciPy) uses this core's kernels
    "OPENBLAS_CORETYPE": {"avx512": "SkylakeX", "avx2": "Haswell", "sse": "Nehalem"},
}
# NumPy's SIMD loops: its dispatched targets above the tier are switched off (the names depend on NumPy's build,
# see numpy_disabled_features); NPY_ENABLE_CPU_FEATURES is dropped, as NumPy refuses both at once
NUMPY_VARIABLE = "NPY_DISABLE_CPU_FEATURES"
_DROPPED = ("NPY_ENABLE_CPU_FEATURES",)

# PyTorch's report of its ATen dispatch level, per tier
_TORCH_CAPABILITY = {"avx512": "AVX512", "avx2": "AVX2", "sse": "DEFAULT"}
# words in oneDNN's and MKL's own description of the ISA they run that name an ISA wider than the tier
_WIDER_WORDS = {"sse": ("AVX",), "avx2": ("AVX-512", "AVX512", "AVX10", "AMX"),
                "avx512": ("AMX", "AVX10", "DL Boost", "BF16", "bfloat16", "INT8")}


def _numpy_feature_rank(name):
    """The tier rank of a NumPy CPU-feature name (NumPy 1.x's AVX512_SKX style and 2.x's X86_V4 style)."""
    if name.startswith("AVX512") or name == "X86_V4":
        return _RANK["avx512"]
    if name in ("FMA3", "FMA4", "XOP", "AVX2", "X86_V3"):
        return _RANK["avx2"]
    if name in ("AVX", "F16C"):
        return _RANK["avx"]
    return _RANK["sse"]


def _numpy_cpu_lists():
    """(baseline, dispatched, {feature: enabled now}) of this NumPy build and process."""
    try:
        from numpy._core import _multiarray_umath as umath
    except ImportError:  # NumPy 1.x
        from numpy.core import _multiarray_umath as umath
    return list(umath.__cpu_baseline__), list(umath.__cpu_dispatch__), dict(umath.__cpu_features__)


def numpy_disabled_features(tier):
    """(names to disable, baseline names above the tier). NumPy can only switch off dispatched targets (naming a
    baseline one is an error at import): a build whose baseline is above the tier stays above it."""
    baseline, dispatched, _ = _numpy_cpu_lists()
    disabled = [name for name in dispatched if _numpy_feature_rank(name) > _RANK[tier]]
    return disabled, [name for name in baseline if _numpy_feature_rank(name) > _RANK[tier]]


def environment(tier):
    """{variable: value} a worker restricted to `tier` gets over the parent's environment (None: removed); empty
    for "native"."""
    if tier == "native":
        return {}
    settings = {variable: values[tier] for variable, values in VARIABLES.items()}
    disabled, _ = numpy_disabled_features(tier)
    if disabled:
        settings[NUMPY_VARIABLE] = " ".join(disabled)
    settings.update(dict.fromkeys(_DROPPED))
    return settings


def apply(tier, base):
    """`base` (a copy of an environment) with `tier`'s restriction applied."""
    for variable, value in environment(tier).items():
        if value is None:
            base.pop(variable, None)
        else:
            base[variable] = value
    return base


def host():
    """(tier, LLVM CPU name) of the CPU this process runs on, whatever NUMBA_CPU_NAME says."""
    import llvmlite.binding as llvm

    from ..kernels._runtime.machine import _tier

    cpu = llvm.get_host_cpu_name()
    return _tier(cpu, llvm.get_host_cpu_features().flatten())[0], cpu


def available(host_tier):
    """The --isa choices a host of `host_tier` can run, widest first; "native" always."""
    if host_tier not in _RANK:
        return ["native"]
    return [tier for tier in TIERS[1:] if _RANK[tier] <= _RANK[host_tier]] + ["native"]


def check(tier):
    """Raise ValueError when this host cannot run `tier`, naming what it can."""
    host_tier, cpu = host()
    if tier in available(host_tier):
        return
    lacks = (f"has no {_TIER_NAMES[tier]}" if host_tier in _RANK else
             f"is not x86 ({host_tier})")
    raise ValueError(f"--isa {tier}: this CPU ({cpu}) {lacks}; available: {', '.join(available(host_tier))}")


def describe_request(tier, environ=None):
    """The "isa" entry of the JSON document, before any worker ran: what was asked and what the workers get."""
    environ = os.environ if environ is None else environ
    host_tier, cpu = host()
    document = {"requested": tier, "restricted": tier != "native", "host_tier": host_tier, "host_cpu": cpu}
    if tier == "native":
        from ..kernels._runtime.machine import target_machine

        machine = target_machine()
        document["numba_target"] = {"cpu": machine.cpu, "tier": machine.tier}
        return document
    from ..kernels._runtime.machine import _tier

    settings = environment(tier)
    cpu_name = settings["NUMBA_CPU_NAME"]
    document["numba_target"] = {"cpu": cpu_name, "tier": _tier(cpu_name, settings["NUMBA_CPU_FEATURES"])[0]}
    document["environment"] = settings
    document["replaced"] = {variable: environ[variable] for variable, value in settings.items()
                            if variable in environ and environ[variable] != value}
    _, stuck = numpy_disabled_features(tier)
    if stuck:
        document["numpy_baseline_above_tier"] = stuck
    return document


# ---- inside a worker: what each library actually runs -------------------------------------------------------------

def _openblas_cores():
    """{library file: core name} of every OpenBLAS this process has loaded (Linux: from /proc/self/maps)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.rsplit("/", 1)[-1]})
    except OSError:
        return {}
    cores = {}
    for path in paths:
        try:
            library = ctypes.CDLL(path)  # already loaded: only a handle
        except OSError:
            continue
        for name in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename", "openblas_get_corename64_",
                     "openblas_get_corename"):
            function = getattr(library, name, None)
            if function is not None:
                function.argtypes, function.restype = [], ctypes.c_char_p
                cores[os.path.basename(path)] = function().decode()
                break
    return cores


def _captured_stdout(function):
    """What `function` writes to file descriptor 1 (oneDNN and MKL print their verbose lines there from C)."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        try:
            function()
        finally:
            ctypes.CDLL(None).fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
        sink.seek(0)
        return sink.read().decode(errors="replace")


def _torch_isas():
    """PyTorch's ATen level, and oneDNN's and MKL's own words for the ISA they run, from one small convolution and
    one matmul run with their verbose output on (oneDNN prints its ISA line once, the first time verbose is on)."""
    import torch

    seen = {"torch": torch.backends.cpu.get_cpu_capability()}

    def convolution():
        with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
            torch.nn.functional.conv2d(torch.ones(2, 16, 8, 8), torch.ones(16, 16, 3, 3))

    def matmul():
        with torch.backends.mkl.verbose(torch.backends.mkl.VERBOSE_ON):
            torch.ones(32, 32) @ torch.ones(32, 32)

    # oneDNN: "onednn_verbose,v1,info,cpu,isa:Intel AVX2"; MKL: "MKL_VERBOSE oneMKL 2024.0 ... for Intel(R) 64
    # architecture Intel(R) Advanced Vector Extensions 2 (Intel(R) AVX2) enabled processors, Lnx 2.60GHz ..."
    for library, run, marker, end in (("onednn", convolution, ",isa:", "\n"),
                                      ("mkl", matmul, " architecture ", " enabled processors, ")):
        line = next((line for line in _captured_stdout(run).splitlines() if marker in line), None)
        seen[library] = None if line is None else line.split(marker, 1)[1].split(end)[0].split(", Lnx ")[0].strip()
    return seen


def observe(with_torch):
    """What this process's libraries run: Numba's target, NumPy's enabled SIMD targets, each OpenBLAS's core and,
    with_torch, PyTorch's, oneDNN's and MKL's. A library whose probe fails is reported with the error."""
    from ..kernels._runtime.machine import target_machine

    def numpy_enabled():
        _, dispatched, enabled = _numpy_cpu_lists()
        return [name for name in dispatched if enabled.get(name)]

    seen = {}
    probes = [("numba", lambda: {"cpu": target_machine().cpu, "tier": target_machine().tier}),
              ("numpy", numpy_enabled),
              ("openblas", _openblas_cores)]
    for library, probe in probes:
        try:
            seen[library] = probe()
        except Exception as error:  # a probe must not fail the measurement it reports on
            seen[library] = f"probe failed: {type(error).__name__}: {error}"
    if with_torch:
        try:
            seen.update(_torch_isas())
        except Exception as error:
            seen["torch"] = f"probe failed: {type(error).__name__}: {error}"
    return seen


# ---- in the parent: did the restriction take ---------------------------------------------------------------------

def _shown(library, value):
    if library == "numba" and isinstance(value, dict):
        return f"{value['cpu']} ({value['tier']})"
    if library == "numpy" and isinstance(value, list):
        return "SIMD " + (" ".join(value) or "baseline only")
    if library == "openblas" and isinstance(value, dict):
        return " ".join(sorted(set(value.values()))) or "not loaded"
    return str(value)


def _took(tier, library, value):
    """Whether `library`'s observed `value` stays within `tier` (None: nothing to judge)."""
    if value is None or (isinstance(value, str) and value.startswith("probe failed")):
        return None
    if library == "numba":
        return value["tier"] == tier
    if library == "numpy":
        return all(_numpy_feature_rank(name) <= _RANK[tier] for name in value)
    if library == "openblas":
        return all(core.lower() == VARIABLES["OPENBLAS_CORETYPE"][tier].lower() for core in value.values()) \
            if value else None
    if library == "torch":
        return value == _TORCH_CAPABILITY[tier]
    return not any(word in value for word in _WIDER_WORDS[tier])


def _observations(document):
    """Every worker's observation in a bench document: the sgemm peak, the records, the profile, the scaling
    rounds."""
    found = [document.get("sgemm_peak", {}).get("isa"), document.get("profile", {}).get("isa")]
    found += [record.get("isa_observed") for record in document.get("records", [])]
    found += [entry.get("isa") for record in document.get("scaling", []) for entry in record.get("rounds", [])]
    return [seen for seen in found if seen]


LIBRARIES = {"numba": "Numba", "numpy": "NumPy", "openblas": "OpenBLAS", "torch": "PyTorch", "onednn": "oneDNN",
             "mkl": "MKL"}


def summarize(document):
    """Fill document["isa"] with what the workers saw per library ("observed"), and for a restricted tier the
    libraries that stayed within it ("honoured") and those that did not ("ignored_by", with what they ran)."""
    info = document["isa"]
    observed = {}
    for seen in _observations(document):
        for library, value in seen.items():
            if value is None:  # the library printed no ISA line: nothing to show or judge
                continue
            shown = _shown(library, value)
            entry = observed.setdefault(library, {"values": [], "took": []})
            if shown not in entry["values"]:
                entry["values"].append(shown)
            entry["took"].append(_took(info["requested"], library, value) if info["restricted"] else None)
    info["observed"] = {library: entry["values"] for library, entry in observed.items()}
    if info["restricted"]:
        info["honoured_by"] = [library for library, entry in observed.items()
                               if entry["took"] and all(took is True for took in entry["took"])]
        info["ignored_by"] = {library: entry["values"] for library, entry in observed.items()
                              if any(took is False for took in entry["took"])}
    return document


def report_lines(document):
    """The lines every printed report starts with: the tier, restricted or native, and what the workers ran."""
    info = document.get("isa")
    if not info:
        return []
    host_part = f"host {info['host_cpu']}, {info['host_tier']}"
    if info["restricted"]:
        lines = [f"instruction set: {info['requested']} RESTRICTED ({host_part}): a stand-in for a CPU whose "
                 f"widest is {_TIER_NAMES[info['requested']]}; Numba compiles for {info['numba_target']['cpu']}"]
    else:
        lines = [f"instruction set: native ({host_part}), not restricted; Numba compiles for "
                 f"{info['numba_target']['cpu']} ({info['numba_target']['tier']})"]
    observed = info.get("observed") or {}
    if observed:
        lines.append("workers ran: " + "; ".join(f"{LIBRARIES.get(library, library)} {', '.join(values)}"
                                                  for library, values in observed.items()))
    for library, values in (info.get("ignored_by") or {}).items():
        lines.append(f"WARNING: {LIBRARIES.get(library, library)} did not honour --isa {info['requested']} "
                     f"(it ran {', '.join(values)}): its figures are not {info['requested']}'s")
    if info.get("numpy_baseline_above_tier"):
        lines.append(f"WARNING: NumPy's build requires {' '.join(info['numpy_baseline_above_tier'])} as its "
                     f"baseline, above {info['requested']}: NumPy cannot be restricted to it")
    for variable, value in (info.get("replaced") or {}).items():
        lines.append(f"note: {variable}={value!r} from the environment was replaced for the workers")
    return lines


def title(document):
    """The tier as a plot title names it."""
    info = document.get("isa")
    if not info:
        return "native ISA"
    if info["restricted"]:
        return f"ISA {info['requested']} (restricted on a {info['host_tier']} host)"
    return f"native ISA ({info['host_tier']})"
