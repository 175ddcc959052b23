"""The public-API cases of bench/compare_outputs.py: functional ops with backward, and captured model training.

Functional cases run an op (or a small chain) on NCHW Tensors, backward with a fixed random output gradient, and
give the output and every input's gradient. Model cases train cn.models.lenet5(), cifar_cnn() and resnet20() for
three captured SGD-momentum steps and give the losses, every entry of the state_dict and the logits of captured
inference. `api_cases()` maps each case's name to a function returning {output name: ndarray}.
"""
from functools import partial

import numpy as np

DTYPES = (np.float32, np.float64)


def _run_functional(fn, arrays, dtype, seed=0):
    """fn(*Tensors) on float arrays as `dtype` (integer arrays pass unchanged), then backward with a fixed random
    output gradient (or none for a scalar output): {"out", "grad[i]" for each float input}."""
    import cnnnumba as cn

    cn.manual_seed(seed)
    inputs = [cn.Tensor(a.astype(dtype), requires_grad=True) if a.dtype.kind == "f" else a for a in arrays]
    out = fn(*inputs)
    if out.data.size == 1:
        out.backward()
    else:
        out.backward(np.random.default_rng(seed + 1).standard_normal(out.shape).astype(dtype))
    outputs = {"out": np.array(out.data)}
    for index, tensor in enumerate(inputs):
        if isinstance(tensor, cn.Tensor):
            outputs[f"grad[{index}]"] = np.array(tensor.grad)
    return outputs


def _normal(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape)


def _conv(options):
    from cnnnumba import functional as F

    return lambda x, w, b: F.conv2d(x, w, b, **options)


# (x shape NCHW, weight shape (C_out, C_in/groups, kH, kW), options): one per conv variant through the op layer
FUNCTIONAL_CONV = [
    ((2, 3, 9, 9), (4, 3, 3, 3), dict(padding=1)),                            # few channels
    ((2, 16, 8, 8), (16, 16, 3, 3), dict(padding=1)),                         # Winograd F(4x4)
    ((2, 64, 6, 6), (64, 64, 3, 3), dict(padding=1)),                         # Winograd F(2x2)
    ((2, 16, 9, 12), (32, 16, 3, 3), dict(stride=2, padding=1)),              # register tiles, stride 2
    ((2, 32, 8, 10), (32, 32, 5, 5), dict(padding="same")),                   # register tiles, 5x5, "same"
    ((2, 16, 8, 8), (32, 16, 1, 1), dict(stride=2)),                          # 1x1 pointwise, stride 2
    ((2, 8, 9, 9), (8, 8, 3, 3), dict(stride=2, padding=1)),                  # im2col GEMM
    ((1, 4, 7, 8), (6, 2, 3, 3), dict(padding=2, dilation=2, groups=2)),      # general: groups, dilation
    ((1, 1, 12, 12), (6, 1, 5, 5), dict(padding=2)),                          # LeNet-5's first layer, batch 1
]


def functional_conv_case(x_shape, w_shape, options, dtype):
    arrays = [_normal(0, *x_shape), _normal(1, *w_shape) * 0.2, _normal(2, w_shape[0])]
    return _run_functional(_conv(options), arrays, dtype)


FUNCTIONAL_OPS = ("max_pool2d", "max_pool2d_ceil", "max_pool2d_16", "avg_pool2d", "adaptive_avg_pool2d",
                  "batch_norm_train", "batch_norm_eval", "relu", "leaky_relu", "gelu", "sigmoid", "tanh", "dropout",
                  "linear", "matmul", "softmax", "log_softmax", "cross_entropy", "mse_loss", "chain")


