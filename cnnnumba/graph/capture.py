"""Capture: trace one forward, lower its ops to graph nodes, plan their memory, run every step from the schedule."""
import contextlib
import ctypes
import gc
import math
import weakref

import numpy as np

from .. import _config
from .._config import FLOAT_DTYPES
from ..autograd import function as function_module
from ..autograd.arith import Add as AddOp
from ..autograd.arith import Reshape as ReshapeOp
from ..autograd.grad_mode import no_grad
from ..autograd.tensor import Tensor
from ..ops.activation import ReLU as ReLUOp
from ..ops.conv import Conv2d as ConvOp
from ..ops.dropout import Dropout as DropoutOp
from ..ops.linear import Linear as LinearOp
from ..ops.loss import CrossEntropy as CrossEntropyOp
from ..ops.merge import Cat as CatOp
from ..ops.norm import BatchNorm as BatchNormOp
from ..ops.pool import AdaptiveAvgPool2d as AdaptiveAvgPoolOp
from ..ops.pool import AvgPool2d as AvgPoolOp
from ..ops.pool import MaxPool2d as MaxPoolOp
from . import nodes as N
from .gradient_sync import gradient_sync_for
from .plan import plan_memory, plan_workspace, unplanned_bytes
from .update import FusedUpdate

# NCHW axis -> NHWC axis, for ops given an NCHW dim
_NHWC_AXIS = {0: 0, 1: 3, 2: 1, 3: 2}


class Tracer:
    """Collects (op, args, options, output) for every Function applied while it is active in this thread.

    With `keep_values=False` it keeps what the lowering reads and nothing more: each output is recorded as a
    `TracedResult` (shape, dtype and identity; later records name it as their argument) and each op without the
    arrays its forward saved for backward, so a traced forward holds no activation once the model's own code has
    dropped it. That is what keeps capture's recording step within the graph's own memory.
    """

    def __init__(self, keep_values=True):
        self.records = []
        self.keep_values = keep_values
        self._stand_ins = {}  # id(output) -> (weak reference to the output, its TracedResult)

    def record(self, op, args, options, result):
        if not self.keep_values:
            args = tuple(self.stand_in(a) for a in args)
            op = _without_saved_arrays(op)
            traced = TracedResult(result)
            self._stand_ins[id(result)] = (weakref.ref(result), traced)
            result = traced
        self.records.append((op, args, options, result))

    def stand_in(self, value):
        """The TracedResult recorded for `value` when it is the output of a traced op, else `value` itself."""
        entry = self._stand_ins.get(id(value)) if isinstance(value, Tensor) else None
        if entry is not None and entry[0]() is value:  # the same object, not a later one at a reused address
            return entry[1]
        return value

    def __enter__(self):
        function_module.active_tracers().append(self)
        return self

    def __exit__(self, *exc):
        function_module.active_tracers().remove(self)


class TracedResult(Tensor):
    """An op's output as a lean trace keeps it: shape, dtype and identity, not the values."""

    def __init__(self, tensor):  # Tensor.__init__ would keep an array; this keeps none
        self._shape, self._dtype = tuple(tensor.shape), tensor.dtype
        self.grad, self._op, self._requires_grad = None, None, False

    shape = property(lambda self: self._shape)
    dtype = property(lambda self: self._dtype)
    ndim = property(lambda self: len(self._shape))
    size = property(lambda self: math.prod(self._shape))

    @property
    def data(self):
        raise RuntimeError("a traced result keeps the shape and dtype of an op's output, not its values")

    def __repr__(self):
        return f"TracedResult(shape={self._shape}, dtype={self._dtype})"


