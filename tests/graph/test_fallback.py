"""Ops the lowering has no node for run in Fallback nodes; what their forward saves for backward must survive the
planner reusing the buffers it was read from."""
import numpy as np

import cnnnumba as cn
from cnnnumba import functional as F
from cnnnumba import nn, optim


def _model():
    cn.manual_seed(0)
    # LeakyReLU and GELU save their input; after Flatten the activations are 2-D, planned buffers reused once read
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.LeakyReLU(0.1), nn.Linear(16, 16), nn.GELU(),
                         nn.Linear(16, 16), nn.LeakyReLU(0.2), nn.Linear(16, 3)).double()


def test_fallback_ops_that_save_their_input_train_as_in_eager():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 2, 2))
    y = rng.integers(0, 3, 5)
    eager, captured = _model(), _model()
    eager_optimizer = optim.SGD(eager.parameters(), lr=0.1, momentum=0.9)
    step = cn.graph.capture(captured, F.cross_entropy, optim.SGD(captured.parameters(), lr=0.1, momentum=0.9))
    for _ in range(3):
        eager_optimizer.zero_grad()
        loss = F.cross_entropy(eager(cn.Tensor(x)), y)
        loss.backward()
        eager_optimizer.step()
        captured_loss = step(x, y)
        assert abs(captured_loss - float(loss.data)) < 1e-12
    assert step.describe().count("fallback[") == 6  # 3 nodes, listed forward and backward
    for (name, a), (_, b) in zip(eager.state_dict().items(), captured.state_dict().items()):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12, err_msg=name)
