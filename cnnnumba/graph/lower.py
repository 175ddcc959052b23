"""Lowering: each traced op becomes one graph node through the function its op class registers (`@lowers`).

An op with no lowering, or whose arguments its node cannot take (an NCHW-only case, a parameter where an activation
is expected), runs as a Fallback node. Lowering makes plain nodes only; the fusions are passes over its node list
(`fusion.py`), and `number_values` then names the values that remain.
"""
from ..autograd.arith import Add as AddOp
from ..autograd.arith import Reshape as ReshapeOp
from ..autograd.tensor import Tensor
from ..kernels.layout import HWIO_AXES
from ..ops.activation import Hardtanh as HardtanhOp
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
from .plan import Buffer
from .trace import TracedResult

LOWERINGS = {}  # op class (exactly, not its subclasses) -> function(lowering, op, args, values, options, result)

# NCHW axis -> NHWC axis, for ops given an NCHW dim
_NHWC_AXIS = {0: 0, 1: 3, 2: 1, 3: 2}


def lowers(op_class):
    """Register the decorated function as the lowering of `op_class`. It returns the node it added, or None to
    leave the op to a Fallback node; it may add a node only once it is sure to return it."""
    def register(function):
        LOWERINGS[op_class] = function
        return function
    return register


def _internal_shape(shape):
    return (shape[0], shape[2], shape[3], shape[1]) if len(shape) == 4 else tuple(shape)


def _data(value):
    return value.data if isinstance(value, Tensor) else value


def _traced(value):
    return isinstance(value, TracedResult)


class Lowering:
    """A trace's forward as plain graph nodes; `training` decides batch-norm handling and which values need
    gradients. `values` maps each traced tensor's id to its Value, `uses` counts each tensor's uses in the trace."""

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
        """The Value of an op's output, named `label` and a provisional number until `number_values`."""
        self.counter += 1
        value = N.Value(_internal_shape(result.shape), result.dtype, f"{label}{self.counter}")
        value.label, value.base = label, value.name
        value.traced_id = id(result)
        self.values[id(result)] = value
        return value

    def add(self, node):
        """Append `node`, which makes its output Value: set who produces it and whether it needs a gradient."""
        node.output.producer = node
        node.output.needs_grad = self.training and any(v.needs_grad for v in node.inputs)
        self.nodes.append(node)
        return node

    def single_use(self, value):
        """Whether the traced tensor `value` holds feeds exactly one op (so a fusion may absorb it)."""
        return self.uses.get(value.traced_id, 0) == 1

    def substitute(self, old_node, new_node):
        """Put `new_node` where `old_node` is in the node list; it makes its output as `add` says."""
        self.nodes[self.nodes.index(old_node)] = new_node
        new_node.output.producer = new_node
        new_node.output.needs_grad = self.training and any(v.needs_grad for v in new_node.inputs)

    def replace(self, old, new):
        """Every reader of Value `old` (nodes, traced tensors) reads `new` instead; `new` takes over old's traced
        tensor, so later fusions ask about the tensor that `new` now holds."""
        for node in self.nodes:
            node.replace_input(old, new)
        for key, value in self.values.items():
            if value is old:
                self.values[key] = new
        new.traced_id = old.traced_id

    def lower(self):
        """The plain (unfused) forward nodes, input node first."""
        for op, args, options, result in self.records:
            values = [self.value_of(a) if isinstance(a, Tensor) else None for a in args]
            lowering = LOWERINGS.get(type(op))
            node = lowering(self, op, args, values, options, result) if lowering is not None else None
            if node is None:
                self.add_fallback(op, args, values, options, result)
        return self.nodes

    def add_fallback(self, op, args, values, options, result):
        arguments = [v if v is not None else a for v, a in zip(values, args)]
        out = self.new_value(result, type(op).__name__.lower())
        needs = tuple(isinstance(a, N.Value) and a.needs_grad for a in arguments) if self.training \
            else (False,) * len(arguments)
        return self.add(N.Fallback(type(op), arguments, dict(options), out, needs))


def number_values(values):
    """Give each value the lowering made its label and a running number, one per traced op in trace order, except
    the ops a fusion absorbed into their producer; its buffers and its producer's follow the new name."""
    seen, count = set(), 0
    for value in values.values():
        if value.label is None or id(value) in seen:
            continue
        seen.add(id(value))
        count += 1
        old, new = value.base, f"{value.label}{count}"
        owned = vars(value.producer).values() if value.producer is not None else ()
        buffers = [value.buffer] + [b for b in owned if isinstance(b, Buffer)]
        for buffer in buffers:
            buffer.name = _rebased(buffer.name, old, new)
        value.name, value.base = _rebased(value.name, old, new), new


def _rebased(name, old, new):
    return new + name[len(old):] if name == old or name.startswith((old + ".", old + "_")) else name


def kernel_layouts(records):
    """id(parameter) -> the axes order a captured graph stores it in (graph/update.py): conv weights in the conv
    kernels' HWIO, so the conv nodes read them (and write their gradients) with no re-layout at each call."""
    return {id(args[1]): HWIO_AXES for op, args, _, _ in records
            if type(op) is ConvOp and isinstance(args[1], Tensor) and args[1].is_leaf}


