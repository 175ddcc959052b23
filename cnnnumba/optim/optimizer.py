"""`Optimizer`: parameter groups, per-parameter state, zero_grad and a state_dict in PyTorch's shape."""
import warnings
from collections import defaultdict

import numpy as np

from ..autograd.grad_mode import enable_grad
from ..autograd.tensor import Tensor

# Parameters (or a fused update's flat arena) at least this large use the parallel kernels. SGD with momentum on 2
# idle cores, float32, paired calls, serial over parallel time: 160000 elements (about the cifar-cnn's arena) 1.59,
# 2^20 1.82; at LeNet-5's 62006 it was 1.09, within the noise, so that stays serial (a parallel region also waits
# for a descheduled thread on busy cores).
PARALLEL_MIN_SIZE = 1 << 16


class _RequiredParameter:
    def __repr__(self):
        return "<required parameter>"


required = _RequiredParameter()


class Optimizer:
    """Base class: subclasses define `_check_hyperparameters(group)` and `_update(param, grad, state, group)`.

    `state` maps each Parameter to a dict of arrays; `param_groups` is a list of dicts holding the parameters
    ("params") and their hyperparameters, as in PyTorch.
    """

    def __init__(self, params, defaults):
        self.defaults = defaults
        self._check_hyperparameters(defaults)
        self.state = defaultdict(dict)
        self.param_groups = []
        if isinstance(params, Tensor):
            raise TypeError("params argument given to the optimizer should be an iterable of Tensors or dicts, but "
                            f"got {type(params).__name__}")
        param_groups = list(params)
        if len(param_groups) == 0:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(param_groups[0], dict):
            param_groups = [{"params": param_groups}]
        for group in param_groups:
            self.add_param_group(group)

    def _check_hyperparameters(self, group):
        """Raise ValueError for an invalid hyperparameter of `group` (PyTorch's messages)."""

    def __repr__(self):
        text = type(self).__name__ + " ("
        for index, group in enumerate(self.param_groups):
            text += f"\nParameter Group {index}"
            for key in sorted(group):
                if key != "params":
                    text += f"\n    {key}: {group[key]}"
        return text + "\n)"

    def add_param_group(self, param_group):
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group)}")
        params = param_group["params"]
        if isinstance(params, Tensor):
            param_group["params"] = [params]
        elif isinstance(params, set):
            raise TypeError("optimizer parameters need to be organized in ordered collections, but the ordering of "
                            "tensors in sets will change between runs. Please use a list instead.")
        else:
            param_group["params"] = list(params)
        for param in param_group["params"]:
            if not isinstance(param, Tensor):
                raise TypeError(f"optimizer can only optimize Tensors, but one of the params is {type(param).__name__}")
            if not param.is_leaf:
                raise ValueError("can't optimize a non-leaf Tensor")
            if param.dtype not in (np.float32, np.float64):
                raise TypeError(f"optimizer can only optimize float32 and float64 Tensors, but one of the params has "
                                f"dtype {param.dtype}")
        for name, default in self.defaults.items():
            if default is required and name not in param_group:
                raise ValueError(f"parameter group didn't specify a value of required optimization parameter {name}")
            param_group.setdefault(name, default)
        ids = [id(p) for p in param_group["params"]]
        if len(ids) != len(set(ids)):
            warnings.warn("optimizer contains a parameter group with duplicate parameters; in future, this will cause "
                          "an error; see github.com/pytorch/pytorch/issues/40967 for more information", stacklevel=3)
        existing = {id(p) for group in self.param_groups for p in group["params"]}
        if existing & set(ids):
            raise ValueError("some parameters appear in more than one parameter group")
        self._check_hyperparameters(param_group)
        self.param_groups.append(param_group)

    def zero_grad(self, set_to_none=True):
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if set_to_none:
                    param.grad = None
                else:
                    param.grad[...] = 0

    def step(self, closure=None):
        """Update every parameter that has a gradient; `closure` (re-evaluating the loss) is called first."""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                self._step_parameter(param, group)
        return loss

    def _step_parameter(self, param, group):
        grad = np.asarray(param.grad)
        if grad.shape != param.shape:
            raise ValueError(f"a parameter of shape {param.shape} has a gradient of shape {np.shape(grad)}")
        if grad.dtype != param.dtype:
            raise TypeError(f"a {param.dtype} parameter has a {grad.dtype} gradient; they must have the same dtype")
        array = param.data
        in_place = array.flags.c_contiguous and array.flags.writeable
        flat = array.reshape(-1) if in_place else np.ascontiguousarray(array).reshape(-1)
        # State a captured step homed as strided views (a conv weight's, stored in its kernels' layout) is
        # updated through contiguous copies, as a strided parameter is, and written back into its home.
        state = self.state[param]
        strided = {name: home for name, home in state.items()
                   if isinstance(home, np.ndarray) and home.shape == param.shape and not home.flags.c_contiguous}
        for name, home in strided.items():
            state[name] = np.ascontiguousarray(home)
        try:
            self._update(flat, np.ascontiguousarray(grad).reshape(-1), param, state, group)
        finally:
            for name, home in strided.items():
                home[...] = state[name]
                state[name] = home
        if not in_place:
            array[...] = flat.reshape(array.shape)

    def _update(self, param, grad, owner, state, group):
        """Update the flat contiguous `param` in place from `grad`; `owner` is the Parameter `state` belongs to."""
        raise NotImplementedError

    # ----- the flat update the graph executor fuses -----
    def flat_update_state(self, group, params):
        """The names of the per-parameter state arrays `update_flat` needs, when this optimizer's rule can update
        the group's `params` concatenated into flat arrays in one call (the graph executor's fused update), or None
        when it cannot (the default: the executor then calls `step()`)."""
        return None

    def update_flat(self, group, params, param, grad, states):
        """One step of the group's `params`, held concatenated in the flat arrays `param` and `grad`, with each state
        array named by `flat_update_state` concatenated the same way in `states[name]`."""
        raise NotImplementedError

    def _uses_update_rule_of(self, cls):
        """Whether this optimizer updates exactly as `cls` does: a subclass that overrides the rule or the step
        cannot be fused by the flat update written for `cls`."""
        kind = type(self)
        return (isinstance(self, cls) and kind._update is cls._update and kind.step is Optimizer.step
                and kind._step_parameter is Optimizer._step_parameter)

    @staticmethod
    def _state_buffer(state, name, owner):
        """(flat view of state[name], whether it was just created as zeros); checked so no kernel overruns it."""
        buffer = state.get(name)
        created = buffer is None
        if created:
            buffer = state[name] = np.zeros(owner.shape, dtype=owner.dtype)
        elif buffer.shape != owner.shape or buffer.dtype != owner.dtype or not buffer.flags.c_contiguous:
            raise ValueError(f"optimizer state '{name}' has shape {buffer.shape} and dtype {buffer.dtype}, but its "
                             f"parameter has shape {owner.shape} and dtype {owner.dtype}")
        return buffer.reshape(-1), created

    # ----- state_dict -----
    def state_dict(self):
        """{"state": {index: {name: array}}, "param_groups": [{..., "params": [index, ...]}]}, as PyTorch's.

        Parameters are numbered in group order. As in PyTorch, the state arrays are shared, not copied.
        """
        index_of = {}
        packed_groups = []
        for group in self.param_groups:
            packed = {key: value for key, value in group.items() if key != "params"}
            for param in group["params"]:
                index_of.setdefault(id(param), len(index_of))
            packed["params"] = [index_of[id(param)] for param in group["params"]]
            packed_groups.append(packed)
        packed_state = {index_of[id(param)]: dict(values) for param, values in self.state.items()
                        if id(param) in index_of}
        return {"state": packed_state, "param_groups": packed_groups}

    def load_state_dict(self, state_dict):
        """Restore state saved by `state_dict` (ours or a PyTorch optimizer's converted to numpy); arrays are copied
        and cast to their parameter's dtype."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        if any(len(saved["params"]) != len(group["params"]) for saved, group in zip(saved_groups, self.param_groups)):
            raise ValueError("loaded state dict contains a parameter group that doesn't match the size of optimizer's "
                             "group")
        param_of = {}
        for saved, group in zip(saved_groups, self.param_groups):
            for index, param in zip(saved["params"], group["params"]):
                param_of[int(index)] = param
        new_state = defaultdict(dict)
        for index, values in state_dict["state"].items():
            if int(index) not in param_of:
                raise ValueError(f"loaded state dict has state for parameter {index}, which no parameter group lists")
            param = param_of[int(index)]
            new_state[param] = {name: self._loaded_value(index, name, value, param) for name, value in values.items()}
        new_groups = []
        for saved, group in zip(saved_groups, self.param_groups):
            new_group = {key: value for key, value in saved.items() if key != "params"}
            new_group["params"] = group["params"]
            self._check_hyperparameters(new_group)
            new_groups.append(new_group)
        self.state = new_state
        self.param_groups = new_groups

    @staticmethod
    def _loaded_value(index, name, value, param):
        if value is None:
            return None
        if name == "step":
            return np.array(float(np.asarray(value)), dtype=np.float32)
        value = np.asarray(value)
        if value.dtype.kind != "f":
            return value.copy()
        if value.shape != param.shape:
            raise ValueError(f"loaded state '{name}' of parameter {index} has shape {value.shape}, but the parameter "
                             f"has shape {param.shape}")
        return np.array(value, dtype=param.dtype, order="C", copy=True)
