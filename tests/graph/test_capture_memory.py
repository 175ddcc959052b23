"""The recording step of a captured graph: a forward-only trace that keeps no activation, then the graph's own first
step, so the first call's peak memory is the graph's arena and not an eager step's tape."""
import json
import subprocess
import sys
import weakref

import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import functional as F
from cnnnumba import _config, nn, optim
from cnnnumba.graph.trace import TracedResult, Tracer


def small_cnn(image_size=8):
    return cn.models.cifar_cnn(image_size=image_size)


def model_and_optimizer(make_model=small_cnn, dtype=np.float64, make_optimizer=None):
    cn.manual_seed(0)
    model = make_model()
    if dtype == np.float64:
        model.double()
    make_optimizer = make_optimizer or (lambda params: optim.SGD(params, lr=0.05, momentum=0.9))
    return model, make_optimizer(model.parameters())


def batch(n=4, dtype=np.float64, image=(3, 8, 8), classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *image)).astype(dtype), rng.integers(0, classes, n)


def arrays_reachable(value, seen=None):
    """Every ndarray a trace record keeps alive: in arguments, options, and the op's own attributes."""
    seen = {} if seen is None else seen
    if isinstance(value, np.ndarray):
        seen[id(value)] = value
    elif isinstance(value, TracedResult):
        pass
    elif isinstance(value, cn.Tensor):
        seen[id(value.data)] = value.data
    elif isinstance(value, (tuple, list)):
        for item in value:
            arrays_reachable(item, seen)
    elif isinstance(value, dict):
        for item in value.values():
            arrays_reachable(item, seen)
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        arrays_reachable(vars(value), seen)
    return seen


def test_lean_trace_keeps_shapes_and_identity_but_no_activation():
    model, _ = model_and_optimizer()
    x, y = batch(16)
    x_tensor = cn.Tensor(x)
    with cn.no_grad(), Tracer(keep_values=False) as tracer:
        logits = model(x_tensor)
        loss = F.cross_entropy(logits, y)
    outputs = [record[3] for record in tracer.records]
    assert all(isinstance(out, TracedResult) for out in outputs)
    assert outputs[-1] is tracer.stand_in(loss) and outputs[-2] is tracer.stand_in(logits)
    assert outputs[-2].shape == (16, 10) and outputs[-2].dtype == np.float64
    # each op's input is the previous op's recorded output (Sequential), the first op's the real input
    assert tracer.records[0][1][0] is x_tensor
    for previous, record in zip(tracer.records, tracer.records[1:-1]):
        assert record[1][0] is previous[3]
    with pytest.raises(RuntimeError, match="not its values"):
        outputs[0].data
    # what the trace keeps: parameters, buffers and the labels, none of them batch-sized except the input and labels
    kept = arrays_reachable(tracer.records)
    model_arrays = {id(p.data) for p in model.parameters()} | {id(b) for b in model.buffers()}
    others = [a for key, a in kept.items() if key not in model_arrays and a is not x]
    assert sum(a.nbytes for a in others) <= y.nbytes * 2, [(a.shape, a.dtype) for a in others]
    # the default tracer keeps the values: the same forward holds every activation
    with cn.no_grad(), Tracer() as full:
        model(x_tensor)
    assert sum(a.nbytes for a in arrays_reachable(full.records).values()) > 10 * x.nbytes


def test_lean_trace_lets_the_model_free_each_activation():
    model, _ = model_and_optimizer()
    x, _ = batch(4)
    alive = []
    with cn.no_grad(), Tracer(keep_values=False):
        out = cn.Tensor(x)
        for layer in model:
            out = layer(out)
            alive.append(weakref.ref(out))
        del out
    assert [ref for ref in alive if ref() is not None] == []


