"""detect_anomaly names the first op whose forward or backward produced NaN/Inf; fit(detect_anomaly=True)."""
import threading

import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import functional as F
from cnnnumba import nn, optim, train
from cnnnumba.autograd import anomaly
from cnnnumba.autograd import AnomalyError, Function, detect_anomaly, is_anomaly_enabled, set_detect_anomaly
from cnnnumba.data import ArrayDataset, DataLoader

# the injected faults make NumPy warn (log of a negative, division by zero) on their way to the checks under test
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


class BrokenBackward(Function):
    """An injected fault: the identity whose backward returns NaN where the input is negative."""

    def forward(self, x):
        self.negative = x < 0
        return x.copy()

    def backward(self, grad):
        return (np.where(self.negative, np.nan, grad).astype(grad.dtype),)


class BrokenModule(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.linear = nn.Linear(2 * 6 * 6, 3)

    def forward(self, x):
        return self.linear(F.flatten(BrokenBackward.apply(self.conv(x))))


def _tensor(values, requires_grad=True):
    return cn.Tensor(np.asarray(values, dtype=np.float64), requires_grad=requires_grad)


def test_forward_nan_names_the_first_op_and_the_calling_line():
    x = _tensor([[-1.0, 2.0]])
    with detect_anomaly(), pytest.raises(AnomalyError, match=r"the forward of Log produced 1 NaN values in its "
                                                             r"output of shape \(1, 2\) \(its inputs were all finite"
                                                             r"\); the op was called at .*test_anomaly.py:\d+") as info:
        F.relu(x.log() * 2.0)  # Log is first; Mul and ReLU would carry its NaN on
    assert (info.value.op, info.value.phase) == ("Log", "forward")


def test_forward_inf_from_a_division_by_zero():
    with detect_anomaly(), pytest.raises(AnomalyError, match="the forward of Div produced 1 Inf values"):
        _tensor([1.0, 2.0]) / _tensor([0.0, 1.0])


def test_non_finite_input_data_is_reported_as_such():
    x = _tensor(np.full((1, 1, 4, 4), np.nan))
    with detect_anomaly(), pytest.raises(AnomalyError, match="forward of MaxPool2d.*its input 0 already held NaN"):
        F.max_pool2d(x, 2)


def test_backward_nan_names_the_op_whose_backward_produced_it():
    x = _tensor([0.0, 4.0])
    with detect_anomaly():
        y = (x ** 0.5).sum()  # forward is finite; d sqrt(x)/dx is infinite at 0
        with pytest.raises(AnomalyError, match=r"the backward of Power produced 1 Inf values in the gradient of its "
                                               r"input 0 \(shape \(2,\)\); the gradient it received was finite; "
                                               r"the op was called at .*test_anomaly.py") as info:
            y.backward()
    assert info.value.phase == "backward"
    assert x.grad is None


def test_without_detect_anomaly_nan_flows_silently():
    x = _tensor([-1.0, 0.0])
    y = (x.log() + (x ** 0.5)).sum()
    y.backward()
    assert np.isnan(y.item()) and not np.all(np.isfinite(x.grad))


def test_nesting_restores_the_previous_state_and_check_nan_false_only_records():
    assert not is_anomaly_enabled()
    with detect_anomaly():
        with detect_anomaly(check_nan=False):
            assert is_anomaly_enabled()
            _tensor([-1.0]).log()  # not checked
        with pytest.raises(AnomalyError):
            _tensor([-1.0]).log()
    assert not is_anomaly_enabled()
    set_detect_anomaly(True)
    try:
        with pytest.raises(AnomalyError):
            _tensor([-1.0]).log()
    finally:
        set_detect_anomaly(False)
    _tensor([-1.0]).log()
    assert anomaly.active_threads == 0  # off everywhere: ops skip the per-thread lookup again
    with pytest.raises(TypeError, match="detect_anomaly expected check_nan to be a bool, but got str"):
        with detect_anomaly(check_nan="yes"):
            pass
    with pytest.raises(TypeError, match="set_detect_anomaly expected a bool, but got int"):
        set_detect_anomaly(1)


def test_anomaly_mode_is_per_thread():
    seen = []

    def other_thread():
        seen.append(is_anomaly_enabled())
        seen.append(float(_tensor([-1.0]).log().item()))

    with detect_anomaly():
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
    assert seen[0] is False and np.isnan(seen[1])


def _broken_setup(images):
    cn.manual_seed(0)
    model = BrokenModule()
    optimizer = optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(ArrayDataset(images, np.zeros(len(images), np.int64)), batch_size=2)
    return model, optimizer, loader


def test_fit_with_detect_anomaly_stops_at_a_broken_backward_before_any_update(tmp_path):
    images = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    model, optimizer, loader = _broken_setup(images)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    path = tmp_path / "never.ckpt"
    with pytest.raises(AnomalyError, match="the backward of BrokenBackward produced .* NaN values .* called at "
                                           ".*test_anomaly.py:\\d+ in forward"):
        train.fit(model, optimizer, loader, 1, checkpoint_path=path, progress=False, log=None,
                  detect_anomaly=True)
    assert not path.exists()
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


def test_without_detect_anomaly_a_broken_backward_surfaces_only_later_as_a_nan_loss():
    images = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    model, optimizer, loader = _broken_setup(images)
    with pytest.raises(train.NonFiniteLossError, match="the training loss became nan at epoch 1, step 2"):
        train.fit(model, optimizer, loader, 1, progress=False, log=None, eager=True)
    assert not np.all(np.isfinite(model.conv.weight.data))  # step 1 already wrote the NaN into the weights


def test_fit_with_detect_anomaly_names_the_layer_that_overflows():
    images = np.ones((4, 1, 8, 8), np.float32)
    model, optimizer, loader = _broken_setup(images)
    model.conv.weight.data[...] = np.float32(3e38)  # finite weights whose products overflow float32
    with pytest.raises(AnomalyError, match="the forward of Conv2d produced .*Inf values .*inputs were all finite"):
        train.fit(model, optimizer, loader, 1, progress=False, log=None, detect_anomaly=True)


def test_fit_rejects_a_non_bool_detect_anomaly():
    model, optimizer, loader = _broken_setup(np.ones((2, 1, 8, 8), np.float32))
    with pytest.raises(TypeError, match="fit expected detect_anomaly to be a bool, but got str"):
        train.fit(model, optimizer, loader, 1, progress=False, log=None, detect_anomaly="on")