def _holds_arrays(value):
    if isinstance(value, (np.ndarray, Tensor)):
        return True
    if isinstance(value, (tuple, list)):
        return any(_holds_arrays(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_arrays(v) for v in value.values())
    return False


def _without_saved_arrays(op):
    """A copy of `op` without the arrays (and parent tensors) its forward kept for backward: the lowering reads an
    op's type and options, never what it saved."""
    copy = object.__new__(type(op))
    copy.__dict__.update((name, value) for name, value in vars(op).items() if not _holds_arrays(value))
    return copy


def _traced(value):
    return isinstance(value, TracedResult)


def _internal_shape(shape):
    return (shape[0], shape[2], shape[3], shape[1]) if len(shape) == 4 else tuple(shape)


class _Lowering:
    """Turns a trace into forward nodes; `training` decides batch-norm handling and which values need gradients."""

    def __init__(self, records, x_tensor, model, training):
        self.records, self.training = records, training
        self.values, self.nodes = {}, []
        self.param_names = {id(p): name for name, p in model.named_parameters()}
        self.bn_modules = {id(m.running_mean): m for m in model.modules()
                           if getattr(m, "running_mean", None) is not None and hasattr(m, "num_batches_tracked")}
        self.uses = {}
        for _, args, _, _ in records:
            for arg in args:
                if isinstance(arg, Tensor):
                    self.uses[id(arg)] = self.uses.get(id(arg), 0) + 1
        self.input = N.Value(_internal_shape(x_tensor.shape), x_tensor.dtype, "input")
        self.values[id(x_tensor)] = self.input
        self.nodes.append(N.InputNHWC(self.input))
        self.counter = 0

    def value_of(self, tensor):
        value = self.values.get(id(tensor))
        if value is None:
            if tensor.is_leaf and tensor.requires_grad:
                name = self.param_names.get(id(tensor), f"param{len(self.values)}")
                value = N.Value(tensor.shape, tensor.dtype, name, kind="param", fixed=tensor.data, tensor=tensor)
                value.needs_grad = self.training
            else:
                value = N.Value(tensor.shape, tensor.dtype, f"const{len(self.values)}", kind="const",
                                fixed=tensor.data)
            self.values[id(tensor)] = value
        return value

    def new_value(self, result, label):
        self.counter += 1
        value = N.Value(_internal_shape(result.shape), result.dtype, f"{label}{self.counter}")
        value.traced_id = id(result)  # the traced tensor, whose use count decides whether a fusion may absorb it
        self.values[id(result)] = value
        return value

    def add(self, node):
        node.output.producer = node
        node.output.needs_grad = self.training and any(v.needs_grad for v in node.inputs)
        self.nodes.append(node)
        return node

    def single_use(self, value_tensor_id):
        return self.uses.get(value_tensor_id, 0) == 1

    def lower(self):
        for op, args, options, result in self.records:
            self.lower_one(op, args, options, result)
        return self.nodes

    def lower_one(self, op, args, options, result):
        kind = type(op)
        tensors = [self.value_of(a) if isinstance(a, Tensor) else None for a in args]
        x = tensors[0] if tensors else None
        if kind is ConvOp and x is not None and x.nhwc and tensors[1] is not None:
            o = op.options
            if self.training:
                out = self.new_value(result, "conv")
                self.add(N.Conv(x, tensors[1], tensors[2], out, o["stride"], o["padding"], o["dilation"], o["groups"]))
                return
            if not _traced(args[1]) and not _traced(args[2]):  # folding reads the weights' values
                out = self.new_value(result, "conv")
                bias = None if args[2] is None else _data(args[2])
                self.add(N.FoldedConv(x, out, _data(args[1]), bias, None, o["stride"], o["padding"], o["dilation"],
                                      o["groups"], relu=False))
                return
        if kind is BatchNormOp and x is not None and x.kind == "activation" and x.shape[0] > 0:
            self.lower_batch_norm(op, args, tensors, options, result)
            return
        if kind is ReLUOp and x is not None and x.kind == "activation":
            producer = x.producer
            if isinstance(producer, N.Add) and self.single_use(id(args[0])):
                self.lower_add_relu(producer, x, result)
                return
            fusable = isinstance(producer, (N.Conv, N.BatchNormTrain, N.FoldedConv, N.BatchNormEval))
            if fusable and not producer.relu and self.single_use(id(args[0])):
                producer.relu = True
                producer.output = self.values[id(result)] = x
                x.name, x.traced_id = x.name + "_relu", id(result)
                return
            self.add(N.ReLU([x], self.new_value(result, "relu")))
            return
        if kind is MaxPoolOp and x is not None and x.nhwc:
            self.add(N.MaxPool(x, self.new_value(result, "maxpool"), op.window))
            return
        if kind is AvgPoolOp and x is not None and x.nhwc:
            self.add(N.AvgPool(x, self.new_value(result, "avgpool"), args[1][:-1]))
            return
        if kind is AdaptiveAvgPoolOp and x is not None and x.nhwc:
            self.add(N.AdaptiveAvgPool([x], self.new_value(result, "adaptive_avgpool")))
            return
        if kind is ReshapeOp and x is not None and x.kind == "activation" and len(result.shape) == 2 \
                and result.shape[0] == x.shape[0] and (x.nhwc or len(x.shape) == 2):
            self.add(N.Flatten([x], self.new_value(result, "flatten")))
            return
        if kind is LinearOp and x is not None and len(x.shape) == 2 and x.kind == "activation":
            self.add(N.Linear(x, tensors[1], tensors[2], self.new_value(result, "linear")))
            return
        if kind is AddOp and None not in tensors and tensors[0].shape == tensors[1].shape \
                and tensors[0].nhwc == tensors[1].nhwc and tensors[0].dtype == tensors[1].dtype:
            self.add(N.Add(tensors, self.new_value(result, "add")))
            return
        if kind is CatOp and None not in tensors and len({v.nhwc for v in tensors}) == 1:
            axis = _NHWC_AXIS[options.get("dim", 1)] if tensors[0].nhwc else options.get("dim", 1)
            self.add(N.Cat(tensors, self.new_value(result, "cat"), axis))
            return
        if kind is DropoutOp and x is not None and x.kind == "activation":
            scale = float(args[2])
            p = options.get("p")
            if p is None:
                p = 1.0 if scale == 0 else 1.0 - 1.0 / scale
            self.add(N.Dropout(x, self.new_value(result, "dropout"), p, scale))
            return
        self.lower_fallback(op, args, tensors, options, result)

    def lower_add_relu(self, add, x, result):
        """relu(a + b) as one node; in training, a batch norm whose output only feeds the add joins it (a residual
        block's bn2 + shortcut + ReLU), so the block's end is one pass over memory."""
        a, b = add.inputs
        self.nodes.remove(add)
        x.name, x.traced_id = x.name + "_relu", id(result)
        self.values[id(result)] = x
        for normalized, shortcut in ((a, b), (b, a)):
            batch_norm = normalized.producer
            if type(batch_norm) is N.BatchNormTrain and not batch_norm.relu and normalized is not shortcut \
                    and self.single_use(normalized.traced_id):
                self.nodes.remove(batch_norm)
                self.add(N.BatchNormAddReLU(batch_norm, shortcut, x))
                return
        self.add(N.AddReLU([a, b], x))

    def lower_batch_norm(self, op, args, tensors, options, result):
        x = tensors[0]
        weight, bias = tensors[1], tensors[2]
        if options.get("training") and self.training:
            module = self.bn_modules.get(id(options["running_mean"])) if options.get("running_mean") is not None \
                else None
            out = self.new_value(result, "bn")
            self.add(N.BatchNormTrain(x, weight, bias, out, options.get("running_mean"), options.get("running_var"),
                                      options.get("momentum", 0.1), options.get("eps", 1e-5), module))
            return
        if not options.get("training") and not self.training and not _traced(args[1]) and not _traced(args[2]):
            gamma = None if args[1] is None else _data(args[1])
            beta = None if args[2] is None else _data(args[2])
            eps = options.get("eps", 1e-5)
            running_mean, running_var = options["running_mean"], options["running_var"]
            producer = x.producer
            if isinstance(producer, N.FoldedConv) and producer.bn is None and not producer.relu \
                    and self.single_use(x.traced_id):
                producer.bn = (running_mean, running_var, gamma, beta, eps)
                producer.output = self.values[id(result)] = x
                x.name, x.traced_id = x.name + "_bn", id(result)
                return
            self.add(N.BatchNormEval(x, self.new_value(result, "bn"), running_mean, running_var, gamma, beta, eps,
                                     relu=False))
            return
        self.lower_fallback(op, args, tensors, options, result)

    def lower_fallback(self, op, args, tensors, options, result):
        arguments = [v if v is not None else a for v, a in zip(tensors, args)]
        out = self.new_value(result, type(op).__name__.lower())
        needs = tuple(isinstance(a, N.Value) and a.needs_grad for a in arguments) if self.training \
            else (False,) * len(arguments)
        self.add(N.Fallback(type(op), arguments, dict(options), out, needs))


def _data(value):
    return value.data if isinstance(value, Tensor) else value


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
    heaps, and once freed they stay resident: when recording was an eager step with its whole tape, ResNet-20 at
    batch 256 kept 1.1 GiB after recording, on top of the graph's own 0.4 GiB arena, for the rest of the run.
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
        if update is not None and update.covers(params):
            update.attach_gradients()  # zero_grad() above may have detached them
            self.update = update
        else:
            self.update = FusedUpdate(optimizer, params)
        records = self._bind_labels(tracer.records, loss, y)
        lowering = _CrossEntropyLowering(records, x_tensor, model, training=True)
        forward = lowering.lower()
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


class _CrossEntropyLowering(_Lowering):
    def lower_one(self, op, args, options, result):
        if type(op) is CrossEntropyOp and options.get("reduction", "mean") in ("mean", "sum"):
            logits = self.value_of(args[0])
            if len(logits.shape) == 2 and logits.kind == "activation":
                out = N.Value((), result.dtype, "loss")
                self.values[id(result)] = out
                class_weight = options.get("class_weight")
                self.add(N.CrossEntropy(logits, out, options["target"], class_weight, options.get("ignore_index", -100),
                                        options.get("reduction", "mean"), options.get("label_smoothing", 0.0)))
                return
        super().lower_one(op, args, options, result)


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
        if graph is None:
            graph = self.graphs[key] = self._record(x)
            return_freed_memory()  # the traced forward's arrays are unreferenced once the graph is built
        forward, schedule, out_value = graph
        self.last = schedule
        forward[0].source = x
        for node in forward:
            node.forward()
        forward[0].source = None
        result = out_value.buffer.array
        return np.ascontiguousarray(result.transpose(0, 3, 1, 2)) if out_value.nhwc else result.copy()

    def _record(self, x):
        """(forward nodes, schedule, output value) of the eval-mode forward traced on batch x."""
        params = list(self.model.parameters())
        _check_batch(x, params[0].dtype if params else None)
        x_tensor = Tensor(x)
        with no_grad(), Tracer(keep_values=False) as tracer:
            output = tracer.stand_in(self.model(x_tensor))
        lowering = _Lowering(tracer.records, x_tensor, self.model, training=False)
        forward = lowering.lower()
        out_value = lowering.values.get(id(output))
        if out_value is None:
            raise ValueError("capture(model): the model's output is not computed by any op")
        return forward, _Schedule(forward, [], keep_alive=[out_value.buffer]), out_value

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
