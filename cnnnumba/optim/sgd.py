"""`SGD`: stochastic gradient descent with momentum, dampening, Nesterov and weight decay (PyTorch's rules)."""
import numpy as np

from ..kernels import optim as kernels
from .optimizer import PARALLEL_MIN_SIZE, Optimizer

_EMPTY = {np.dtype(np.float32): np.empty(0, np.float32), np.dtype(np.float64): np.empty(0, np.float64)}


class SGD(Optimizer):
    """Per parameter: g = grad (+ weight_decay * p); with momentum, buf = g on the first step, then
    buf = momentum * buf + (1 - dampening) * g, and g = g + momentum * buf (Nesterov) or g = buf; p -= lr * g."""

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *, maximize=False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                        maximize=maximize)
        super().__init__(params, defaults)

    def _check_hyperparameters(self, group):
        if group["lr"] < 0.0:
            raise ValueError(f"Invalid learning rate: {group['lr']}")
        if group["momentum"] < 0.0:
            raise ValueError(f"Invalid momentum value: {group['momentum']}")
        if group["weight_decay"] < 0.0:
            raise ValueError(f"Invalid weight_decay value: {group['weight_decay']}")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def _update(self, param, grad, owner, state, group):
        first_step = False
        if group["momentum"] != 0:
            buffer, first_step = self._state_buffer(state, "momentum_buffer", owner)
        else:
            buffer = _EMPTY[owner.dtype]
        self._run_update(param, grad, buffer, group, first_step)

    def flat_update_state(self, group, params):
        if not self._uses_update_rule_of(SGD):
            return None
        return ["momentum_buffer"] if group["momentum"] != 0 else []

    def update_flat(self, group, params, param, grad, states):
        self._run_update(param, grad, states.get("momentum_buffer", _EMPTY[param.dtype]), group, False)

    @staticmethod
    def _run_update(param, grad, buffer, group, first_step):
        scalar = param.dtype.type
        kernel = kernels.sgd_update_parallel if param.size >= PARALLEL_MIN_SIZE else kernels.sgd_update
        kernel(param, grad, buffer, scalar(group["lr"]), scalar(group["momentum"]), scalar(1 - group["dampening"]),
               scalar(group["weight_decay"]), bool(group["nesterov"]), bool(group["maximize"]), first_step)
