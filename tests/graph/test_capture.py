"""Captured training steps and inference against the eager loop: same losses, parameters and buffers."""
import tracemalloc

import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import functional as F
from cnnnumba import nn, optim

TOLERANCE = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=2e-5, atol=2e-6)}


class Branchy(nn.Module):
    """Two conv branches joined by cat, a residual add, an op the lowering has no node for (sigmoid), avg pooling."""

    def __init__(self):
        super().__init__()
        self.left = nn.Conv2d(3, 4, 3, padding=1)
        self.right = nn.Conv2d(3, 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.mix = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        joined = F.relu(self.bn(cn.cat([self.left(x), self.right(x)], dim=1)))
        out = F.sigmoid(self.mix(joined)) + joined
        return self.fc(F.flatten(self.pool(out)))


def dropout_net():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Dropout(0.3),
                         # no bias before batch norm: its gradient is zero up to rounding, which Adam would amplify
                         nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Dropout(0.5),
                         nn.Linear(4 * 4 * 4, 10))


MODELS = {
    "cifar_cnn": (lambda: cn.models.cifar_cnn(image_size=8), (3, 8, 8), 10),
    "resnet20": (lambda: cn.models.resnet20(image_size=8, widths=(4, 8, 8)), (3, 8, 8), 10),
    # wide enough for the register-tiled and im2col conv paths rather than the few-channel ones
    "resnet20_wide": (lambda: cn.models.resnet20(image_size=8, widths=(32, 32, 64)), (3, 8, 8), 10),
    "dropout": (dropout_net, (3, 8, 8), 10),
    "branchy": (Branchy, (3, 8, 8), 5),
    "lenet5": (lambda: cn.models.lenet5(image_size=16), (1, 16, 16), 10),
    # batch norm without affine parameters, and with a cumulative average (momentum=None)
    "plain_bn": (lambda: nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4, affine=False), nn.ReLU(),
                                       nn.Conv2d(4, 4, 3, bias=False), nn.BatchNorm2d(4, momentum=None),
                                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)), (3, 8, 8), 3),
}
OPTIMIZERS = {
    "sgd": lambda params: optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4),
    "adamw": lambda params: optim.AdamW(params, lr=1e-2),
}


def batches(model_name, dtype, sizes, seed=0):
    _, image, classes = MODELS[model_name]
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((n, *image)).astype(dtype), rng.integers(0, classes, n)) for n in sizes]


def build(model_name, optimizer_name, dtype):
    cn.manual_seed(0)
    model = MODELS[model_name][0]()
    if dtype == np.float64:
        model.double()
    return model, OPTIMIZERS[optimizer_name](model.parameters())


def eager_step(model, optimizer, x, y):
    optimizer.zero_grad()
    loss = F.cross_entropy(model(cn.Tensor(x)), y)
    loss.backward()
    optimizer.step()
    return float(loss.item())


def train(model_name, optimizer_name, dtype, sizes, captured):
    model, optimizer = build(model_name, optimizer_name, dtype)
    step = cn.graph.capture(model, F.cross_entropy, optimizer) if captured else None
    cn.manual_seed(1)  # the dropout masks' stream, the same for both runs
    losses = [step(x, y) if captured else eager_step(model, optimizer, x, y)
              for x, y in batches(model_name, dtype, sizes)]
    state = {key: np.array(value) for key, value in model.state_dict().items()}
    return losses, state, model, optimizer, step


def assert_same_training(captured, eager, dtype):
    np.testing.assert_allclose(captured[0], eager[0], **TOLERANCE[dtype], err_msg="losses differ")
    assert captured[1].keys() == eager[1].keys()
    for key in eager[1]:
        scale = max(float(np.max(np.abs(eager[1][key]), initial=0.0)), 1.0)
        np.testing.assert_allclose(captured[1][key], eager[1][key], rtol=TOLERANCE[dtype]["rtol"],
                                   atol=TOLERANCE[dtype]["atol"] * scale, err_msg=key)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("model_name, optimizer_name", [
    ("cifar_cnn", "sgd"), ("cifar_cnn", "adamw"), ("resnet20", "sgd"), ("resnet20", "adamw"), ("dropout", "sgd"),
    ("dropout", "adamw"), ("branchy", "sgd"), ("lenet5", "adamw"), ("plain_bn", "sgd"),
])
def test_captured_steps_match_eager(model_name, optimizer_name, dtype):
    sizes = [4] * 4
    captured = train(model_name, optimizer_name, dtype, sizes, captured=True)
    eager = train(model_name, optimizer_name, dtype, sizes, captured=False)
    assert_same_training(captured, eager, dtype)
    assert not captured[4].last_recorded  # the later steps replayed the graph
    assert captured[0][0] != captured[0][-1]  # training moved: the comparison is not of frozen weights