def _functional_ops():
    """name: (fn on Tensors, input arrays)."""
    from cnnnumba import functional as F

    x = _normal(0, 2, 5, 7, 6)
    images = _normal(3, 2, 16, 8, 8)
    logits, labels = _normal(4, 6, 5), np.array([0, 4, 2, 1, 3, 0], np.int64)
    running = {}

    def batch_norm(training):
        def run(x, weight, bias):
            mean, var = np.zeros(x.shape[1], x.dtype), np.ones(x.shape[1], x.dtype)
            running.update(mean=mean, var=var)
            return F.batch_norm(x, mean, var, weight, bias, training=training, momentum=0.1, eps=1e-5)
        return run

    def chain(x, w, weight, bias, fc, fc_bias):
        y = F.relu(F.batch_norm(F.conv2d(x, w, padding=1), None, None, weight, bias, training=True))
        y = F.flatten(F.max_pool2d(y, 2), 1)
        return F.cross_entropy(F.linear(y, fc, fc_bias), np.array([1, 3], np.int64), label_smoothing=0.1)

    return {
        "max_pool2d": (lambda t: F.max_pool2d(t, 2), [x]),
        "max_pool2d_ceil": (lambda t: F.max_pool2d(t, 3, stride=2, padding=1, ceil_mode=True), [x]),
        "max_pool2d_16": (lambda t: F.max_pool2d(t, 2), [images]),
        "avg_pool2d": (lambda t: F.avg_pool2d(t, 3, stride=2, padding=1, count_include_pad=False), [x]),
        "adaptive_avg_pool2d": (lambda t: F.adaptive_avg_pool2d(t, (3, 2)), [x]),
        "batch_norm_train": (batch_norm(True), [images, _normal(5, 16), _normal(6, 16)]),
        "batch_norm_eval": (batch_norm(False), [images, _normal(5, 16), _normal(6, 16)]),
        "relu": (F.relu, [x]), "leaky_relu": (lambda t: F.leaky_relu(t, 0.2), [x]), "gelu": (F.gelu, [x]),
        "sigmoid": (F.sigmoid, [x]), "tanh": (F.tanh, [x]),
        "dropout": (lambda t: F.dropout(t, 0.3), [x]),
        "linear": (F.linear, [_normal(7, 5, 12), _normal(8, 4, 12), _normal(9, 4)]),
        "matmul": (F.matmul, [_normal(7, 5, 12), _normal(8, 12, 3)]),
        "softmax": (lambda t: F.softmax(t, 1), [logits]),
        "log_softmax": (lambda t: F.log_softmax(t, 1), [logits]),
        "cross_entropy": (lambda t: F.cross_entropy(t, labels, label_smoothing=0.2), [logits]),
        "mse_loss": (F.mse_loss, [logits, _normal(10, 6, 5)]),
        "chain": (chain, [_normal(11, 2, 3, 8, 8), _normal(12, 16, 3, 3, 3) * 0.3, _normal(13, 16), _normal(14, 16),
                          _normal(15, 10, 16 * 4 * 4) * 0.1, _normal(16, 10)]),
    }, running


def functional_op_case(name, dtype):
    ops, running = _functional_ops()
    fn, arrays = ops[name]
    outputs = _run_functional(fn, arrays, dtype)
    outputs.update({f"running_{key}": value for key, value in running.items()})  # updated in place in training
    return outputs


MODELS = {"lenet5": ("lenet5", (1, 28, 28)), "cifar_cnn": ("cifar_cnn", (3, 32, 32)),
          "resnet20": ("resnet20", (3, 32, 32))}


def model_case(name, batch_size=4, steps=3):
    """Captured training (SGD, lr 0.01, momentum 0.9, cross-entropy) then captured inference, from seed 0."""
    import cnnnumba as cn
    from cnnnumba import functional as F
    from cnnnumba import optim

    builder, image_shape = MODELS[name]
    cn.manual_seed(0)
    model = getattr(cn.models, builder)()
    rng = np.random.default_rng(1)
    batches = [(rng.standard_normal((batch_size, *image_shape), dtype=np.float32),
                rng.integers(0, 10, batch_size, dtype=np.int64)) for _ in range(steps + 1)]
    model.train()
    step = cn.graph.capture(model, F.cross_entropy, optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    outputs = {"losses": np.array([float(step(images, labels)) for images, labels in batches[:steps]])}
    outputs.update({f"state.{key}": np.array(value) for key, value in model.state_dict().items()})
    outputs["logits"] = np.array(cn.graph.capture(model.eval())(batches[steps][0]))
    return outputs


def api_cases():
    """Every public-API case: name -> function returning {output name: ndarray}."""
    cases = {}
    for dtype in DTYPES:
        for index, (x_shape, w_shape, options) in enumerate(FUNCTIONAL_CONV):
            cases[f"functional/conv2d[{index}]/{dtype.__name__}"] = partial(functional_conv_case, x_shape, w_shape,
                                                                            options, dtype)
        for name in FUNCTIONAL_OPS:
            cases[f"functional/{name}/{dtype.__name__}"] = partial(functional_op_case, name, dtype)
    for name in MODELS:
        cases[f"models/{name}"] = partial(model_case, name)
    return cases
