"""Memory planning: buffers with lifetimes in the schedule, packed into one arena so dead buffers' bytes are reused."""
import numpy as np

ALIGNMENT = 64  # bytes; a cache line, and the widest vector load the kernels issue


class Buffer:
    """An array the schedule needs between its first and last use (step indices); `array` is set by the plan.

    A buffer made with `fixed` is not planned: it is that array for the whole life of the graph (parameters,
    their gradients, optimizer state).
    """

    def __init__(self, shape, dtype, name, fixed=None):
        self.shape, self.dtype, self.name = tuple(int(n) for n in shape), np.dtype(dtype), name
        self.first = self.last = None
        self.array = fixed
        self.fixed = fixed is not None
        self.offset = None

    @property
    def nbytes(self):
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def touch(self, step):
        self.first = step if self.first is None else min(self.first, step)
        self.last = step if self.last is None else max(self.last, step)

    def __repr__(self):
        return f"Buffer({self.name}, {self.shape}, {self.dtype}, steps {self.first}..{self.last})"


def _aligned(size):
    return (size + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def plan_memory(buffers):
    """Give every touched, non-fixed buffer an offset in one arena; buffers whose lifetimes overlap never share bytes.

    Greedy first fit, largest buffers first. Returns the arena (a uint8 array) after setting each buffer's array
    to a view of it.
    """
    planned = sorted((b for b in buffers if not b.fixed and b.first is not None),
                     key=lambda b: (-b.nbytes, b.first, b.name))
    placed = []
    arena_size = 0
    for buffer in planned:
        size = _aligned(max(buffer.nbytes, 1))
        overlapping = sorted((other.offset, other.offset + _aligned(max(other.nbytes, 1))) for other in placed
                             if other.first <= buffer.last and buffer.first <= other.last)
        offset = 0
        for start, end in overlapping:
            if offset + size <= start:
                break
            offset = max(offset, end)
        buffer.offset = offset
        placed.append(buffer)
        arena_size = max(arena_size, offset + size)
    # over-allocate by one alignment so the arena's first byte can be aligned whatever malloc returned
    raw = np.zeros(arena_size + ALIGNMENT, dtype=np.uint8)
    start = (-raw.ctypes.data) % ALIGNMENT
    arena = raw[start:start + arena_size]
    for buffer in planned:
        count = int(np.prod(buffer.shape, dtype=np.int64))
        view = arena[buffer.offset:buffer.offset + count * buffer.dtype.itemsize].view(buffer.dtype)
        buffer.array = view.reshape(buffer.shape)
    return arena


def unplanned_bytes(buffers):
    """What the planned buffers would take if each had its own array (to report the saving)."""
    return sum(b.nbytes for b in buffers if not b.fixed and b.first is not None)


def plan_workspace(nodes):
    """One scratch array shared by every node with a `workspace_bytes()` (conv kernels' strips, partials, columns):
    the nodes run one at a time, so it is as large as the largest request. Sets each such node's `workspace`."""
    users = list({id(node): node for node in nodes if hasattr(node, "workspace_bytes")}.values())
    workspace = np.empty(max((node.workspace_bytes() for node in users), default=0), dtype=np.uint8)
    for node in users:
        node.workspace = workspace
    return workspace