def test_optimizer_state_matches_eager():
    _, _, _, captured_opt, _ = train("resnet20", "adamw", np.float64, [4] * 3, captured=True)
    _, _, _, eager_opt, _ = train("resnet20", "adamw", np.float64, [4] * 3, captured=False)
    captured_state, eager_state = captured_opt.state_dict()["state"], eager_opt.state_dict()["state"]
    assert captured_state.keys() == eager_state.keys()
    for index in eager_state:
        for name in eager_state[index]:
            np.testing.assert_allclose(captured_state[index][name], eager_state[index][name], rtol=1e-10, atol=1e-14)


def test_schedule_shows_fusions_and_a_planned_memory_smaller_than_its_buffers():
    *_, step = train("lenet5", "sgd", np.float32, [4, 4], captured=True)
    text = step.describe()
    assert "conv+bias+relu" in text
    *_, step = train("resnet20", "sgd", np.float32, [4, 4], captured=True)
    text = step.describe()
    assert "batchnorm+relu" in text and "batchnorm+add+relu(" in text
    schedule = step.last.schedule
    assert schedule.planned_bytes < schedule.unplanned_bytes / 2
    # no input gradient for the first layer: the input value has no gradient buffer
    assert step.last.input_node.output.grad is None


def test_unknown_op_runs_through_its_own_function():
    *_, step = train("branchy", "sgd", np.float64, [4, 4], captured=True)
    assert "fallback[Sigmoid]" in step.describe()


def test_new_batch_size_records_again_and_still_matches_eager():
    sizes = [4, 4, 6, 6, 4]
    captured = train("cifar_cnn", "sgd", np.float64, sizes, captured=True)
    eager = train("cifar_cnn", "sgd", np.float64, sizes, captured=False)
    assert_same_training(captured, eager, np.float64)
    step = captured[4]
    assert sorted(key[0][0] for key in step.graphs) == [4, 6]
    assert not step.last_recorded  # the last batch of 4 replayed the first graph


def test_replaced_optimizer_state_is_picked_up():
    results = []
    for captured in (True, False):
        model, optimizer = build("cifar_cnn", "sgd", np.float64)
        step = cn.graph.capture(model, F.cross_entropy, optimizer)
        data = batches("cifar_cnn", np.float64, [4] * 4)
        losses = []
        for index, (x, y) in enumerate(data):
            if index == 2:
                optimizer.load_state_dict(optimizer.state_dict())  # new state arrays: the graph must re-bind
                model.load_state_dict(model.state_dict())
            losses.append(step(x, y) if captured else eager_step(model, optimizer, x, y))
        results.append(losses)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-10)


def test_batch_norm_buffers_updated_in_place():
    model, optimizer = build("cifar_cnn", "sgd", np.float64)
    bn = model[1]
    running_mean, counter = bn.running_mean, bn.num_batches_tracked
    step = cn.graph.capture(model, F.cross_entropy, optimizer)
    for x, y in batches("cifar_cnn", np.float64, [4] * 3):
        step(x, y)
    assert bn.running_mean is running_mean and int(counter) == 3
    assert np.any(running_mean != 0)


def test_captured_steps_identical_for_any_thread_count():
    previous = cn.get_num_threads()
    runs = []
    try:
        for threads in (1, 2):
            cn.set_num_threads(threads)
            runs.append(train("resnet20", "sgd", np.float32, [4] * 3, captured=True))
    finally:
        cn.set_num_threads(previous)
    assert runs[0][0] == runs[1][0]
    for key in runs[0][1]:
        np.testing.assert_array_equal(runs[0][1][key], runs[1][1][key], err_msg=key)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("model_name", ["cifar_cnn", "resnet20", "branchy", "dropout"])
