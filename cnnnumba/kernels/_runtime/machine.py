"""The CPU the kernels are compiled for, decided once: Numba's target (NUMBA_CPU_NAME / NUMBA_CPU_FEATURES when set,
else the host) as an instruction-set tier with its vector width and register count, which size the register tiles
and select the convolution variants."""
import functools
from collections import namedtuple

# tier: "avx512", "avx2" (256-bit with FMA), "avx" (256-bit, no FMA), "sse" (128-bit x86), "neon" (128-bit ARM),
# "generic"; lanes: float32 lanes of a vector register; registers: vector registers the ISA names.
Machine = namedtuple("Machine", "tier cpu vector_bits lanes registers fma")

# CPU names LLVM knows, by the widest vectors and FMA they imply (used when NUMBA_CPU_FEATURES is empty).
_AVX512_CPUS = {"skylake-avx512", "cascadelake", "cooperlake", "cannonlake", "icelake-client", "icelake-server",
                "tigerlake", "rocketlake", "sapphirerapids", "emeraldrapids", "graniterapids", "graniterapids-d",
                "znver4", "znver5", "x86-64-v4", "knl", "knm", "diamondrapids"}
_AVX2_CPUS = {"haswell", "broadwell", "skylake", "znver1", "znver2", "znver3", "x86-64-v3", "alderlake",
              "raptorlake", "meteorlake", "arrowlake", "arrowlake-s", "lunarlake", "gracemont", "bdver4", "bdver3",
              "bdver2", "kabylake", "coffeelake", "cometlake"}
_AVX_CPUS = {"sandybridge", "ivybridge", "btver2", "bdver1"}


def _tier(cpu, features):
    """(tier, vector bits, registers, fma) of an LLVM CPU name and its feature string ("+avx2,-avx512f,...")."""
    enabled = {flag[1:] for flag in features.split(",") if flag.startswith("+")}
    if cpu.startswith(("aarch64", "apple", "cortex", "neoverse", "generic-arm")) or "neon" in enabled:
        return "neon", 128, 32, True
    if features:
        if "avx512f" in enabled:
            return "avx512", 512, 32, True
        if "avx2" in enabled and "fma" in enabled:
            return "avx2", 256, 16, True
        if "avx" in enabled:
            return "avx", 256, 16, "fma" in enabled
        return "sse", 128, 16, False
    if cpu in _AVX512_CPUS:
        return "avx512", 512, 32, True
    if cpu in _AVX2_CPUS:
        return "avx2", 256, 16, True
    if cpu in _AVX_CPUS:
        return "avx", 256, 16, False
    return ("sse", 128, 16, False) if cpu else ("generic", 128, 16, False)


@functools.lru_cache(maxsize=None)
def target_machine():
    """The Machine Numba compiles this process's kernels for."""
    import llvmlite.binding as llvm
    import numba

    cpu = numba.config.CPU_NAME
    if cpu:
        features = numba.config.CPU_FEATURES or ""
    else:
        cpu, features = llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()
    if cpu == "host":
        cpu, features = llvm.get_host_cpu_name(), features or llvm.get_host_cpu_features().flatten()
    tier, bits, registers, fma = _tier(cpu, features)
    return Machine(tier, cpu, bits, bits // 32, registers, fma)
