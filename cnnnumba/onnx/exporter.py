"""`export`: trace a model's eval-mode forward and write it as an ONNX graph with a dynamic batch axis.

The trace is graph capture's Tracer: every op a forward applies, with its arguments, options and result, so a
model's own Python (residual adds, concatenation, any control flow that ran) becomes the graph that ran.
Parameters and buffers keep their state-dict names as initializer names; eval-mode batch norm is exported as
BatchNormalization.
"""
import numpy as np

from .. import shapes
from ..autograd import arith
from ..autograd.grad_mode import no_grad
from ..autograd.tensor import Tensor
from ..graph.trace import Tracer
from ..io.atomic import write_atomically
from ..ops import activation, conv, dropout, linear, loss, merge, norm, pool
from ._onnx import require_onnx

MIN_OPSET = 13  # Clip's bounds as inputs (11), Softmax over one axis (13)


class _GraphBuilder:
    """Collects nodes and initializers, naming every traced tensor once."""

    def __init__(self, model, onnx):
        self.onnx = onnx
        self.nodes, self.initializers = [], []
        self.names = {}  # id(tensor or array) -> ONNX value name
        self.keep = []   # what `names` refers to, alive until the graph is built
        self.state_names = {id(p): name for name, p in model.named_parameters()}
        self.state_names.update({id(b): name for name, b in model.named_buffers()})
        self.used = set()
        self.counter = 0

    def fresh(self, hint):
        self.counter += 1
        return f"{hint}_{self.counter}"

    def constant(self, array, hint):
        name = hint if hint not in self.used else self.fresh(hint)
        self.used.add(name)
        array = np.asarray(array)  # not ascontiguousarray, which makes a 0-d array (Clip's bounds) 1-d
        self.initializers.append(self.onnx.numpy_helper.from_array(np.array(array, order="C"), name))
        return name

    def value(self, tensor):
        """The ONNX name of a traced result, the input, a parameter or buffer (an initializer), or a constant."""
        key = id(tensor)
        if key not in self.names:
            array = tensor.data if isinstance(tensor, Tensor) else np.asarray(tensor)
            self.names[key] = self.constant(array, self.state_names.get(key, "constant"))
            self.keep.append(tensor)
        return self.names[key]

    def node(self, op_type, inputs, result, **attributes):
        output = self.fresh(op_type.lower())
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [output], name=output, **attributes))
        self.names[id(result)] = output
        self.keep.append(result)
        return output


def _floor_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _ceil_mode(input_hw, out_hw, kernel, stride, padding, dilation=(1, 1)):
    return int(any(out != _floor_size(size, k, s, p, d)
                   for size, out, k, s, p, d in zip(input_hw, out_hw, kernel, stride, padding, dilation)))


def _conv(builder, op, args, options, result):
    x, weight, bias = args
    o = op.options
    kernel = weight.shape[2:]
    (top, bottom), (left, right) = shapes.conv_padding(options.get("padding", 0), x.shape[2:], kernel, o["stride"],
                                                       o["dilation"])
    inputs = [builder.value(x), builder.value(weight)] + ([] if bias is None else [builder.value(bias)])
    builder.node("Conv", inputs, result, kernel_shape=list(kernel), strides=list(o["stride"]),
                 pads=[top, left, bottom, right], dilations=list(o["dilation"]), group=o["groups"])


def _batch_norm(builder, op, args, options, result):
    x, weight, bias = args
    if options.get("training") or options.get("running_mean") is None:
        raise ValueError("cn.onnx.export: batch_norm with batch statistics (training=True or no running "
                         "statistics) has no ONNX inference mapping")
    channels = x.shape[1]
    dtype = x.dtype
    scale = builder.value(weight) if weight is not None else builder.constant(np.ones(channels, dtype), "bn_scale")
    shift = builder.value(bias) if bias is not None else builder.constant(np.zeros(channels, dtype), "bn_bias")
    builder.node("BatchNormalization", [builder.value(x), scale, shift, builder.value(options["running_mean"]),
                                        builder.value(options["running_var"])], result,
                 epsilon=float(options.get("eps", 1e-5)))