def test_inference_with_batch_norm_folded_matches_eager_eval(model_name, dtype):
    model, optimizer = build(model_name, "sgd", dtype)
    for x, y in batches(model_name, dtype, [4, 4]):
        eager_step(model, optimizer, x, y)  # running statistics away from their initial 0 and 1
    model.eval()
    predict = cn.graph.capture(model)
    for x, _ in batches(model_name, dtype, [4, 2], seed=5):
        with cn.no_grad():
            expected = model(cn.Tensor(x)).data
        np.testing.assert_allclose(predict(x), expected, rtol=TOLERANCE[dtype]["rtol"] * 10,
                                   atol=TOLERANCE[dtype]["atol"] * 10)
    if model_name in ("cifar_cnn", "resnet20"):
        assert "conv+bn(folded)+relu" in predict.describe()


def test_max_pools_keep_their_indices_only_for_a_backward():
    """The argmax a pool's backward reads is planned only where one runs: a training step's pool of the image
    and every inference pool compute their values alone (a 2x2 window inside the input), except where only the
    indexed kernel runs the window (3x3 with padding); the results match eager."""
    cn.manual_seed(0)
    model = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.MaxPool2d(3, stride=1, padding=1), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    y = np.array([0, 2])
    optimizer = optim.SGD(model.parameters(), lr=0.1)
    step = cn.graph.capture(model, F.cross_entropy, optimizer)
    with cn.no_grad():
        expected_logits = model(cn.Tensor(x)).data
    step(x, y)
    schedule = step.last.schedule
    planned = {id(buffer) for buffer in schedule.buffers}
    pools = [node for node in schedule.forward_nodes if type(node).__name__ == "MaxPool"]
    assert [id(pool.indices) in planned for pool in pools] == [False, True, True]
    np.testing.assert_allclose(step.logits, expected_logits, rtol=1e-5, atol=1e-6)
    model.eval()
    predict = cn.graph.capture(model)
    with cn.no_grad():
        expected = model(cn.Tensor(x)).data
    np.testing.assert_allclose(predict(x), expected, rtol=1e-5, atol=1e-6)
    forward, schedule = next(iter(predict.graphs.values()))[:2]
    planned = {id(buffer) for buffer in schedule.buffers}
    pools = [node for node in forward if type(node).__name__ == "MaxPool"]
    assert [id(pool.indices) in planned for pool in pools] == [False, False, True]


def test_inference_batch_norm_that_cannot_fold_runs_unfolded():
    cn.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(36, 3)).double()
    model[2].running_mean[...] = np.arange(4) * 0.1
    model[2].running_var[...] = np.arange(1, 5) * 0.5
    model.eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
    predict = cn.graph.capture(model)
    with cn.no_grad():
        np.testing.assert_allclose(predict(x), model(cn.Tensor(x)).data, rtol=1e-12)
    assert "batchnorm(eval)+relu" in predict.describe()


def test_inference_folds_batch_norm_only_where_the_weight_is_smaller_than_the_output():
    """Folding passes over the weight at every call, a batch norm on the output over the output: at batch 1 a
    32-channel 3x3 conv on 4x4 pixels (9216 weights, 512 outputs) normalizes its output, at batch 32 it folds."""
    cn.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Flatten(),
                          nn.Linear(512, 3))
    model[1].running_mean[...] = np.linspace(-0.5, 0.5, 32)
    model[1].running_var[...] = np.linspace(0.5, 2.0, 32)
    model.eval()
    predict = cn.graph.capture(model)
    for batch, kept in ((1, "conv+bn(output)+relu"), (32, "conv+bn(folded)+relu")):
        x = np.random.default_rng(batch).standard_normal((batch, 32, 4, 4)).astype(np.float32)
        with cn.no_grad():
            expected = model(cn.Tensor(x)).data
        np.testing.assert_allclose(predict(x), expected, rtol=1e-4, atol=1e-5)
        assert kept in predict.describe()
    assert model[0].weight.data.transpose(2, 3, 1, 0).flags.c_contiguous  # homed once, read in place


