"""`load`: build a trainable cnnnumba model from an ONNX file of the supported ops (a CNN exported by any framework).

Convolutions, batch norms and Gemm/MatMul with constant weights become nn.Conv2d, nn.BatchNorm2d and nn.Linear
modules, so their weights are parameters; where an initializer is named like a state-dict entry ("layer1.0.conv1
.weight", as cn.onnx.export and torch.onnx.export without folding write them) the module takes that path, so the
loaded model's state_dict keys are the original model's. The rest of the graph runs through cnnnumba's functions
in the file's (topological) node order.
"""
import math
import os

import numpy as np

from .. import functional as F
from .. import nn
from ..autograd.tensor import Tensor
from ._onnx import require_onnx

SUPPORTED_OPS = ("Add", "AveragePool", "BatchNormalization", "Clip", "Concat", "Constant", "Conv", "Div", "Dropout",
                 "Flatten", "Gemm", "GlobalAveragePool", "Identity", "LeakyRelu", "LogSoftmax", "MatMul", "MaxPool",
                 "Mul", "Relu", "Reshape", "Sigmoid", "Softmax", "Sub", "Tanh")
# attributes each op may carry (others are refused by name)
_ATTRIBUTES = {
    "Conv": {"kernel_shape", "strides", "pads", "dilations", "group", "auto_pad"},
    "BatchNormalization": {"epsilon", "momentum", "training_mode", "spatial"},
    "Gemm": {"alpha", "beta", "transA", "transB"},
    "MaxPool": {"kernel_shape", "strides", "pads", "dilations", "ceil_mode", "auto_pad", "storage_order"},
    "AveragePool": {"kernel_shape", "strides", "pads", "ceil_mode", "count_include_pad", "auto_pad"},
    "Clip": {"min", "max"}, "Concat": {"axis"}, "Flatten": {"axis"}, "Reshape": {"allowzero"},
    "LeakyRelu": {"alpha"}, "Softmax": {"axis"}, "LogSoftmax": {"axis"}, "Dropout": {"seed", "ratio"},
    "Constant": {"value"},
}


class OnnxImportError(ValueError):
    """An ONNX file that cannot be built into a cnnnumba model: unreadable, or an op or attribute not supported."""


def _decimal(value):
    """A float attribute (ONNX stores float32) as the shortest decimal that rounds to it: the 1e-5 a model was
    exported with, not float32's 9.99999974738e-06, which changes batch statistics over few values."""
    return float(str(np.float32(value)))


def _node_label(node, index):
    return f"{node.op_type} node {node.name or index!r}"


class OnnxModel(nn.Module):
    """The modules of an imported ONNX graph, and `forward` that runs its nodes in order."""

    def __init__(self):
        super().__init__()
        object.__setattr__(self, "steps", [])       # (input names, output name, function of the inputs)
        object.__setattr__(self, "constants", {})   # name -> ndarray (initializers not held by a module)
        object.__setattr__(self, "input_name", None)
        object.__setattr__(self, "output_name", None)

    def forward(self, x):
        values = {self.input_name: x if isinstance(x, Tensor) else Tensor(np.asarray(x))}
        for inputs, output, function in self.steps:
            values[output] = function(*(values[name] if name in values else self.constants.get(name)
                                        for name in inputs))
        return values[self.output_name]


