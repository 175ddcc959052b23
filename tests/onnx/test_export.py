"""cn.onnx.export: every zoo model checked by onnx.checker and run in onnxruntime at two batch sizes; residual adds
and concatenation; ops without a mapping named."""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import functional as F
from cnnnumba import models, nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

ZOO = {"resnet18": lambda: models.resnet18(num_classes=10), "resnet34": lambda: models.resnet34(num_classes=10),
       "resnet50": lambda: models.resnet50(num_classes=10),
       "mobilenet_v2": lambda: models.mobilenet_v2(num_classes=10),
       "resnet20": lambda: models.resnet20(), "cifar-cnn": lambda: models.cifar_cnn(), "lenet5": models.lenet5}


def _varied_statistics(model):
    rng = np.random.default_rng(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean[...] = rng.standard_normal(module.num_features) * 0.1
            module.running_var[...] = rng.random(module.num_features) + 0.5
    return model


def _ort_matches(model, path, shape, batches=(1, 3)):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch" and session.get_outputs()[0].shape[0] == "batch"
    for batch in batches:
        x = np.random.default_rng(batch).standard_normal((batch, *shape)).astype(np.float32)
        got = session.run(None, {"input": x})[0]
        with cn.no_grad():
            expected = model(cn.Tensor(x)).data
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-3 * np.abs(expected).max()


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_models_run_in_onnxruntime_at_two_batch_sizes(tmp_path, name):
    cn.manual_seed(0)
    model = _varied_statistics(ZOO[name]()).eval()
    shape = (1, 28, 28) if name == "lenet5" else (3, 32, 32)
    proto = cn.onnx.export(model, np.zeros((2, *shape), np.float32), tmp_path / "m.onnx")
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")), full_check=True)
    assert proto.opset_import[0].version == 17
    initializers = {t.name for t in proto.graph.initializer}
    state = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    assert state <= initializers  # parameters and running statistics keep their state-dict names
    if name == "resnet18":
        ops = {n.op_type for n in proto.graph.node}
        assert ops == {"Conv", "BatchNormalization", "Relu", "MaxPool", "Add", "GlobalAveragePool", "Flatten", "Gemm"}
    _ort_matches(model, tmp_path / "m.onnx", shape)


def test_a_model_after_captured_steps_exports_its_trained_weights(tmp_path):
    """Captured graphs store conv weights as transposed views of (kH, kW, C_in, C_out) blocks; the export writes
    the values in ONNX's (C_out, C_in, kH, kW) order all the same."""
    cn.manual_seed(0)
    model = models.cifar_cnn()
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    step = cn.graph.capture(model.train(), F.cross_entropy, cn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    step(x, np.array([0, 1, 2, 3]))
    cn.graph.capture(model.eval())(x)
    weights = [m.weight.data for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert weights and not any(w.flags.c_contiguous for w in weights)
    cn.onnx.export(_varied_statistics(model), x[:2], tmp_path / "m.onnx")
    _ort_matches(model, tmp_path / "m.onnx", (3, 32, 32))


class _Branches(nn.Module):
    """Concatenation, a residual add, ReLU6, average pooling and a reshape to (N, C, H * W) in one model."""

    def __init__(self):
        super().__init__()
        self.left = nn.Conv2d(3, 4, 3, padding=1)
        self.right = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(8)
        self.merge = nn.Conv2d(8, 8, 3, padding="same", bias=False)
        self.head = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        y = self.bn(cn.cat([self.left(x), F.relu6(self.right(x))], dim=1))
        y = F.avg_pool2d(y + self.merge(y), 2, ceil_mode=True)
        y = F.leaky_relu(y.reshape(y.shape[0], 8, 16), 0.1)
        return F.log_softmax(self.head(F.flatten(y)), dim=1)


def test_a_module_with_concatenation_and_a_residual_add(tmp_path):
    cn.manual_seed(0)
    model = _Branches()
    model.train()
    cn.onnx.export(model, np.zeros((2, 3, 7, 7), np.float32), tmp_path / "b.onnx")
    assert model.training and model.bn.training  # export traces in eval mode and restores the flags
    model.eval()
    proto = onnx.load(str(tmp_path / "b.onnx"))
    assert {"Concat", "Add", "Clip", "AveragePool", "Reshape", "LeakyRelu", "LogSoftmax"} <= \
        {n.op_type for n in proto.graph.node}
    _ort_matches(model, tmp_path / "b.onnx", (3, 7, 7))


def test_an_op_without_mapping_is_named(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.GELU())
    with pytest.raises(ValueError, match="op GELU has no ONNX mapping"):
        cn.onnx.export(model, np.zeros((1, 1, 5, 5), np.float32), tmp_path / "g.onnx")
    assert not (tmp_path / "g.onnx").exists()


def test_bad_arguments(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="opset_version must be an int from 13"):
        cn.onnx.export(model, np.zeros((1, 4), np.float32), tmp_path / "m.onnx", opset_version=9)
    with pytest.raises(TypeError, match="example_input dtype \\(float64\\) and the model's parameters"):
        cn.onnx.export(model, np.zeros((1, 4)), tmp_path / "m.onnx")
    with pytest.raises(TypeError, match="expected an nn.Module"):
        cn.onnx.export(lambda x: x, np.zeros((1, 4), np.float32), tmp_path / "m.onnx")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cn.onnx.export(model, np.zeros((1, 4), np.float32), tmp_path / "nowhere" / "m.onnx")