def test_inference_graph_follows_weights_a_training_graph_rehomed():
    """capture(model) in eval, then a captured training step (which moves the weights into its arenas), then eval
    again: the inference graph must read the trained weights, not the arrays it was recorded with."""
    cn.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 6 * 6, 3))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 6, 6)).astype(np.float32)
    model.eval()
    predict = cn.graph.capture(model)
    before = predict(x)
    model.train()
    train_step = cn.graph.capture(model, F.cross_entropy, cn.optim.SGD(model.parameters(), lr=0.5))
    train_step(x, np.array([0, 1, 2, 0]))
    model.eval()
    with cn.no_grad():
        expected = model(cn.Tensor(x)).data
    after = predict(x)
    assert not np.allclose(after, before)
    np.testing.assert_allclose(after, expected, rtol=1e-4, atol=1e-5)


def _step_peak_bytes(step, x, y):
    """(peak traced bytes of one replayed step, the largest peak of one node within it), everything included: the
    executor and every kernel (Numba allocates through Python's raw allocator, which tracemalloc sees), conv
    kernels too, which take their scratch from the schedule's one workspace."""
    graph = step.last
    tracemalloc.start()
    try:
        step(x, y)  # warm-up with tracing on: objects Python caches on first use while tracing
        # Python's own one-off caches (interned names, free lists, dict resizes) sometimes fill during a later
        # step, depending on what ran before in the process; the steady state is the least of a few steps.
        step_peaks, node_peaks = [], []
        for _ in range(3):
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            step(x, y)
            step_peaks.append(tracemalloc.get_traced_memory()[1] - base)
            # the same step node by node, so that scratch one kernel frees before the next cannot hide
            graph.input_node.source = x
            worst = 0
            for node, run in [(n, n.forward) for n in graph.schedule.forward_nodes] + \
                             [(n, n.backward) for n in graph.schedule.backward_nodes]:
                base = tracemalloc.get_traced_memory()[0]
                tracemalloc.reset_peak()
                run()
                worst = max(worst, tracemalloc.get_traced_memory()[1] - base)
            graph.input_node.source = None
            node_peaks.append(worst)
    finally:
        tracemalloc.stop()
    return min(step_peaks), min(node_peaks)


@pytest.mark.parametrize("model_name, dtype", [("cifar_cnn", np.float32), ("cifar_cnn", np.float64),
                                               ("resnet20_wide", np.float32), ("lenet5", np.float32),
                                               ("lenet5", np.float64), ("resnet20", np.float32)])
def test_steady_state_step_allocates_no_arrays(model_name, dtype):
    """float32 runs the register-tiled conv paths (strips, aligned and flipped weights, partial weight gradients,
    stride-2 phases in ResNet-20), float64 and the 2-pixel-wide last stage the im2col + GEMM ones (columns,
    row-chunked partials); LeNet-5 and the narrow ResNet-20 (4/8/8) the few-channel direct path (transposed and
    flipped weights, partial weight gradients, per-slot frames and accumulators)."""
    peaks = []
    for batch in (4, 32):
        model, optimizer = build(model_name, "sgd", dtype)
        step = cn.graph.capture(model, F.cross_entropy, optimizer)
        x, y = batches(model_name, dtype, [batch])[0]
        step(x, y)
        step(x, y)
        assert step.last.schedule.workspace.nbytes > 0
        peaks.append(_step_peak_bytes(step, x, y))
    # Python scalars, argument tuples and array views: a few hundred bytes per kernel call, some kept for a while
    # by Numba's dispatcher. The smallest array that could be scratch -- a weight-gradient partial of the first
    # conv (3 x 3 x 3 x 32 floats) -- is 3.4 KiB, and an activation of the batch of 4 is 32 KiB.
    assert max(p[1] for p in peaks) < 3072, peaks
    assert max(p[0] for p in peaks) < 12288, peaks
    assert abs(peaks[1][0] - peaks[0][0]) < 1024, peaks


def test_steady_state_step_keeps_no_memory():
    model, optimizer = build("cifar_cnn", "sgd", np.float32)
    step = cn.graph.capture(model, F.cross_entropy, optimizer)
    x, y = batches("cifar_cnn", np.float32, [8])[0]
    for _ in range(3):
        step(x, y)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(5):
            step(x, y)
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert retained < 2048, retained


