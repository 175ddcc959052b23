"""`Adam` and `AdamW` with PyTorch's update rules (bias corrections, amsgrad, coupled or decoupled weight decay)."""
import numpy as np

from ..kernels import optim as kernels
from .optimizer import PARALLEL_MIN_SIZE, Optimizer

_EMPTY = {np.dtype(np.float32): np.empty(0, np.float32), np.dtype(np.float64): np.empty(0, np.float64)}


class Adam(Optimizer):
    """Per parameter and step t: m = lerp(m, g, 1 - beta1); v = beta2 * v + (1 - beta2) * g²;
    p -= lr / (1 - beta1^t) * m / (sqrt(v_or_max_v) / sqrt(1 - beta2^t) + eps).

    weight_decay adds weight_decay * p to g (Adam) or, with decoupled_weight_decay, first scales p by
    1 - lr * weight_decay (AdamW).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *,
                 maximize=False, decoupled_weight_decay=False):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)

    def _check_hyperparameters(self, group):
        if not 0.0 <= group["lr"]:
            raise ValueError(f"Invalid learning rate: {group['lr']}")
        if not 0.0 <= group["eps"]:
            raise ValueError(f"Invalid epsilon value: {group['eps']}")
        betas = group["betas"]
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair of floats, but got {betas!r}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= group["weight_decay"]:
            raise ValueError(f"Invalid weight_decay value: {group['weight_decay']}")

    def _update(self, param, grad, owner, state, group):
        if "step" not in state:
            state["step"] = np.zeros((), dtype=np.float32)  # a float32 count, as PyTorch keeps it
        exp_avg, _ = self._state_buffer(state, "exp_avg", owner)
        exp_avg_sq, _ = self._state_buffer(state, "exp_avg_sq", owner)
        max_exp_avg_sq = self._state_buffer(state, "max_exp_avg_sq", owner)[0] if group["amsgrad"] \
            else _EMPTY[owner.dtype]
        state["step"] += 1
        self._run_update(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, float(state["step"]), group)

    def flat_update_state(self, group, params):
        # one step count for the whole group: parameters stepped apart (steps differ or missing) cannot be fused
        steps = {float(self.state[p]["step"]) if "step" in self.state[p] else None for p in params}
        if not self._uses_update_rule_of(Adam) or len(steps) != 1 or None in steps:
            return None
        return ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if group["amsgrad"] else [])

    def update_flat(self, group, params, param, grad, states):
        for owner in params:
            self.state[owner]["step"] += 1
        self._run_update(param, grad, states["exp_avg"], states["exp_avg_sq"],
                         states.get("max_exp_avg_sq", _EMPTY[param.dtype]), float(self.state[params[0]]["step"]), group)

    @staticmethod
    def _run_update(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, group):
        scalar = param.dtype.type
        lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
        beta1, beta2 = (float(b) for b in group["betas"])
        # the step-size scalars in double precision, exactly as torch.optim.Adam computes them
        step_size = lr / (1 - beta1 ** step)
        bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
        decoupled = bool(group["decoupled_weight_decay"])
        decay_factor = 1 - lr * weight_decay if decoupled else 1.0
        coupled_decay = 0.0 if decoupled else weight_decay
        kernel = kernels.adam_update_parallel if param.size >= PARALLEL_MIN_SIZE else kernels.adam_update
        kernel(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, scalar(beta1), scalar(1 - beta1), scalar(beta2),
               scalar(1 - beta2), scalar(eps), scalar(coupled_decay), scalar(decay_factor), scalar(step_size),
               scalar(bias_correction2_sqrt), bool(group["amsgrad"]), bool(group["maximize"]))


class AdamW(Adam):
    """Adam with decoupled weight decay (default 1e-2): p *= 1 - lr * weight_decay before the Adam step."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         decoupled_weight_decay=True)
