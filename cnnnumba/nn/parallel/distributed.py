"""`DistributedDataParallel`: one model replica per rank, rank 0's weights at the start, gradients averaged.

Eager code averages the gradients once `backward()` has finished (a post-backward hook of the autograd engine);
a step captured with `cn.graph.capture(ddp, loss_fn, optimizer)` averages them in buckets overlapped with the
backward (`cnnnumba.graph.gradient_sync`), through `gradient_sync_spec()`.
"""
import contextlib
import weakref

import numpy as np

from ... import distributed as dist
from ...autograd.function import register_post_backward_hook
from ...autograd.grad_mode import is_grad_enabled
from ..module import Module

DEFAULT_BUCKET_CAP_MB = 25  # PyTorch's default


def _describe(module):
    """(kind, name, shape, dtype) of every parameter and buffer, in registration order."""
    entries = [("parameter", name, tuple(p.shape), str(p.dtype)) for name, p in module.named_parameters()]
    entries += [("buffer", name, tuple(b.shape), str(b.dtype)) for name, b in module.named_buffers()]
    return entries


def _first_difference(reference, other, rank):
    """Why rank `rank`'s model description differs from rank 0's, or None."""
    ours = {(kind, name): (shape, dtype) for kind, name, shape, dtype in reference}
    theirs = {(kind, name): (shape, dtype) for kind, name, shape, dtype in other}
    for key, (shape, dtype) in ours.items():
        if key not in theirs:
            return f"rank {rank} has no {key[0]} '{key[1]}' (rank 0 has it, with shape {shape})"
        if theirs[key] != (shape, dtype):
            return (f"{key[0]} '{key[1]}' has shape {theirs[key][0]} and dtype {theirs[key][1]} on rank {rank}, but "
                    f"shape {shape} and dtype {dtype} on rank 0")
    for key, (shape, _) in theirs.items():
        if key not in ours:
            return f"rank {rank} has a {key[0]} '{key[1]}' of shape {shape} that rank 0 does not have"
    if [entry[:2] for entry in reference] != [entry[:2] for entry in other]:
        return f"rank {rank} registers the same parameters and buffers as rank 0, but in another order"
    return None


def _contiguous_arrays(module):
    """Every parameter's and buffer's array, made C-contiguous in place where needed (collectives need it)."""
    arrays = []
    for param in module.parameters():
        if not param.data.flags.c_contiguous:
            param.data = np.ascontiguousarray(param.data)
        arrays.append(param.data)
    for owner in module.modules():
        for name, buffer in owner._buffers.items():
            if buffer is not None and not buffer.flags.c_contiguous:
                owner._buffers[name] = np.ascontiguousarray(buffer)
    return arrays + [b for b in module.buffers()]


class DistributedDataParallel(Module):
    """Wrap `module` for data-parallel training: every rank runs it on its own share of each batch.

    Building it checks that every rank's model has the same parameter and buffer names, shapes and dtypes (the
    error names the first that differs) and copies rank 0's values to every rank. After each backward the
    parameters' gradients are the average over the ranks, so every rank's optimizer takes the same step. With
    `broadcast_buffers` (PyTorch's default) rank 0's buffers (batch norm's running statistics) are copied to every
    rank at each training forward; batch norm normalizes with each rank's own batch statistics, as in PyTorch's
    DDP without SyncBatchNorm. `state_dict()` keys carry the prefix `module.`; `.module` is the wrapped model.
    """

    def __init__(self, module, device_ids=None, output_device=None, broadcast_buffers=True, bucket_cap_mb=None):
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel expected an nn.Module, but got {type(module).__name__}")
        if device_ids is not None or output_device is not None:
            raise ValueError("DistributedDataParallel: device_ids and output_device must be None for a CPU module")
        bucket_cap_mb = DEFAULT_BUCKET_CAP_MB if bucket_cap_mb is None else bucket_cap_mb
        if isinstance(bucket_cap_mb, bool) or not isinstance(bucket_cap_mb, (int, float)) or not bucket_cap_mb > 0:
            raise ValueError(f"bucket_cap_mb must be a positive number, but got {bucket_cap_mb!r}")
        if not dist.is_initialized():
            raise RuntimeError("Default process group has not been initialized, please make sure to call "
                               "cnnnumba.distributed.init_process_group()")
        self.module = module
        self.broadcast_buffers = bool(broadcast_buffers)
        self.bucket_cap_mb = bucket_cap_mb
        self._sync_enabled = True
        self._sync_pending = False
        self._check_same_model_everywhere()
        for array in _contiguous_arrays(module):
            dist.broadcast(array, src=0)
        this = weakref.ref(self)
        self._hook = register_post_backward_hook(lambda leaves: this() is not None and this()._after_backward(leaves))
        weakref.finalize(self, self._hook.remove)

    def _check_same_model_everywhere(self):
        descriptions = dist.all_gather_object(_describe(self.module))
        for rank, description in enumerate(descriptions[1:], start=1):
            difference = _first_difference(descriptions[0], description, rank)
            if difference is not None:
                raise ValueError(f"DistributedDataParallel expects the same model on every rank, but {difference}")

    def forward(self, *args, **kwargs):
        if self.training and is_grad_enabled():
            self._sync_pending = self._sync_enabled
            if self.broadcast_buffers and dist.get_world_size() > 1:
                for buffer in self.module.buffers():
                    dist.broadcast(buffer, src=0)
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self):
        """Inside this context, eager backward passes keep each rank's own gradients (accumulate locally; the
        first backward after it averages the sum)."""
        previous, self._sync_enabled = self._sync_enabled, False
        try:
            yield
        finally:
            self._sync_enabled = previous

    def _after_backward(self, leaves):
        if not self._sync_pending:
            return
        params = list(self.module.parameters())
        ours = {id(p) for p in params}
        if not any(id(leaf) in ours for leaf in leaves):
            return
        self._sync_pending = False
        average_gradients(params)

    def gradient_sync_spec(self):
        """What a captured step needs to average gradients the way this wrapper does: the bucket size in bytes and
        the buffers to copy from rank 0 each step (`cnnnumba.graph.gradient_sync`)."""
        return {"bucket_bytes": int(self.bucket_cap_mb * 2**20),
                "buffers": list(self.module.buffers()) if self.broadcast_buffers else []}

    def extra_repr(self):
        return f"world_size={dist.get_world_size()}, bucket_cap_mb={self.bucket_cap_mb}"


def average_gradients(params):
    """Make every parameter's `.grad` the mean over the ranks, in one all-reduce per dtype.

    A parameter without a gradient on some ranks counts as zero there, and keeps None where no rank has one, so
    the ranks never disagree on what is reduced.
    """
    world = dist.get_world_size()
    by_dtype = {}
    for param in params:
        by_dtype.setdefault(np.dtype(param.dtype), []).append(param)
    for dtype, group in by_dtype.items():
        sizes = [p.size for p in group]
        flat = np.zeros(sum(sizes) + len(group), dtype=dtype)  # the gradients, then one "has a gradient" flag each
        start = 0
        for k, param in enumerate(group):
            if param.grad is not None:
                flat[start:start + sizes[k]] = np.asarray(param.grad).reshape(-1)
                flat[-len(group) + k] = 1
            start += sizes[k]
        dist.all_reduce(flat)
        np.divide(flat[:start], world, out=flat[:start])
        start = 0
        for k, param in enumerate(group):
            if flat[-len(group) + k] > 0:
                mean = flat[start:start + sizes[k]].reshape(param.shape)
                if param.grad is None:
                    param.grad = mean.copy()
                else:
                    np.copyto(param.grad, mean)
            start += sizes[k]
