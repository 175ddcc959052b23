"""Fixtures of the conv kernel tests (the shared helpers are in common.py)."""
import pytest

from cnnnumba.kernels import conv2d as kernels
from tests.kernels.conv2d.common import select_module


@pytest.fixture
def plan_constant(monkeypatch):
    """set(module, name, value): change a constant the planners read for one test. Cached plans made before, and
    those made under the change, are dropped (budget-dependent plans are keyed by the budget, the rest are not)."""
    def set_constant(module, name, value):
        monkeypatch.setattr(module, name, value)
        select_module._cached_plan.cache_clear()

    yield set_constant
    select_module._cached_plan.cache_clear()


@pytest.fixture
def small_reduction_blocks(plan_constant):
    """Reduction blocks of 8 entries in the direct and 1x1 tiles: wide layers then accumulate block after block
    in out."""
    from cnnnumba.kernels.conv2d import direct, pointwise
    plan_constant(direct, "REDUCTION_BLOCK", 8)
    plan_constant(pointwise, "REDUCTION_BLOCK", 8)