@lowers(ConvOp)
def lower_conv(lowering, op, args, values, options, result):
    x = values[0]
    if x is None or not x.nhwc or values[1] is None:
        return None
    o = op.options
    if lowering.training:
        out = lowering.new_value(result, "conv")
        return lowering.add(N.Conv(x, values[1], values[2], out, o["stride"], o["padding"], o["dilation"],
                                   o["groups"]))
    if _traced(args[1]) or _traced(args[2]):  # folding batch norm in reads the weights' values
        return None
    out = lowering.new_value(result, "conv")
    bias = None if args[2] is None else _data(args[2])
    return lowering.add(N.FoldedConv(x, out, _data(args[1]), bias, None, o["stride"], o["padding"], o["dilation"],
                                     o["groups"]))


@lowers(BatchNormOp)
def lower_batch_norm(lowering, op, args, values, options, result):
    x, weight, bias = values[0], values[1], values[2]
    if x is None or x.kind != "activation" or x.shape[0] == 0:
        return None
    if options.get("training") and lowering.training:
        running_mean = options.get("running_mean")
        module = lowering.bn_modules.get(id(running_mean)) if running_mean is not None else None
        out = lowering.new_value(result, "bn")
        return lowering.add(N.BatchNormTrain(x, weight, bias, out, running_mean, options.get("running_var"),
                                             options.get("momentum", 0.1), options.get("eps", 1e-5), module))
    if not options.get("training") and not lowering.training and not _traced(args[1]) and not _traced(args[2]):
        gamma = None if args[1] is None else _data(args[1])
        beta = None if args[2] is None else _data(args[2])
        out = lowering.new_value(result, "bn")
        return lowering.add(N.BatchNormEval(x, out, options["running_mean"], options["running_var"], gamma, beta,
                                            options.get("eps", 1e-5)))
    return None


@lowers(ReLUOp)
def lower_relu(lowering, op, args, values, options, result):
    x = values[0]
    if x is None or x.kind != "activation":
        return None
    return lowering.add(N.ReLU([x], lowering.new_value(result, "relu")))


@lowers(HardtanhOp)
def lower_hardtanh(lowering, op, args, values, options, result):
    """Hardtanh and ReLU6 (Hardtanh with bounds 0 and 6)."""
    x = values[0]
    if x is None or x.kind != "activation":
        return None
    return lowering.add(N.Hardtanh(x, lowering.new_value(result, "hardtanh"), float(args[1]), float(args[2])))


@lowers(MaxPoolOp)
def lower_max_pool(lowering, op, args, values, options, result):
    x = values[0]
    if x is None or not x.nhwc:
        return None
    return lowering.add(N.MaxPool(x, lowering.new_value(result, "maxpool"), op.window))


@lowers(AvgPoolOp)
def lower_avg_pool(lowering, op, args, values, options, result):
    x = values[0]
    if x is None or not x.nhwc:
        return None
    return lowering.add(N.AvgPool(x, lowering.new_value(result, "avgpool"), args[1][:-1]))


@lowers(AdaptiveAvgPoolOp)
def lower_adaptive_avg_pool(lowering, op, args, values, options, result):
    x = values[0]
    if x is None or not x.nhwc:
        return None
    return lowering.add(N.AdaptiveAvgPool([x], lowering.new_value(result, "adaptive_avgpool")))


@lowers(ReshapeOp)
def lower_flatten(lowering, op, args, values, options, result):
    """Only the reshape that flattens each sample to a row: the one layout change at the output edge."""
    x = values[0]
    if x is None or x.kind != "activation" or len(result.shape) != 2 or result.shape[0] != x.shape[0] \
            or not (x.nhwc or len(x.shape) == 2):
        return None
    return lowering.add(N.Flatten([x], lowering.new_value(result, "flatten")))


@lowers(LinearOp)
def lower_linear(lowering, op, args, values, options, result):
    x = values[0]
    if x is None or len(x.shape) != 2 or x.kind != "activation":
        return None
    return lowering.add(N.Linear(x, values[1], values[2], lowering.new_value(result, "linear")))


@lowers(AddOp)
def lower_add(lowering, op, args, values, options, result):
    if None in values or values[0].shape != values[1].shape or values[0].nhwc != values[1].nhwc \
            or values[0].dtype != values[1].dtype:
        return None
    return lowering.add(N.Add(values, lowering.new_value(result, "add")))


@lowers(CatOp)
def lower_cat(lowering, op, args, values, options, result):
    if None in values or len({v.nhwc for v in values}) != 1:
        return None
    axis = _NHWC_AXIS[options.get("dim", 1)] if values[0].nhwc else options.get("dim", 1)
    return lowering.add(N.Cat(values, lowering.new_value(result, "cat"), axis))


@lowers(DropoutOp)
def lower_dropout(lowering, op, args, values, options, result):
    x = values[0]
    if x is None or x.kind != "activation":
        return None
    scale = float(args[2])
    p = options.get("p")
    if p is None:
        p = 1.0 if scale == 0 else 1.0 - 1.0 / scale
    return lowering.add(N.Dropout(x, lowering.new_value(result, "dropout"), p, scale))


@lowers(CrossEntropyOp)
def lower_cross_entropy(lowering, op, args, values, options, result):
    """A training step's loss; its target is the buffer the step fills with each batch's labels."""
    logits = values[0]
    if logits is None or not lowering.training or options.get("reduction", "mean") not in ("mean", "sum") \
            or len(logits.shape) != 2 or logits.kind != "activation":
        return None
    out = N.Value((), result.dtype, "loss")
    lowering.values[id(result)] = out
    return lowering.add(N.CrossEntropy(logits, out, options["target"], options.get("class_weight"),
                                       options.get("ignore_index", -100), options.get("reduction", "mean"),
                                       options.get("label_smoothing", 0.0)))
