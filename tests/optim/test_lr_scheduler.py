"""StepLR, CosineAnnealingLR and OneCycleLR against torch.optim.lr_scheduler, state_dict resumption, validation."""
import copy

import numpy as np
import pytest

from cnnnumba import nn, optim
from cnnnumba.optim import lr_scheduler
from tests.helpers import requires_torch, torch

SCHEDULERS = {
    "step": (lambda o: o.SGD, {"lr": 0.1}, lambda s, o: s.StepLR(o, step_size=3)),
    "step_gamma": (lambda o: o.Adam, {"lr": 0.1}, lambda s, o: s.StepLR(o, step_size=2, gamma=0.5)),
    "cosine": (lambda o: o.SGD, {"lr": 0.1}, lambda s, o: s.CosineAnnealingLR(o, T_max=5)),
    "cosine_eta_min_restart": (lambda o: o.SGD, {"lr": 0.3}, lambda s, o: s.CosineAnnealingLR(o, 4, eta_min=0.01)),
    "onecycle_sgd": (lambda o: o.SGD, {"lr": 0.1, "momentum": 0.9},
                     lambda s, o: s.OneCycleLR(o, max_lr=0.5, total_steps=20)),
    "onecycle_adam_linear": (lambda o: o.Adam, {"lr": 0.1},
                             lambda s, o: s.OneCycleLR(o, max_lr=[0.5, 0.2], epochs=4, steps_per_epoch=5,
                                                       anneal_strategy="linear", pct_start=0.25)),
    "onecycle_three_phase": (lambda o: o.AdamW, {"lr": 0.1},
                             lambda s, o: s.OneCycleLR(o, max_lr=0.5, total_steps=20, three_phase=True,
                                                       div_factor=10.0, final_div_factor=100.0)),
    "onecycle_no_momentum": (lambda o: o.SGD, {"lr": 0.1},
                             lambda s, o: s.OneCycleLR(o, max_lr=0.5, total_steps=20, cycle_momentum=False)),
}


def _groups(params):
    return [{"params": params[:1]}, {"params": params[1:]}]


def _cn_setup(name):
    optimizer_class, options, make_scheduler = SCHEDULERS[name]
    params = [nn.Parameter(np.ones(2)), nn.Parameter(np.ones(3))]
    optimizer = optimizer_class(optim)(_groups(params), **options)
    return optimizer, make_scheduler(lr_scheduler, optimizer)


def _trace(optimizer, scheduler, steps):
    """Learning rates and momenta seen by each optimizer step."""
    trace = []
    for _ in range(steps):
        group = optimizer.param_groups[-1]
        trace.append((scheduler.get_last_lr(), group.get("momentum"), group.get("betas")))
        optimizer.step()
        scheduler.step()
    return trace


@requires_torch
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_matches_torch(name):
    optimizer_class, options, make_scheduler = SCHEDULERS[name]
    torch_params = [torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))]
    torch_optimizer = optimizer_class(torch.optim)(_groups(torch_params), **options)
    torch_scheduler = make_scheduler(torch.optim.lr_scheduler, torch_optimizer)
    expected = _trace(torch_optimizer, torch_scheduler, 19)
    got = _trace(*_cn_setup(name), 19)
    for step, (ours, theirs) in enumerate(zip(got, expected)):
        np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-13, atol=1e-15, err_msg=f"lr at step {step}")
        if theirs[1] is not None:
            np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-13, err_msg=f"momentum at step {step}")
        if theirs[2] is not None:
            np.testing.assert_allclose(ours[2], theirs[2], rtol=1e-13, err_msg=f"betas at step {step}")


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_state_dict_round_trip_continues_the_schedule(name):
    optimizer, scheduler = _cn_setup(name)
    expected = _trace(optimizer, scheduler, 15)[7:]
    optimizer, scheduler = _cn_setup(name)
    _trace(optimizer, scheduler, 7)
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    saved_scheduler = copy.deepcopy(scheduler.state_dict())
    assert "optimizer" not in saved_scheduler
    resumed_optimizer, resumed_scheduler = _cn_setup(name)  # fresh objects, as when resuming from a checkpoint
    resumed_optimizer.load_state_dict(saved_optimizer)
    resumed_scheduler.load_state_dict(saved_scheduler)
    assert _trace(resumed_optimizer, resumed_scheduler, 8) == expected


def test_step_lr_values():
    optimizer, _ = _cn_setup("step")
    scheduler = lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    lrs = [lr for lr, _, _ in _trace(optimizer, scheduler, 5)]
    assert [round(lr[0], 12) for lr in lrs] == [0.1, 0.1, 0.05, 0.05, 0.025]


def test_onecycle_stepping_past_total_steps_raises():
    optimizer = optim.SGD([nn.Parameter(np.ones(1))], lr=0.1, momentum=0.9)
    scheduler = lr_scheduler.OneCycleLR(optimizer, max_lr=1.0, total_steps=3)
    scheduler.step()
    scheduler.step()
    scheduler.step()
    with pytest.raises(ValueError, match="Tried to step 4 times. The specified number of total steps is 3"):
        scheduler.step()


def _sgd(**options):
    return optim.SGD([nn.Parameter(np.ones(1))], lr=0.1, **options)


@pytest.mark.parametrize("make,error,message", [
    (lambda: lr_scheduler.StepLR(object(), 2), TypeError, "object is not an Optimizer"),
    (lambda: lr_scheduler.OneCycleLR(_sgd(momentum=0.9), 1.0), ValueError,
     r"You must define either total_steps OR \(epochs AND steps_per_epoch\)"),
    (lambda: lr_scheduler.OneCycleLR(_sgd(momentum=0.9), 1.0, total_steps=0), ValueError,
     "Expected positive integer total_steps, but got 0"),
    (lambda: lr_scheduler.OneCycleLR(_sgd(momentum=0.9), 1.0, epochs=-1, steps_per_epoch=2), ValueError,
     "Expected positive integer epochs, but got -1"),
    (lambda: lr_scheduler.OneCycleLR(_sgd(momentum=0.9), 1.0, total_steps=5, pct_start=1.5), ValueError,
     "Expected float between 0 and 1 pct_start, but got 1.5"),
    (lambda: lr_scheduler.OneCycleLR(_sgd(momentum=0.9), 1.0, total_steps=5, anneal_strategy="exp"), ValueError,
     "anneal_strategy must be one of 'cos' or 'linear', instead got exp"),
    (lambda: lr_scheduler.OneCycleLR(_sgd(momentum=0.9), [1.0, 2.0], total_steps=5), ValueError,
     "max_lr must have the same length as optimizer.param_groups"),
    (lambda: lr_scheduler.StepLR(_sgd(), 2, last_epoch=3), KeyError, "param 'initial_lr' is not specified"),
])
def test_bad_arguments(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_optimizer_and_scheduler_state_survive_a_checkpoint_file(tmp_path):
    import cnnnumba as cn

    optimizer, scheduler = _cn_setup("onecycle_adam_linear")
    expected = _trace(optimizer, scheduler, 12)[5:]
    optimizer, scheduler = _cn_setup("onecycle_adam_linear")
    _trace(optimizer, scheduler, 5)
    cn.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp_path / "state.npz")
    saved = cn.load(tmp_path / "state.npz")
    resumed_optimizer, resumed_scheduler = _cn_setup("onecycle_adam_linear")
    resumed_optimizer.load_state_dict(saved["optimizer"])
    resumed_scheduler.load_state_dict(saved["scheduler"])
    assert _trace(resumed_optimizer, resumed_scheduler, 7) == expected
