"""One fused optimizer update over all parameters: each parameter group's parameters, gradients and optimizer
state live in flat arenas (the model's and the optimizer's own arrays become views of them), so one kernel call
updates a whole group."""
import numpy as np

from ..kernels import optim as kernels
from ..optim.adam import Adam, AdamW
from ..optim.optimizer import PARALLEL_MIN_SIZE
from ..optim.sgd import SGD


def _arena_views(arrays, dtype):
    """Copy `arrays` into one new flat arena; returns (arena, views shaped like the arrays)."""
    total = sum(a.size for a in arrays)
    arena = np.empty(total, dtype=dtype)
    views, start = [], 0
    for array in arrays:
        view = arena[start:start + array.size].reshape(array.shape)
        view[...] = array
        views.append(view)
        start += array.size
    return arena, views


class FusedUpdate:
    """SGD, Adam or AdamW over flat per-group arenas; `bind` re-homes parameters, gradients and state.

    Other optimizers (or groups mixing dtypes) fall back to `optimizer.step()` on the gradient views, which is
    correct for any optimizer, just not fused.
    """

    def __init__(self, optimizer, params_with_grad):
        self.optimizer = optimizer
        self.state_ref = optimizer.state
        self.groups = []  # (group dict, params, param arena, grad arena, {state name: arena})
        self.grad_of = {}
        self.homes = []  # (param, its data view) to notice a parameter whose array was replaced
        used = {id(p) for p in params_with_grad}
        # exact classes only: a subclass may change the update rule
        self.fused = type(optimizer) in (SGD, Adam, AdamW)
        self.empty = {np.dtype(np.float32): np.empty(0, np.float32), np.dtype(np.float64): np.empty(0, np.float64)}
        for group in optimizer.param_groups:
            params = [p for p in group["params"] if id(p) in used]
            if not params:
                continue
            dtypes = {p.dtype for p in params}
            if len(dtypes) != 1:
                self.fused = False
            dtype = params[0].dtype
            param_arena, param_views = _arena_views([p.data for p in params], dtype)
            for param, view in zip(params, param_views):
                param.data = view
                self.homes.append((param, view))
            grad_arena, grad_views = _arena_views([np.zeros(p.shape, dtype) for p in params], dtype)
            for param, view in zip(params, grad_views):
                self.grad_of[id(param)] = view
            states = {}
            if self.fused:
                states = self._home_state(group, params, dtype)
            self.groups.append((group, params, param_arena, grad_arena, states))
        for param in params_with_grad:
            if id(param) not in self.grad_of:  # a parameter no optimizer group updates still gets a gradient
                self.grad_of[id(param)] = np.zeros(param.shape, param.dtype)
        self.params = list(params_with_grad)
        self.attach_gradients()

    def covers(self, params):
        """Whether this binding holds exactly these parameters (another input shape of the same model)."""
        return {id(p) for p in params} == {id(p) for p in self.params}

    def attach_gradients(self):
        """Point each parameter's .grad at its view of the gradient arena, where the graph writes it."""
        for param in self.params:
            param.grad = self.grad_of[id(param)]

    def _home_state(self, group, params, dtype):
        names = ["momentum_buffer"] if isinstance(self.optimizer, SGD) else ["exp_avg", "exp_avg_sq"]
        if isinstance(self.optimizer, SGD) and group["momentum"] == 0:
            names = []
        if isinstance(self.optimizer, Adam) and group["amsgrad"]:
            names.append("max_exp_avg_sq")
        states = {}
        for name in names:
            current = [self.optimizer.state[p].get(name) for p in params]
            if any(c is None for c in current):  # the recording step made every buffer; missing means not fusable
                self.fused = False
                return {}
            arena, views = _arena_views(current, dtype)
            for param, view in zip(params, views):
                self.optimizer.state[param][name] = view
            states[name] = arena
        if isinstance(self.optimizer, Adam):
            steps = {float(self.optimizer.state[p].get("step", -1)) for p in params}
            if len(steps) != 1 or -1 in steps:
                self.fused = False
        return states

    def still_bound(self):
        """False when a parameter's array or the optimizer's state was replaced since binding (then re-record)."""
        if self.optimizer.state is not self.state_ref:
            return False
        return all(param.data is view for param, view in self.homes)

    def step(self):
        if not self.fused:
            self.optimizer.step()
            return
        for group, params, param_arena, grad_arena, states in self.groups:
            scalar = param_arena.dtype.type
            parallel = param_arena.size >= PARALLEL_MIN_SIZE
            if isinstance(self.optimizer, SGD):
                momentum = group["momentum"]
                buffer = states.get("momentum_buffer", self.empty[param_arena.dtype])
                kernel = kernels.sgd_update_parallel if parallel else kernels.sgd_update
                kernel(param_arena, grad_arena, buffer, scalar(group["lr"]), scalar(momentum),
                       scalar(1 - group["dampening"]), scalar(group["weight_decay"]), bool(group["nesterov"]),
                       bool(group["maximize"]), False)
            else:
                self._adam_step(group, params, param_arena, grad_arena, states, scalar, parallel)

    def _adam_step(self, group, params, param_arena, grad_arena, states, scalar, parallel):
        lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
        beta1, beta2 = (float(b) for b in group["betas"])
        for param in params:
            self.optimizer.state[param]["step"] += 1
        step = float(self.optimizer.state[params[0]]["step"])
        # the step-size scalars in double precision, exactly as the eager Adam computes them
        step_size = lr / (1 - beta1 ** step)
        bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
        decoupled = bool(group["decoupled_weight_decay"])
        decay_factor = 1 - lr * weight_decay if decoupled else 1.0
        coupled_decay = 0.0 if decoupled else weight_decay
        amsgrad = bool(group["amsgrad"])
        max_exp_avg_sq = states["max_exp_avg_sq"] if amsgrad else self.empty[param_arena.dtype]
        kernel = kernels.adam_update_parallel if parallel else kernels.adam_update
        kernel(param_arena, grad_arena, states["exp_avg"], states["exp_avg_sq"], max_exp_avg_sq, scalar(beta1),
               scalar(1 - beta1), scalar(beta2), scalar(1 - beta2), scalar(eps), scalar(coupled_decay),
               scalar(decay_factor), scalar(step_size), scalar(bias_correction2_sqrt), amsgrad,
               bool(group["maximize"]))