def test_first_step_leaves_batch_norm_buffers_and_random_stream_as_one_eager_step():
    def dropout_bn_net():
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                             nn.Flatten(), nn.Linear(4 * 8 * 8, 10))

    results = []
    for captured in (True, False):
        model, optimizer = model_and_optimizer(dropout_bn_net)
        x, y = batch()
        cn.manual_seed(7)
        if captured:
            cn.graph.capture(model, F.cross_entropy, optimizer)(x, y)
        else:
            optimizer.zero_grad()
            F.cross_entropy(model(cn.Tensor(x)), y).backward()
            optimizer.step()
        results.append((model[1], _config.get_rng_state()))
    (bn, rng_state), (eager_bn, eager_rng_state) = results
    assert int(bn.num_batches_tracked) == 1  # the traced forward's count was undone, the graph's step counted
    assert rng_state == eager_rng_state  # one step's dropout draws, not two
    np.testing.assert_allclose(bn.running_mean, eager_bn.running_mean, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(bn.running_var, eager_bn.running_var, rtol=1e-10)


@pytest.mark.parametrize("make_optimizer", [lambda params: optim.SGD(params, lr=0.05, momentum=0.9),
                                            lambda params: optim.AdamW(params, lr=1e-2)], ids=["sgd", "adamw"])
def test_optimizer_state_made_by_the_first_step_is_fused_from_the_second(make_optimizer):
    results = []
    for captured in (True, False):
        model, optimizer = model_and_optimizer(make_optimizer=make_optimizer)
        step = cn.graph.capture(model, F.cross_entropy, optimizer)
        for seed in range(3):
            x, y = batch(seed=seed)
            if captured:
                step(x, y)
                graph = step.last
                assert graph.update.fused  # the first step ran optimizer.step(), then its new state was homed
            else:
                optimizer.zero_grad()
                F.cross_entropy(model(cn.Tensor(x)), y).backward()
                optimizer.step()
        results.append((model.state_dict(), optimizer.state_dict()["state"]))
    (state, optimizer_state), (eager_state, eager_optimizer_state) = results
    for key in eager_state:
        np.testing.assert_allclose(state[key], eager_state[key], rtol=1e-10, atol=1e-12, err_msg=key)
    for index in eager_optimizer_state:
        for name in eager_optimizer_state[index]:
            np.testing.assert_allclose(optimizer_state[index][name], eager_optimizer_state[index][name],
                                       rtol=1e-9, atol=1e-14, err_msg=f"{index}.{name}")


def test_first_step_logits_are_the_graphs():
    model, optimizer = model_and_optimizer()
    x, y = batch()
    with cn.no_grad():
        expected = model(cn.Tensor(x)).data.copy()  # the weights before the step
    step = cn.graph.capture(model, F.cross_entropy, optimizer)
    loss = step(x, y)
    assert step.last_recorded
    np.testing.assert_allclose(step.logits, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(F.cross_entropy(cn.Tensor(expected), y).item(), loss, rtol=1e-10)


@pytest.mark.parametrize("loss_fn, labels, message", [
    (lambda logits, y: F.mse_loss(logits, cn.Tensor(np.eye(10)[y])), None, "got MseLoss"),
    (F.cross_entropy, np.array([1, 2, 12, 3]), "Target 12 is out of bounds"),
], ids=["unsupported-loss", "bad-label"])
def test_refused_first_step_changes_nothing(loss_fn, labels, message):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                          nn.Flatten(), nn.Linear(4 * 8 * 8, 10)).double()
    optimizer = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = batch()
    before = {key: np.array(value) for key, value in model.state_dict().items()}
    rng_state = _config.get_rng_state()
    with pytest.raises(ValueError, match=message):
        cn.graph.capture(model, loss_fn, optimizer)(x, y if labels is None else labels)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    assert _config.get_rng_state() == rng_state
    assert optimizer.state_dict()["state"] == {}


class ScaledWeightConv(nn.Module):
    """A conv whose weight is computed by an op (the trace keeps its shape, not its values): it cannot be folded."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        out = F.conv2d(x, self.conv.weight * 0.5, self.conv.bias, padding=1)
        return self.fc(F.flatten(F.relu(self.bn(out))))


def test_inference_with_a_computed_conv_weight_runs_it_unfolded():
    model, optimizer = model_and_optimizer(ScaledWeightConv)
    x, y = batch()
    optimizer.zero_grad()
    F.cross_entropy(model(cn.Tensor(x)), y).backward()  # running statistics away from 0 and 1
    model.eval()
    predict = cn.graph.capture(model)
    np.testing.assert_allclose(predict(x), model(cn.Tensor(x)).data, rtol=1e-10, atol=1e-12)
    assert "fallback[Conv2d]" in predict.describe() and "conv+bn(folded)" not in predict.describe()


FIRST_STEP_PEAK = r"""
import ctypes, gc, json, sys
import numpy as np
import cnnnumba as cn
from cnnnumba import functional as F, optim

def kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field))

def release():
    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)

def setup(batch):
    cn.manual_seed(0)
    model = cn.models.cifar_cnn()
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    return cn.graph.capture(model, F.cross_entropy, optimizer), x, rng.integers(0, 10, batch)

sizes = [int(n) for n in sys.argv[1:]]
for n in sizes:  # load every kernel first: the measurement is of the step, not of Numba's cache
    step, x, y = setup(n)
    step(x, y)
del step, x, y
results = []
for n in sizes:
    step, x, y = setup(n)
    release()
    before = kib("VmRSS:")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # the peak (VmHWM, ru_maxrss) restarts from the current resident size
    step(x, y)
    schedule = step.last.schedule
    results.append(dict(batch=n, growth=(kib("VmHWM:") - before) * 1024, arena=schedule.planned_bytes,
                        workspace=int(schedule.workspace.nbytes), buffers=schedule.unplanned_bytes))
    del step, x, y, schedule
print(json.dumps(results))
"""


def _can_reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _can_reset_peak_rss(),
                    reason="needs Linux's resettable peak RSS (/proc/self/clear_refs)")
def test_first_captured_step_peaks_at_the_graphs_arena():
    """Before the forward-only trace, the recording step held an eager tape (every NCHW activation, each conv's NHWC
    copy, each op's saved arrays): its peak grew by 2.5x the arena (cifar-cnn batch 64: 167 MiB for a 67 MiB arena)."""
    finished = subprocess.run([sys.executable, "-c", FIRST_STEP_PEAK, "64", "128"], capture_output=True, text=True,
                              timeout=600)
    assert finished.returncode == 0, finished.stderr
    small, large = json.loads(finished.stdout)
    for run in (small, large):
        graph_bytes = run["arena"] + run["workspace"]
        assert run["arena"] < run["buffers"]
        assert run["growth"] < 1.5 * graph_bytes + 16 * 2**20, run
    # the measurement follows the activations: twice the batch, about twice the growth
    assert large["growth"] > 1.5 * small["growth"], (small, large)
