"""Fixtures of the conv kernel tests (the shared helpers are in common.py)."""
import pytest

from cnnnumba.kernels import conv2d


@pytest.fixture
def plan_constant(monkeypatch):
    """set(module, name, value): change a constant the planners read for one test. Cached plans made before, and
    those made under the change, are dropped (budget-dependent plans are keyed by the budget, the rest are not)."""
    def set_constant(module, name, value):
        monkeypatch.setattr(module, name, value)
        conv2d.clear_plans()

    yield set_constant
    conv2d.clear_plans()


@pytest.fixture
def small_reduction_blocks(plan_constant):
    """Reduction blocks of 8 entries in the direct and 1x1 tiles (pointwise.py reads direct.py's): wide layers then accumulate block after block
    in out."""
    from cnnnumba.kernels.conv2d import direct
    plan_constant(direct, "REDUCTION_BLOCK", 8)

