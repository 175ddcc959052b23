"""Data-parallel gradient averaging inside a captured training step, overlapped with the backward.

The fused update keeps each parameter group's gradients in one flat arena. The sync cuts each arena into buckets
(contiguous slices of at most `bucket_bytes`, the first at most 1 MiB, walked from the arena's end: the last layers'
gradients, which the backward produces first) and starts a bucket's nonblocking all-reduce (MPI_Iallreduce, in
place) right after the last backward node that writes into it, while later nodes keep computing. MPI moves a
nonblocking collective forward only inside MPI calls (MPICH runs no progress thread unless
MPIR_CVAR_ASYNC_PROGRESS=1), so after every backward node the sync polls the buckets in flight: that poll is what
drives the transfers between kernels. A bucket found complete is divided by the world size at once. The update waits
only for the buckets of the group it is about to update. Rank 0's buffers (batch norm's running statistics, final
once the forward has run) are broadcast during the backward in the same way, as
DistributedDataParallel(broadcast_buffers=True) does.
"""
import numpy as np

from .. import distributed as dist
from .update import block_sizes

FIRST_BUCKET_BYTES = 2**20  # as PyTorch's DDP: a small first bucket, so communication starts early in the backward


class _Bucket:
    """A contiguous slice of a gradient arena (or a buffer to broadcast) and its request while in flight."""

    def __init__(self, array, ready_after, arena):
        self.array, self.ready_after, self.arena = array, ready_after, arena
        self.request, self.done = None, False


class GradientSync:
    """Buckets over `update`'s gradient arenas, started as `backward_nodes` complete them; see the module doc."""

    def __init__(self, update, backward_nodes, bucket_bytes, buffers=()):
        self.world = dist.get_world_size()
        last_writer = {}  # id(parameter) -> index of the last backward node writing its gradient
        for index, node in enumerate(backward_nodes):
            for value in node.inputs:
                if value.kind == "param" and value.needs_grad:
                    last_writer[id(value.tensor)] = index
        self.buckets = []
        in_groups = set()
        for _, params, _, grad_arena, _ in update.groups:
            in_groups.update(id(p) for p in params)
            blocks = block_sizes([p.size for p in params], grad_arena.dtype)
            self._cut(grad_arena, [(block, last_writer.get(id(p), 0)) for block, p in zip(blocks, params)],
                      bucket_bytes)
        for param in update.params:  # a parameter no optimizer group holds still has its gradient averaged
            if id(param) not in in_groups:
                grad = update.grad_of[id(param)]
                self.buckets.append(_Bucket(grad.reshape(-1), last_writer.get(id(param), 0), grad))
        self.buckets.sort(key=lambda bucket: bucket.ready_after)  # the order every rank starts them in
        self.next_bucket = len(self.buckets)
        self.buffers = [b for b in buffers if b.size] if self.world > 1 else []
        self.buffer_requests = []
        self.in_flight = []

    def _cut(self, arena, sizes_and_ready, bucket_bytes):
        """Buckets over `arena`, whose parameters' blocks have the given sizes, from the arena's end backwards."""
        limit = max(1, min(bucket_bytes, FIRST_BUCKET_BYTES) // arena.itemsize)
        end = arena.size
        start, ready, count = end, -1, 0
        for size, ready_after in reversed(sizes_and_ready):
            if count and count + size > limit:
                self.buckets.append(_Bucket(arena[start:end], max(ready, 0), arena))
                end, ready, count = start, -1, 0
                limit = max(1, bucket_bytes // arena.itemsize)
            start -= size
            count += size
            ready = max(ready, ready_after)
        if count:
            self.buckets.append(_Bucket(arena[start:end], max(ready, 0), arena))

    def backward_node_done(self, index):
        """After backward node `index`: start the buckets it completed, and poll those in flight (MPI progress)."""
        if index == 0:  # a new step
            for bucket in self.buckets:
                bucket.request, bucket.done = None, False
            self.next_bucket = 0
            self.buffer_requests = [dist.broadcast_start(b, src=0) for b in self.buffers]
        self._start_ready(index)
        self.in_flight = [bucket for bucket in self.in_flight if not self._finish_if_complete(bucket)]

    def _start_ready(self, index):
        while self.next_bucket < len(self.buckets) and self.buckets[self.next_bucket].ready_after <= index:
            bucket = self.buckets[self.next_bucket]
            bucket.request = dist.all_reduce_start(bucket.array)
            self.in_flight.append(bucket)
            self.next_bucket += 1

    def _finish_if_complete(self, bucket):
        if not dist.test(bucket.request):
            return False
        np.divide(bucket.array, self.world, out=bucket.array)
        bucket.done = True
        return True

    def wait_for(self, grad_arena=None):
        """Wait for the buckets over `grad_arena` (all buckets when None), each averaged; the first call of a step
        also waits for the buffers' broadcast."""
        self._start_ready(len(self.buckets) and self.buckets[-1].ready_after)  # none is left unstarted
        for bucket in self.buckets:
            if not bucket.done and (grad_arena is None or bucket.arena is grad_arena):
                dist.wait(bucket.request)
                self._finish_if_complete(bucket)
        self.in_flight = [bucket for bucket in self.in_flight if not bucket.done]
        for request in self.buffer_requests:
            dist.wait(request)
        self.buffer_requests = []


def gradient_sync_for(model, update, backward_nodes):
    """A GradientSync when `model` averages gradients across ranks (it has `gradient_sync_spec()`, as
    DistributedDataParallel does) and the process group has more than one rank; None otherwise."""
    spec = getattr(model, "gradient_sync_spec", None)
    if spec is None or not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    spec = spec()
    return GradientSync(update, backward_nodes, spec["bucket_bytes"], spec["buffers"])