def _linear(builder, op, args, options, result):
    x, weight, bias = args
    if len(x.shape) != 2:
        raise ValueError(f"cn.onnx.export: linear on a {len(x.shape)}-D input has no Gemm mapping (2-D only)")
    inputs = [builder.value(x), builder.value(weight)] + ([] if bias is None else [builder.value(bias)])
    builder.node("Gemm", inputs, result, transB=1)


def _hardtanh(builder, op, args, options, result):
    x, low, high = args
    dtype = x.dtype
    builder.node("Clip", [builder.value(x), builder.constant(np.array(low, dtype), "clip_min"),
                          builder.constant(np.array(high, dtype), "clip_max")], result)


def _max_pool(builder, op, args, options, result):
    x, (kernel, stride, padding, dilation, out_hw) = args
    builder.node("MaxPool", [builder.value(x)], result, kernel_shape=list(kernel), strides=list(stride),
                 pads=[padding[0], padding[1], padding[0], padding[1]], dilations=list(dilation),
                 ceil_mode=_ceil_mode(x.shape[2:], out_hw, kernel, stride, padding, dilation))


def _avg_pool(builder, op, args, options, result):
    x, window = args
    kh, kw, sh, sw, ph, pw, count_include_pad, divisor, out_hw = window
    if divisor:
        raise ValueError("cn.onnx.export: avg_pool2d with divisor_override has no ONNX mapping")
    builder.node("AveragePool", [builder.value(x)], result, kernel_shape=[kh, kw], strides=[sh, sw],
                 pads=[ph, pw, ph, pw], count_include_pad=int(count_include_pad),
                 ceil_mode=_ceil_mode(x.shape[2:], out_hw, (kh, kw), (sh, sw), (ph, pw)))