def test_logits_of_the_last_step():
    model, optimizer = build("cifar_cnn", "sgd", np.float64)
    step = cn.graph.capture(model, F.cross_entropy, optimizer)
    for x, y in batches("cifar_cnn", np.float64, [4, 4]):
        loss = step(x, y)
        logits = step.logits
        assert logits.shape == (4, 10)
        np.testing.assert_allclose(F.cross_entropy(cn.Tensor(logits.copy()), y).item(), loss, rtol=1e-12)


def test_validation_errors():
    model, optimizer = build("cifar_cnn", "sgd", np.float64)
    step = cn.graph.capture(model, F.cross_entropy, optimizer)
    x, y = batches("cifar_cnn", np.float64, [4])[0]
    with pytest.raises(TypeError, match=r"input dtype \(float32\) and the model's parameters \(float64\)"):
        step(x.astype(np.float32), y)
    with pytest.raises(TypeError, match="expected integer class labels, but got dtype float64"):
        step(x, y.astype(np.float64))
    with pytest.raises(ValueError, match=r"Expected input batch_size \(4\) to match target batch_size \(3\)"):
        step(x, y[:3])
    with pytest.raises(TypeError, match="expected x to be an ndarray, but got list"):
        step(x.tolist(), y)
    with pytest.raises(ValueError, match="expected a non-empty batch"):
        step(x[:0], y[:0])
    step(x, y)
    with pytest.raises(ValueError, match="Target 12 is out of bounds"):
        step(x, np.array([1, 2, 12, 3]))
    with pytest.raises(ValueError, match=r"call model.eval\(\) first"):
        cn.graph.capture(model)
    with pytest.raises(ValueError, match="a model alone .inference. or a model, a loss function and an optimizer"):
        cn.graph.capture(model, F.cross_entropy)
    model.eval()
    with pytest.raises(ValueError, match=r"call model.train\(\) first"):
        cn.graph.capture(model, F.cross_entropy, optimizer)


def test_unsupported_loss_is_refused_by_name():
    model, optimizer = build("cifar_cnn", "sgd", np.float64)
    step = cn.graph.capture(model, lambda logits, y: F.mse_loss(logits, cn.Tensor(np.eye(10)[y])), optimizer)
    x, y = batches("cifar_cnn", np.float64, [4])[0]
    with pytest.raises(ValueError, match="got MseLoss.*eager=True"):
        step(x, y)


def test_conv_nodes_bind_their_kernel_calls_once(monkeypatch):
    """Each conv node binds its passes (kernels.conv2d.bind_*) at its first step and calls the bound passes after."""
    from cnnnumba.kernels import conv2d as conv_kernels

    binds = []
    for name in ("bind_forward", "bind_backward_input", "bind_backward_weight"):
        original = getattr(conv_kernels, name)
        monkeypatch.setattr(conv_kernels, name,
                            lambda *a, _original=original, _name=name, **k: binds.append(_name) or _original(*a, **k))
    model, optimizer = build("cifar_cnn", "sgd", np.float32)
    step = cn.graph.capture(model, F.cross_entropy, optimizer)
    x, y = batches("cifar_cnn", np.float32, [4])[0]
    step(x, y)  # traces the step, builds the graph and runs it: its 5 convs bind 5 + 4 + 5 passes
    assert binds.count("bind_backward_weight") == 5 and binds.count("bind_backward_input") == 4
    first = len(binds)
    for _ in range(3):
        step(x, y)
    assert len(binds) == first


def test_a_bound_call_is_made_again_when_an_array_it_reads_is_replaced():
    from cnnnumba.graph.nodes.base import Node

    node = Node([], None)
    made = []
    first, second = np.zeros(3), np.zeros(3)
    call = node.bound("pass", (first, None), lambda: made.append(1) or (lambda: "one"))
    assert call() == "one" and node.bound("pass", (first, None), lambda: made.append(2)) is call
    assert node.bound("pass", (second, None), lambda: made.append(3) or (lambda: "three"))() == "three"
    assert made == [1, 3]
