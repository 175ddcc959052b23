"""Capture: trace one forward, lower its ops to graph nodes, plan their memory, run every step from the schedule."""
import contextlib
import ctypes
import gc

import numpy as np

from .. import _config
from .._config import FLOAT_DTYPES
from ..autograd.grad_mode import no_grad
from ..autograd.tensor import Tensor
from ..ops.loss import CrossEntropy as CrossEntropyOp
from . import nodes as N
from .fusion import fuse
from .gradient_sync import gradient_sync_for
from .lower import Lowering, kernel_layouts, number_values
from .plan import plan_memory, plan_workspace, unplanned_bytes
from .trace import Tracer
from .update import FusedUpdate, home_in_layouts


def _lowered(records, x_tensor, model, training):
    """The Lowering of a trace with its forward nodes fused and its values named: `.nodes`, `.values`."""
    lowering = Lowering(records, x_tensor, model, training)
    lowering.lower()
    fuse(lowering)
    number_values(lowering.values)
    return lowering


def _reaching_the_loss(backward, loss_node):
    """The backward nodes (in backward order) whose output the loss depends on. A value computed but never used on
    the way to the loss gets no gradient in eager mode; its node's backward would read a gradient buffer nothing
    wrote."""
    reached, kept = {id(loss_node.output)}, []
    for node in backward:
        if id(node.output) in reached:
            kept.append(node)
            reached.update(id(value) for value in node.inputs if value.needs_grad)
    return kept


def return_freed_memory():
    """Hand the heap pages that the traced forward freed back to the OS (glibc's malloc_trim; elsewhere a no-op).

    Freeing a large array raises glibc's mmap threshold, so a trace's activation-sized arrays come from malloc's
    heaps, and once freed they would stay resident for the rest of the run.
    """
    gc.collect()  # reference cycles (a model's, a loss function's) may still hold some of the trace's arrays
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return False
    trim(0)
    return True


@contextlib.contextmanager
def _side_effects_undone(model):
    """Trace a training-mode forward without leaving its mark on the model's buffers (batch norm's running
    statistics and batch count) or on cn's random stream (dropout), so the graph's first step updates and draws
    them exactly as an eager step would."""
    buffers = [(b, b.copy()) for b in model.buffers() if isinstance(b, np.ndarray)] if hasattr(model, "buffers") \
        else []
    random_state = _config.get_rng_state()
    try:
        yield
    finally:
        for buffer, saved in buffers:
            np.copyto(buffer, saved)
        _config.set_rng_state(random_state)


def _check_batch(x, expected_dtype, what="x"):
    if isinstance(x, Tensor):
        x = x.data
    if not isinstance(x, np.ndarray):
        raise TypeError(f"captured step: expected {what} to be an ndarray, but got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"captured step: expected a float32 or float64 {what}, but got {x.dtype}")
    if expected_dtype is not None and x.dtype != expected_dtype:
        raise TypeError(f"captured step: input dtype ({x.dtype}) and the model's parameters ({expected_dtype}) "
                        "should be the same")
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"captured step: expected a non-empty batch, but got {what} of shape {x.shape}")
    return x


class _Schedule:
    """Forward nodes, backward nodes and the update, with every buffer planned; shared by training and inference."""

    def __init__(self, forward_nodes, backward_nodes, keep_alive):
        self.forward_nodes, self.backward_nodes = forward_nodes, backward_nodes
        buffers = {}
        for step, node in enumerate(forward_nodes):
            for buffer in node.forward_buffers():
                buffer.touch(step)
                buffers[id(buffer)] = buffer
        offset = len(forward_nodes)
        for step, node in enumerate(backward_nodes, start=offset):
            touched = node.backward_buffers()
            for k, value in enumerate(node.inputs):
                if value.needs_grad:
                    touched.append(value.grad)
                    if node.accumulate[k]:
                        touched.append(node.scratch[k])
            for buffer in touched:
                buffer.touch(step)
                buffers[id(buffer)] = buffer
        final = offset + len(backward_nodes)
        for buffer in keep_alive:
            buffer.touch(final)
            buffers[id(buffer)] = buffer
        self.buffers = list(buffers.values())
        self.arena = plan_memory(self.buffers)
        self.workspace = plan_workspace(forward_nodes + backward_nodes)
        self.planned_bytes = self.arena.nbytes
        self.unplanned_bytes = unplanned_bytes(self.buffers)

    def describe(self):
        lines = [f"forward ({len(self.forward_nodes)} nodes):"] + [f"  {n!r}" for n in self.forward_nodes]
        lines += [f"backward ({len(self.backward_nodes)} nodes):"] + [f"  {n!r}" for n in self.backward_nodes]
        lines.append(f"memory: {self.planned_bytes} bytes planned for {self.unplanned_bytes} bytes of buffers, "
                     f"{self.workspace.nbytes} bytes of kernel workspace")
        return "\n".join(lines)


