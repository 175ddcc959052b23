import numpy as np
import pytest

import cnnnumba as cn


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same global random state."""
    cn.manual_seed(0)
    np.random.seed(0)
    yield