class _Builder:
    def __init__(self, proto, onnx, source):
        self.onnx, self.source = onnx, source
        self.graph = proto.graph
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        if self.opset is None:
            raise OnnxImportError(f"{source}: the model imports no default-domain ONNX opset")
        self.constants = {t.name: onnx.numpy_helper.to_array(t) for t in self.graph.initializer}
        self.model = OnnxModel()
        self.claimed = set()  # initializers a module holds as its parameters or buffers
        self.counter = 0

    def fail(self, node, index, what):
        return OnnxImportError(f"{self.source}: {_node_label(node, index)}: {what}")

    def constant(self, node, index, position, what):
        name = node.input[position] if position < len(node.input) else ""
        if name not in self.constants:
            raise self.fail(node, index, f"{what} (input {position}) must be a constant initializer")
        return self.constants[name]

    def attributes(self, node, index):
        allowed = _ATTRIBUTES.get(node.op_type, set())
        result = {}
        for attribute in node.attribute:
            if attribute.name not in allowed:
                raise self.fail(node, index, f"attribute {attribute.name!r} is not supported")
            result[attribute.name] = self.onnx.helper.get_attribute_value(attribute)
        return result

    def place(self, module, weight_name, op_type):
        """Register `module` under the state-dict path its weight's name gives, or a name of its own."""
        prefix, _, leaf = weight_name.rpartition(".")
        parts = prefix.split(".") if prefix and leaf in ("weight", "bias") else []
        if parts and all(p.isidentifier() or p.isdigit() for p in parts):
            owner = self.model
            try:
                for part in parts[:-1]:
                    if owner._modules.get(part) is None:
                        owner.add_module(part, nn.Module())
                    owner = owner._modules[part]
                if parts[-1] in owner._modules:
                    raise KeyError(parts[-1])
                owner.add_module(parts[-1], module)
                return module
            except KeyError:  # the name is taken (by a module or an attribute): a name of its own, below
                pass
        self.counter += 1
        while f"{op_type}{self.counter}" in self.model._modules or hasattr(self.model, f"{op_type}{self.counter}"):
            self.counter += 1
        self.model.add_module(f"{op_type}{self.counter}", module)
        return module

    def step(self, node, inputs, function):
        self.model.steps.append((list(inputs), node.output[0], function))

    def claim(self, node, positions):
        self.claimed.update(node.input[p] for p in positions if p < len(node.input) and node.input[p])

    # ----- one method per op -----

    def pads(self, node, index, attributes, spatial=2):
        auto_pad = attributes.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if auto_pad not in ("NOTSET", "VALID"):
            raise self.fail(node, index, f"attribute 'auto_pad' = {auto_pad!r} is not supported (give pads)")
        pads = list(attributes.get("pads", [0] * 2 * spatial)) if auto_pad == "NOTSET" else [0] * 2 * spatial
        if pads[:spatial] != pads[spatial:]:
            raise self.fail(node, index, f"attribute 'pads' = {pads} is asymmetric, which is not supported")
        return tuple(pads[:spatial])

    def Conv(self, node, index, attributes):
        weight = self.constant(node, index, 1, "the weight")
        bias = self.constant(node, index, 2, "the bias") if len(node.input) > 2 and node.input[2] else None
        if weight.ndim != 4:
            raise self.fail(node, index, f"only 2-D convolution is supported, but the weight has shape {weight.shape}")
        kernel = tuple(attributes.get("kernel_shape", weight.shape[2:]))
        if kernel != weight.shape[2:]:
            raise self.fail(node, index, f"attribute 'kernel_shape' = {list(kernel)} does not match the weight's "
                                         f"{list(weight.shape[2:])}")
        groups = int(attributes.get("group", 1))
        conv = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], kernel,
                         stride=tuple(attributes.get("strides", (1, 1))), padding=self.pads(node, index, attributes),
                         dilation=tuple(attributes.get("dilations", (1, 1))), groups=groups, bias=bias is not None,
                         dtype=weight.dtype)
        conv.weight.data[...] = weight
        if bias is not None:
            conv.bias.data[...] = bias
        self.claim(node, (1, 2))
        self.step(node, node.input[:1], self.place(conv, node.input[1], "conv"))

    def BatchNormalization(self, node, index, attributes):
        if attributes.get("training_mode", 0):
            raise self.fail(node, index, "attribute 'training_mode' = 1 is not supported (export in eval mode)")
        if len(node.output) > 1 and any(node.output[1:]):
            raise self.fail(node, index, "outputs running_mean/running_var (training mode) are not supported")
        scale, bias, mean, var = (self.constant(node, index, p, what) for p, what in
                                  ((1, "scale"), (2, "B"), (3, "input_mean"), (4, "input_var")))
        # ONNX's momentum weighs the running value (running * momentum + batch * (1 - momentum)): PyTorch's is 1 - it
        bn = nn.BatchNorm2d(scale.shape[0], eps=_decimal(attributes.get("epsilon", 1e-5)),
                            momentum=_decimal(1.0 - _decimal(attributes.get("momentum", 0.9))), dtype=scale.dtype)
        bn.weight.data[...], bn.bias.data[...] = scale, bias
        bn.running_mean[...], bn.running_var[...] = mean, var
        self.claim(node, (1, 2, 3, 4))
        self.step(node, node.input[:1], self.place(bn, node.input[1], "batchnorm"))

    def _linear(self, node, index, weight, bias, weight_name):
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
        linear.weight.data[...] = weight
        if bias is not None:
            linear.bias.data[...] = bias
        self.step(node, node.input[:1], self.place(linear, weight_name, "linear"))

    def Gemm(self, node, index, attributes):
        if attributes.get("transA", 0):
            raise self.fail(node, index, "attribute 'transA' = 1 is not supported")
        weight = self.constant(node, index, 1, "B")
        weight = weight if attributes.get("transB", 0) else weight.T
        weight = weight * weight.dtype.type(_decimal(attributes.get("alpha", 1.0)))
        bias = None
        if len(node.input) > 2 and node.input[2]:
            bias = self.constant(node, index, 2, "C") * weight.dtype.type(_decimal(attributes.get("beta", 1.0)))
            if bias.size != weight.shape[0] or (bias.ndim == 2 and bias.shape[0] != 1) or bias.ndim > 2:
                raise self.fail(node, index, f"C of shape {bias.shape} is not a bias of {weight.shape[0]} outputs")
            bias = bias.reshape(-1)
        self.claim(node, (1, 2))
        self._linear(node, index, np.ascontiguousarray(weight), bias, node.input[1])

    def MatMul(self, node, index, attributes):
        if node.input[1] in self.constants and self.constants[node.input[1]].ndim == 2:
            self.claim(node, (1,))
            self._linear(node, index, np.ascontiguousarray(self.constants[node.input[1]].T), None, node.input[1])
        else:
            self.step(node, node.input[:2], F.matmul)

    def Clip(self, node, index, attributes):
        if self.opset < 11:
            low, high = attributes.get("min", -math.inf), attributes.get("max", math.inf)
        else:
            low = self.constant(node, index, 1, "min").item() if len(node.input) > 1 and node.input[1] else -math.inf
            high = self.constant(node, index, 2, "max").item() if len(node.input) > 2 and node.input[2] else math.inf
        if (low, high) == (0.0, 6.0):
            module = nn.ReLU6()
        else:
            module = nn.Hardtanh(low, high)
        self.step(node, node.input[:1], module)

    def _pool(self, node, index, attributes):
        if "kernel_shape" not in attributes:
            raise self.fail(node, index, "attribute 'kernel_shape' is required")
        kernel = tuple(attributes["kernel_shape"])
        if len(kernel) != 2:
            raise self.fail(node, index, f"only 2-D pooling is supported, but kernel_shape is {list(kernel)}")
        return kernel, tuple(attributes.get("strides", (1, 1))), self.pads(node, index, attributes)

    def MaxPool(self, node, index, attributes):
        if attributes.get("storage_order", 0):
            raise self.fail(node, index, "attribute 'storage_order' = 1 is not supported")
        if len(node.output) > 1 and node.output[1]:
            raise self.fail(node, index, "the Indices output is not supported")
        kernel, stride, padding = self._pool(node, index, attributes)
        module = nn.MaxPool2d(kernel, stride, padding, tuple(attributes.get("dilations", (1, 1))),
                              ceil_mode=bool(attributes.get("ceil_mode", 0)))
        self.step(node, node.input[:1], module)

    def AveragePool(self, node, index, attributes):
        kernel, stride, padding = self._pool(node, index, attributes)
        module = nn.AvgPool2d(kernel, stride, padding, ceil_mode=bool(attributes.get("ceil_mode", 0)),
                              count_include_pad=bool(attributes.get("count_include_pad", 0)))
        self.step(node, node.input[:1], module)

    def GlobalAveragePool(self, node, index, attributes):
        self.step(node, node.input[:1], lambda x: F.adaptive_avg_pool2d(x, 1))

    def Flatten(self, node, index, attributes):
        axis = int(attributes.get("axis", 1))

        def flatten(x):
            at = axis if axis >= 0 else axis + x.ndim
            return x.reshape(int(np.prod(x.shape[:at], dtype=np.int64)), -1)
        self.step(node, node.input[:1], flatten)

    def Reshape(self, node, index, attributes):
        if attributes.get("allowzero", 0):
            raise self.fail(node, index, "attribute 'allowzero' = 1 is not supported")
        shape = [int(s) for s in self.constant(node, index, 1, "the shape")]

        def reshape(x, _shape_input=None):
            return x.reshape(*(x.shape[i] if s == 0 else s for i, s in enumerate(shape)))
        self.step(node, node.input[:1], reshape)

    def Concat(self, node, index, attributes):
        if "axis" not in attributes:
            raise self.fail(node, index, "attribute 'axis' is required")
        axis = int(attributes["axis"])
        self.step(node, node.input, lambda *tensors: F.cat(list(tensors), dim=axis))

    def Dropout(self, node, index, attributes):
        ratio = float(self.constant(node, index, 1, "ratio")) if len(node.input) > 1 and node.input[1] \
            else _decimal(attributes.get("ratio", 0.5))
        if len(node.input) > 2 and node.input[2]:
            raise self.fail(node, index, "input 'training_mode' is not supported (the module's train/eval decides)")
        self.step(node, node.input[:1], self.place(nn.Dropout(ratio), "", "dropout"))

    def Constant(self, node, index, attributes):
        if "value" not in attributes:
            raise self.fail(node, index, "only the 'value' attribute is supported")
        self.constants[node.output[0]] = self.onnx.numpy_helper.to_array(attributes["value"])

    def _axis(self, function, default):
        def build(node, index, attributes):
            if self.opset < 13:
                raise self.fail(node, index, f"opset {self.opset} semantics (a 2-D coercion) are not supported; "
                                             "export with opset 13 or newer")
            axis = int(attributes.get("axis", default))
            self.step(node, node.input[:1], lambda x: function(x, dim=axis))
        return build

    def _simple(self, function, arity=1):
        def build(node, index, attributes):
            self.step(node, node.input[:arity], function)
        return build

    def build(self):
        ops = {"Relu": self._simple(F.relu), "Sigmoid": self._simple(F.sigmoid), "Tanh": self._simple(F.tanh),
               "Identity": self._simple(lambda x: x), "Add": self._simple(lambda a, b: _tensor(a) + b, 2),
               "Sub": self._simple(lambda a, b: _tensor(a) - b, 2), "Mul": self._simple(lambda a, b: _tensor(a) * b, 2),
               "Div": self._simple(lambda a, b: _tensor(a) / b, 2), "Softmax": self._axis(F.softmax, -1),
               "LogSoftmax": self._axis(F.log_softmax, -1),
               "LeakyRelu": lambda node, index, attributes: self.step(
                   node, node.input[:1], nn.LeakyReLU(_decimal(attributes.get("alpha", 0.01))))}
        for index, node in enumerate(self.graph.node):
            if node.domain not in ("", "ai.onnx"):
                raise self.fail(node, index, f"domain {node.domain!r} is not supported")
            if node.op_type not in SUPPORTED_OPS:
                raise self.fail(node, index, f"op {node.op_type!r} is not supported; supported ops: "
                                             f"{', '.join(SUPPORTED_OPS)}")
            attributes = self.attributes(node, index)
            if node.op_type == "Identity" and node.input[0] in self.constants:  # torch.onnx aliases shared weights
                self.constants[node.output[0]] = self.constants[node.input[0]]
                continue
            handler = ops.get(node.op_type) or getattr(self, node.op_type)
            handler(node, index, attributes)
        self.finish()
        return self.model

    def finish(self):
        initializer_names = set(self.constants)
        inputs = [v for v in self.graph.input if v.name not in initializer_names]
        if len(inputs) != 1 or len(self.graph.output) != 1:
            raise OnnxImportError(f"{self.source}: expected a graph with one input and one output, but it has "
                                  f"{len(inputs)} inputs and {len(self.graph.output)} outputs")
        object.__setattr__(self.model, "input_name", inputs[0].name)
        object.__setattr__(self.model, "output_name", self.graph.output[0].name)
        self.model.constants.update((name, Tensor(array)) for name, array in self.constants.items()
                                    if name not in self.claimed)
        known = {inputs[0].name} | set(self.constants)
        for inputs_, output, _ in self.model.steps:
            missing = [name for name in inputs_ if name and name not in known]
            if missing:
                raise OnnxImportError(f"{self.source}: value {missing[0]!r} is used before any node computes it")
            known.add(output)
        if self.model.output_name not in known:
            raise OnnxImportError(f"{self.source}: no node computes the output {self.model.output_name!r}")


def _tensor(value):
    return value if isinstance(value, Tensor) else Tensor(np.asarray(value))


def load(path):
    """A trainable cnnnumba model (an nn.Module) from the ONNX file at `path`; raises OnnxImportError naming the op
    or attribute it cannot build, or why the file is unreadable."""
    onnx = require_onnx()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no ONNX file at {path}")
    try:
        proto = onnx.load(path)
    except Exception as error:  # protobuf's DecodeError and friends
        raise OnnxImportError(f"{path}: not a readable ONNX file (truncated or corrupt): {error}") from None
    if not proto.graph.node:
        raise OnnxImportError(f"{path}: not a readable ONNX file (no graph nodes)")
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as error:
        raise OnnxImportError(f"{path}: the ONNX checker refuses the model: {str(error).splitlines()[0]}") from None
    return _Builder(proto, onnx, path).build()
