"""One fused optimizer update over all parameters: each parameter group's parameters, gradients and optimizer
state live in flat arenas (the model's and the optimizer's own arrays become views of them), so one kernel call
updates a whole group. A parameter may live in the arena in its kernels' layout (a conv weight as (kH, kW, C_in,
C_out)): its view is then that block transposed back to the parameter's shape, and its gradient and state likewise,
so the graph reads and writes it with no re-layout while the update still runs elementwise over the arenas."""
import numpy as np

from .plan import ALIGNMENT


def _inverse(axes):
    return tuple(int(a) for a in np.argsort(axes))


def home_in_layouts(params, layouts):
    """Store each parameter that `layouts` names (id -> axes order) in that order, unless it already is: its
    `.data` becomes the transposed view of a new C-contiguous array (for an inference graph; a training graph's
    arenas home them in FusedUpdate)."""
    for param in params:
        axes = layouts.get(id(param))
        if axes is not None and not param.data.transpose(axes).flags.c_contiguous:
            _, (param.data,) = _arena_views([param.data], param.data.dtype, [axes])


def block_sizes(sizes, dtype):
    """The elements of an arena each array of `sizes` elements takes, up to where the next block starts: whole
    cache lines."""
    step = max(1, ALIGNMENT // np.dtype(dtype).itemsize)
    return [-(-size // step) * step for size in sizes]


def _arena_views(arrays, dtype, layouts):
    """Copy `arrays` into one new flat arena; returns (arena, views shaped like the arrays). layouts[k], when not
    None, is the axes order arrays[k] is stored in (its block is arrays[k].transpose(layouts[k]), C-contiguous).
    Each block starts on a cache line: the register tiles load a conv weight as 64-byte vectors, each straddling
    two lines when it does not (or the tiled variants copy it to an aligned buffer every call). The few elements
    between blocks are zeros, in every arena alike, and an elementwise update leaves them zero."""
    itemsize = np.dtype(dtype).itemsize
    blocks = block_sizes([a.size for a in arrays], dtype)
    total = sum(blocks)
    raw = np.zeros(total + ALIGNMENT // itemsize, dtype=dtype)
    first = (-raw.ctypes.data % ALIGNMENT) // itemsize
    arena = raw[first:first + total]
    views, start = [], 0
    for array, axes, block_size in zip(arrays, layouts, blocks):
        block = arena[start:start + array.size]
        start += block_size
        if axes is None:
            view = block.reshape(array.shape)
        else:
            view = block.reshape(tuple(array.shape[a] for a in axes)).transpose(_inverse(axes))
        view[...] = array
        views.append(view)
    return arena, views


class FusedUpdate:
    """The optimizer's update over flat per-group arenas; binding re-homes parameters, gradients and state.

    The optimizer says whether its rule can run flat (`flat_update_state`, which names the state arrays to home)
    and runs it (`update_flat`), so the executor knows no optimizer by name. Optimizers that cannot (or groups
    mixing dtypes) fall back to `optimizer.step()` on the gradient views: correct for any optimizer, not fused.
    """

    def __init__(self, optimizer, params_with_grad, layouts=None):
        """layouts: id(parameter) -> the axes order its arena block is stored in (lower.kernel_layouts)."""
        self.optimizer = optimizer
        self.layouts = dict(layouts or {})
        self.state_ref = optimizer.state
        self.groups = []  # (group dict, params, param arena, grad arena, {state name: arena})
        self.grad_of = {}
        self.homes = []  # (param, its data view) to notice a parameter whose array was replaced
        used = {id(p) for p in params_with_grad}
        self.fused = True
        for group in optimizer.param_groups:
            params = [p for p in group["params"] if id(p) in used]
            if not params:
                continue
            dtypes = {p.dtype for p in params}
            if len(dtypes) != 1:
                self.fused = False
            dtype = params[0].dtype
            layouts = [self.layouts.get(id(p)) for p in params]
            param_arena, param_views = _arena_views([p.data for p in params], dtype, layouts)
            for param, view in zip(params, param_views):
                param.data = view
                self.homes.append((param, view))
            grad_arena, grad_views = _arena_views([np.zeros(p.shape, dtype) for p in params], dtype, layouts)
            for param, view in zip(params, grad_views):
                self.grad_of[id(param)] = view
            names = getattr(optimizer, "flat_update_state", lambda group, params: None)(group, params)
            if names is None:
                self.fused = False
            states = self._home_state(params, names, dtype) if self.fused else {}
            self.groups.append((group, params, param_arena, grad_arena, states))
        for param in params_with_grad:
            if id(param) not in self.grad_of:  # a parameter no optimizer group updates still gets a gradient
                self.grad_of[id(param)] = np.zeros(param.shape, param.dtype)
        self.params = list(params_with_grad)
        self.attach_gradients()

    def covers(self, params, layouts=None):
        """Whether this binding holds exactly these parameters, in these layouts (another input shape of the same
        model)."""
        return {id(p) for p in params} == {id(p) for p in self.params} and dict(layouts or {}) == self.layouts

    def attach_gradients(self):
        """Point each parameter's .grad at its view of the gradient arena, where the graph writes it."""
        for param in self.params:
            param.grad = self.grad_of[id(param)]

    def _home_state(self, params, names, dtype):
        states = {}
        for name in names:
            current = [self.optimizer.state[p].get(name) for p in params]
            if any(c is None for c in current):  # the recording step made every buffer; missing means not fusable
                self.fused = False
                return {}
            arena, views = _arena_views(current, dtype, [self.layouts.get(id(p)) for p in params])
            for param, view in zip(params, views):
                self.optimizer.state[param][name] = view
            states[name] = arena
        return states

    def fuse_new_state(self):
        """Home the optimizer state that a `step()` through `optimizer.step()` has just created (optimizers make it
        on their first step, which the graph's first step now is), so that later steps run fused."""
        if self.fused:
            return
        rules = []
        for group, params, param_arena, grad_arena, _ in self.groups:
            names = getattr(self.optimizer, "flat_update_state", lambda group, params: None)(group, params)
            if names is None or len({p.dtype for p in params}) != 1:
                return
            rules.append((group, params, param_arena, grad_arena, names))
        self.fused = True
        groups = [(group, params, param_arena, grad_arena, self._home_state(params, names, params[0].dtype))
                  for group, params, param_arena, grad_arena, names in rules]
        if self.fused:  # _home_state clears it when some state array is still missing
            self.groups = groups

    def still_bound(self):
        """False when a parameter's array or the optimizer's state was replaced since binding (then re-record)."""
        if self.optimizer.state is not self.state_ref:
            return False
        return all(param.data is view for param, view in self.homes)

    def step(self, before_group=None):
        """The update; `before_group(grad_arena)`, when given, runs before each group's update (None: before the
        whole unfused step) so a data-parallel step waits only for the gradients that group needs."""
        if not self.fused:
            if before_group is not None:
                before_group(None)
            self.optimizer.step()
            return
        for group, params, param_arena, grad_arena, states in self.groups:
            if before_group is not None:
                before_group(grad_arena)
            self.optimizer.update_flat(group, params, param_arena, grad_arena, states)
