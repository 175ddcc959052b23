"""The prefetch hint the streaming kernels give: compiled for this CPU, harmless anywhere, present in the IR."""
import numba
import numpy as np

from cnnnumba.kernels._runtime import jit
from cnnnumba.kernels._runtime.vector import prefetch_span


@jit
def _prefetch_then_sum(values, offset, count):
    prefetch_span(values, offset, count)
    return values.sum()


def test_a_prefetch_past_the_end_of_an_array_changes_nothing():
    values = np.arange(100, dtype=np.float32)
    for offset, count in ((0, 100), (90, 64), (100, 16), (1 << 20, 1 << 10), (0, 0)):
        assert _prefetch_then_sum(values, offset, count) == values.sum()
    assert _prefetch_then_sum(np.arange(7, dtype=np.float64), 5, 40) == 21.0


def test_the_hint_is_llvm_prefetch_in_the_compiled_code():
    # compiled here without the cache: Numba shows the IR only of what this process compiled
    @numba.njit
    def prefetch_only(values, offset, count):
        prefetch_span(values, offset, count)

    prefetch_only(np.ones(8, np.float32), 0, 8)
    assert any("@llvm.prefetch" in ir for ir in prefetch_only.inspect_llvm().values())