def _check_loss_op(records, loss):
    """Refuse, before anything is re-bound, a loss the graph cannot replay with new labels."""
    last = records[-1] if records else None
    if last is None or last[3] is not loss or type(last[0]) is not CrossEntropyOp \
            or last[2].get("reduction", "mean") not in ("mean", "sum") or len(last[1][0].shape) != 2:
        name = type(last[0]).__name__ if last is not None else "no op"
        raise ValueError(f"captured step: the loss must be cross_entropy (mean or sum) of (N, C) logits against class "
                         f"indices, but got {name}; use the eager loop (eager=True) for other losses")


class _TrainingGraph:
    """One recorded training step for one input shape."""

    def __init__(self, model, loss_fn, optimizer, x, y, update=None):
        optimizer.zero_grad()  # a parameter the step leaves without gradient is then skipped, as in eager
        x_tensor = Tensor(x)
        # forward only: the graph's own first step does the backward and the update, in the graph's memory
        with _side_effects_undone(model), no_grad(), Tracer(keep_values=False) as tracer:
            loss = loss_fn(model(x_tensor), y)
            if not isinstance(loss, Tensor) or loss.size != 1:
                raise ValueError("captured step: loss_fn must return a scalar Tensor")
            loss = tracer.stand_in(loss)
        _check_loss_op(tracer.records, loss)
        params = []
        seen = set()
        for _, args, _, _ in tracer.records:
            for arg in args:
                if isinstance(arg, Tensor) and arg.is_leaf and arg.requires_grad and id(arg) not in seen:
                    seen.add(id(arg))
                    params.append(arg)
        layouts = kernel_layouts(tracer.records)
        if update is not None and update.covers(params, layouts):
            update.attach_gradients()  # zero_grad() above may have detached them
            self.update = update
        else:
            self.update = FusedUpdate(optimizer, params, layouts)
        records = self._bind_labels(tracer.records, loss, y)
        lowering = _lowered(records, x_tensor, model, training=True)
        forward = lowering.nodes
        self.input_node = forward[0]
        self.loss_node = forward[-1]
        if not isinstance(self.loss_node, N.CrossEntropy) or self.loss_node.output is not lowering.values.get(id(loss)):
            raise ValueError("captured step: the labels could not be bound to the cross_entropy target; use the "
                             "eager loop (eager=True)")
        self.logits_value = self.loss_node.inputs[0]
        for value in lowering.values.values():
            if value.kind == "param" and value.needs_grad:
                value.grad = N.Buffer(value.shape, value.dtype, value.name + ".grad",
                                      fixed=self.update.grad_of[id(value.tensor)])
            elif value.needs_grad and value is not self.loss_node.output:
                value.grad = N.Buffer(value.shape, value.dtype, value.name + ".grad")
        backward = _reaching_the_loss([n for n in reversed(forward[1:]) if n.output.needs_grad], self.loss_node)
        written = set()
        for node in backward:
            for k, value in enumerate(node.inputs):
                if not value.needs_grad:
                    continue
                if id(value) in written:
                    node.accumulate[k] = True
                    node.scratch[k] = N.Buffer(value.grad.shape, value.dtype, f"{value.name}.grad_part")
                written.add(id(value))
        self.schedule = _Schedule(forward, backward, keep_alive=[self.logits_value.buffer])
        self.labels = self.loss_node.target
        self.classes = self.logits_value.shape[1]
        self.bn_modules = [n.module for n in forward if isinstance(n, N.BatchNormTrain) and n.module is not None]
        # data-parallel (DistributedDataParallel under MPI): gradient buckets all-reduced during the backward
        self.gradient_sync = gradient_sync_for(model, self.update, self.schedule.backward_nodes)

    def _bind_labels(self, records, loss, y):
        """The cross-entropy's target becomes a buffer the step fills with each batch's labels."""
        if not records or records[-1][3] is not loss or type(records[-1][0]) is not CrossEntropyOp:
            return records
        op, args, options, result = records[-1]
        target = options.get("target")
        if target is None or target.shape != y.shape or not np.array_equal(target, y):
            return records
        options = dict(options)
        options["target"] = np.empty(y.shape, dtype=np.int64)
        return records[:-1] + [(op, args, options, result)]

    def run(self, x, y):
        self.input_node.source = x
        np.copyto(self.labels, y)
        for module in self.bn_modules:
            module.num_batches_tracked += 1
        for node in self.schedule.forward_nodes:
            node.forward()
        sync = self.gradient_sync
        for index, node in enumerate(self.schedule.backward_nodes):
            node.backward()
            if sync is not None:
                sync.backward_node_done(index)  # starts the buckets this node completed; drives MPI progress
        self.update.step(before_group=None if sync is None else sync.wait_for)
        self.input_node.source = None
        return float(self.loss_node.value)