def _adaptive_avg_pool(builder, op, args, options, result):
    x, out_hw = args
    in_hw = x.shape[2:]
    if tuple(out_hw) == (1, 1):
        builder.node("GlobalAveragePool", [builder.value(x)], result)
        return
    if any(size % out for size, out in zip(in_hw, out_hw)):
        raise ValueError(f"cn.onnx.export: adaptive_avg_pool2d from {tuple(in_hw)} to {tuple(out_hw)} has no ONNX "
                         "mapping (only output (1, 1), or sizes that divide the input's)")
    kernel = [size // out for size, out in zip(in_hw, out_hw)]
    builder.node("AveragePool", [builder.value(x)], result, kernel_shape=kernel, strides=kernel)


def _reshape(builder, op, args, options, result):
    x = args[0]
    if not x.shape or not result.shape or result.shape[0] != x.shape[0]:
        raise ValueError(f"cn.onnx.export: reshape from {tuple(x.shape)} to {tuple(result.shape)} changes the batch "
                         "dimension, which the exported graph keeps dynamic")
    if len(result.shape) == 2:
        builder.node("Flatten", [builder.value(x)], result, axis=1)
        return
    shape = np.array([0, *result.shape[1:]], dtype=np.int64)  # 0: copy the (dynamic) batch size
    builder.node("Reshape", [builder.value(x), builder.constant(shape, "shape")], result)


def _elementwise(op_type, **attributes):
    def convert(builder, op, args, options, result):
        builder.node(op_type, [builder.value(a) for a in args if isinstance(a, (Tensor, np.ndarray))], result,
                     **attributes)
    return convert


def _leaky_relu(builder, op, args, options, result):
    builder.node("LeakyRelu", [builder.value(args[0])], result, alpha=float(args[1]))


def _concat(builder, op, args, options, result):
    builder.node("Concat", [builder.value(a) for a in args], result, axis=int(options.get("dim", 1)))


def _softmax(op_type):
    def convert(builder, op, args, options, result):
        builder.node(op_type, [builder.value(args[0])], result, axis=int(args[1]))
    return convert


CONVERTERS = {
    conv.Conv2d: _conv, norm.BatchNorm: _batch_norm, linear.Linear: _linear,
    activation.ReLU: _elementwise("Relu"), activation.Hardtanh: _hardtanh, activation.LeakyReLU: _leaky_relu,
    activation.Sigmoid: _elementwise("Sigmoid"), activation.Tanh: _elementwise("Tanh"),
    pool.MaxPool2d: _max_pool, pool.AvgPool2d: _avg_pool, pool.AdaptiveAvgPool2d: _adaptive_avg_pool,
    arith.Reshape: _reshape, arith.Add: _elementwise("Add"), arith.Sub: _elementwise("Sub"),
    arith.Mul: _elementwise("Mul"), arith.Div: _elementwise("Div"), arith.MatMul: _elementwise("MatMul"),
    merge.Cat: _concat, loss.Softmax: _softmax("Softmax"), loss.LogSoftmax: _softmax("LogSoftmax"),
}
_NO_MAPPING_HINT = {activation.GELU: " (ONNX has Gelu from opset 20 only)",
                    dropout.Dropout: " (training-mode dropout; export calls model.eval(), so this model applies "
                                     "dropout with training=True itself)"}


def _trace(model, x):
    """The records of one eval-mode forward of `model` on `x`, and its output; train/eval flags restored."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        with no_grad(), Tracer(keep_values=True) as tracer:
            output = model(x)
    finally:
        for module, training in modes:
            module.training = training
    return tracer.records, output


def _example_tensor(model, example_input):
    x = example_input if isinstance(example_input, Tensor) else Tensor(np.asarray(example_input))
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"cn.onnx.export: example_input must be a batch (N, ...) with N >= 1, but got shape "
                         f"{tuple(x.shape)}")
    params = list(model.parameters())
    if params and x.dtype != params[0].dtype:
        raise TypeError(f"cn.onnx.export: example_input dtype ({x.dtype}) and the model's parameters "
                        f"({params[0].dtype}) should be the same")
    return x


def build_model_proto(model, example_input, opset_version=17, input_name="input", output_name="output"):
    """The ONNX ModelProto of `model` traced on `example_input` (its first axis becomes a dynamic "batch")."""
    onnx = require_onnx()
    if not (hasattr(model, "named_parameters") and callable(model)):
        raise TypeError(f"cn.onnx.export: expected an nn.Module, but got {type(model).__name__}")
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset_version, bool) or not isinstance(opset_version, int) \
            or not MIN_OPSET <= opset_version <= newest:
        raise ValueError(f"cn.onnx.export: opset_version must be an int from {MIN_OPSET} to {newest}, but got "
                         f"{opset_version!r}")
    x = _example_tensor(model, example_input)
    records, output = _trace(model, x)
    if not isinstance(output, Tensor):
        raise TypeError(f"cn.onnx.export: the model must return one Tensor, but it returned "
                        f"{type(output).__name__}")
    builder = _GraphBuilder(model, onnx)
    builder.names[id(x)] = input_name
    for op, args, options, result in records:
        convert = CONVERTERS.get(type(op))
        if convert is None:
            name = type(op).__name__
            raise ValueError(f"cn.onnx.export: op {name} has no ONNX mapping{_NO_MAPPING_HINT.get(type(op), '')}; "
                             f"supported: {', '.join(sorted(c.__name__ for c in CONVERTERS))}")
        convert(builder, op, args, options, result)
    produced = builder.nodes[-1].output[0] if builder.nodes else None
    if builder.names.get(id(output)) == produced:
        builder.nodes[-1].output[0] = output_name  # the last node: nothing after it reads the old name
    else:  # an earlier result, the input or a constant, returned as is
        builder.node("Identity", [builder.value(output)], output)
        builder.nodes[-1].output[0] = output_name
    elem_type = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(x.dtype))
    graph = onnx.helper.make_graph(
        builder.nodes, type(model).__name__,
        [onnx.helper.make_tensor_value_info(input_name, elem_type, ["batch", *x.shape[1:]])],
        [onnx.helper.make_tensor_value_info(output_name, elem_type, ["batch", *output.shape[1:]])],
        initializer=builder.initializers)
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset_version)],
                                   producer_name="cnnnumba")
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export(model, example_input, path, opset_version=17, input_name="input", output_name="output"):
    """Write `model` (traced in eval mode on `example_input`, as torch.onnx.export) to `path` as ONNX, checked by
    onnx.checker, with a dynamic batch axis; atomically, as checkpoints are written. Returns the ModelProto."""
    proto = build_model_proto(model, example_input, opset_version, input_name, output_name)
    data = proto.SerializeToString()
    write_atomically(path, lambda file: file.write(data))
    return proto