class TrainingStep:
    """`step(x, y)`: forward, cross-entropy loss, backward and optimizer update, replayed from a recorded schedule.

    The first call for an input shape traces the forward (keeping shapes, not activations, and undoing its effect
    on running statistics and the random stream), lowers it to a graph, and runs this first step through the graph;
    later calls with that shape replay it. Its peak memory is the graph's arena, not an eager step's tape. Returns
    the loss as a float.
    """

    def __init__(self, model, loss_fn, optimizer):
        if not model.training:
            raise ValueError("capture(model, loss_fn, optimizer) records a training step; call model.train() first")
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.graphs = {}
        self.last, self.last_recorded = None, False

    def _labels(self, y, batch):
        if isinstance(y, Tensor):
            y = y.data
        y = np.asarray(y)
        if y.dtype.kind not in "iu":
            raise TypeError(f"captured step: expected integer class labels, but got dtype {y.dtype}")
        if y.shape != (batch,):
            raise ValueError(f"Expected input batch_size ({batch}) to match target batch_size "
                             f"({y.shape[0] if y.ndim else 0}); labels must have shape ({batch},), got {y.shape}")
        return y

    def __call__(self, x, y):
        x = _check_batch(x, None)
        y = self._labels(y, x.shape[0])
        key = (x.shape, x.dtype)
        graph = self.graphs.get(key)
        if graph is None:  # a graph's key already holds the parameters' dtype; a new shape is checked once
            params = list(self.model.parameters())
            _check_batch(x, params[0].dtype if params else None)
        if graph is not None and not graph.update.still_bound():
            self.graphs.clear()  # parameters or optimizer state were replaced: every graph must re-bind
            graph = None
        if graph is not None:
            if y.min() < 0 or y.max() >= graph.classes:
                bad = y[((y < 0) | (y >= graph.classes)) & (y != graph.loss_node.ignore_index)]
                if bad.size:
                    raise ValueError(f"Target {bad[0]} is out of bounds.")
            self.last, self.last_recorded = graph, False
            return graph.run(x, y)
        # graphs of other shapes share one binding of parameters and optimizer state, if it still holds
        update = next((g.update for g in self.graphs.values() if g.update.still_bound()), None)
        graph = _TrainingGraph(self.model, self.loss_fn, self.optimizer, x, y, update)
        return_freed_memory()  # the traced forward's transient arrays, before the first step touches the arena
        loss = graph.run(x, y)
        graph.update.fuse_new_state()  # an optimizer's first step has just made its state
        self.graphs[key] = graph
        self.last, self.last_recorded = graph, True
        return loss

    @property
    def logits(self):
        """The logits of the last step's batch (N, classes), valid until the next step."""
        return None if self.last is None else self.last.logits_value.buffer.array

    def describe(self):
        """The schedule and memory plan of the most recently used graph, as text."""
        return self.last.schedule.describe() if self.last is not None else "nothing recorded yet"


class Predictor:
    """`predict(x)`: the eval-mode forward as a recorded graph with batch norm folded into the convs; returns logits."""

    def __init__(self, model):
        if model.training:
            raise ValueError("capture(model) without a loss function and optimizer captures inference; call "
                             "model.eval() first")
        self.model = model
        self.graphs = {}
        self.last = None

    def __call__(self, x):
        x = _check_batch(x, None)
        key = (x.shape, x.dtype)
        graph = self.graphs.get(key)
        if graph is not None and not all(param.data is array for param, array in graph[3]):
            self.graphs.clear()  # a parameter's array was replaced (a training graph homed it): re-record
            graph = None
        if graph is None:
            graph = self.graphs[key] = self._record(x)
            return_freed_memory()  # the traced forward's arrays are unreferenced once the graph is built
        forward, schedule, out_value, _ = graph
        self.last = schedule
        forward[0].source = x
        for node in forward:
            node.forward()
        forward[0].source = None
        result = out_value.buffer.array
        return np.ascontiguousarray(result.transpose(0, 3, 1, 2)) if out_value.nhwc else result.copy()

    def _record(self, x):
        """(forward nodes, schedule, output value, (parameter, its array) pairs it reads) of the eval-mode forward
        traced on batch x; conv weights are re-homed in the kernels' layout first, once."""
        params = list(self.model.parameters())
        _check_batch(x, params[0].dtype if params else None)
        x_tensor = Tensor(x)
        with no_grad(), Tracer(keep_values=False) as tracer:
            output = tracer.stand_in(self.model(x_tensor))
        home_in_layouts(params, kernel_layouts(tracer.records))
        lowering = _lowered(tracer.records, x_tensor, self.model, training=False)
        forward = lowering.nodes
        out_value = lowering.values.get(id(output))
        if out_value is None:
            raise ValueError("capture(model): the model's output is not computed by any op")
        return (forward, _Schedule(forward, [], keep_alive=[out_value.buffer]), out_value,
                [(param, param.data) for param in params])

    def describe(self):
        return self.last.describe() if self.last is not None else "nothing recorded yet"


def capture(model, loss_fn=None, optimizer=None):
    """Capture a training step (`capture(model, loss_fn, optimizer)` → `step(x, y)` returning the loss) or, for a
    model in eval mode, inference (`capture(model)` → `predict(x)` returning the logits as an ndarray)."""
    if not (callable(model) and hasattr(model, "named_parameters") and hasattr(model, "training")):
        raise TypeError(f"capture() expected an nn.Module, but got {type(model).__name__}")
    if (loss_fn is None) != (optimizer is None):
        raise ValueError("capture() takes a model alone (inference) or a model, a loss function and an optimizer")
    if loss_fn is None:
        return Predictor(model)
    return TrainingStep(model, loss_fn, optimizer)
