"""cn.onnx.load: round trips through export keep names, logits and gradients; a PyTorch export loads; unsupported
ops, attributes and unreadable files get errors that name them."""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import functional as F
from cnnnumba import models, nn, optim
from cnnnumba.onnx.importer import OnnxImportError

onnx = pytest.importorskip("onnx")
helper = onnx.helper


@pytest.mark.parametrize("build", [lambda: models.resnet18(num_classes=6),
                                   lambda: models.mobilenet_v2(num_classes=6, dropout=0.0)], ids=["resnet18", "mobilenet_v2"])
def test_round_trip_keeps_state_dict_names_logits_and_training(tmp_path, build):
    cn.manual_seed(0)
    model = build().double()
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
    cn.onnx.export(model, x, tmp_path / "m.onnx")
    loaded = cn.onnx.load(tmp_path / "m.onnx")
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert list(theirs) == list(ours)
    assert all(theirs[k].shape == ours[k].shape and theirs[k].dtype == ours[k].dtype for k in ours)
    model.eval(), loaded.eval()
    with cn.no_grad():
        np.testing.assert_allclose(loaded(cn.Tensor(x)).data, model(cn.Tensor(x)).data, rtol=1e-12, atol=1e-12)
    # trainable: one SGD step in train mode changes the loaded model as the original (the export holds no dropout)
    model.train(), loaded.train()
    y = np.array([1, 4])
    for net in (model, loaded):
        optimizer = optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        optimizer.zero_grad()
        F.cross_entropy(net(cn.Tensor(x)), y).backward()
        optimizer.step()
    for key, value in loaded.state_dict().items():
        np.testing.assert_allclose(value, model.state_dict()[key], rtol=1e-10, atol=1e-12, err_msg=key)


def test_a_loaded_model_trains_as_a_captured_graph(tmp_path):
    cn.manual_seed(0)
    cn.onnx.export(models.mobilenet_v2(num_classes=3, width_mult=0.25).double(), np.zeros((1, 3, 32, 32)),
                   tmp_path / "m.onnx")
    captured, eager = cn.onnx.load(tmp_path / "m.onnx").train(), cn.onnx.load(tmp_path / "m.onnx").train()
    step = cn.graph.capture(captured, F.cross_entropy, optim.SGD(captured.parameters(), lr=0.01, momentum=0.9))
    eager_optimizer = optim.SGD(eager.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x, y = rng.standard_normal((4, 3, 32, 32)), rng.integers(0, 3, 4)
        eager_optimizer.zero_grad()
        loss = F.cross_entropy(eager(cn.Tensor(x)), y)
        loss.backward()
        eager_optimizer.step()
        assert step(x, y) == pytest.approx(loss.item(), rel=1e-9)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter's notice of its retirement
def test_a_pytorch_export_with_folded_batch_norm_loads(tmp_path):
    torch = pytest.importorskip("torch")
    twins = pytest.importorskip("cnnnumba.bench.torch_twins")
    torch.manual_seed(0)
    twin = twins.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    try:
        torch.onnx.export(twin, (x,), str(tmp_path / "t.onnx"), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"], dynamic_axes={"input": {0: "batch"}})
    except Exception as error:  # the TorchScript exporter's own dependencies
        pytest.skip(f"torch.onnx.export is unavailable here: {error}")
    loaded = cn.onnx.load(tmp_path / "t.onnx").eval()
    with torch.no_grad():
        expected = twin(x).numpy()
    with cn.no_grad():
        got = loaded(cn.Tensor(x.numpy())).data
    assert np.abs(got - expected).max() <= 1e-3 * np.abs(expected).max()


def _save(tmp_path, nodes, initializers=(), opset=17, input_shape=(1, 2, 4, 4)):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, input_shape)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", "c", "h", "w"])],
                              initializer=list(initializers))
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path


def _weight(name, shape):
    return onnx.numpy_helper.from_array(np.ones(shape, np.float32), name)


@pytest.mark.parametrize("nodes, initializers, message", [
    ([helper.make_node("Resize", ["x", "", "scales"], ["y"])],
     [onnx.numpy_helper.from_array(np.ones(4, np.float32), "scales")], "Resize node .*op 'Resize' is not supported"),
    ([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 0, 0])], [_weight("w", (2, 2, 3, 3))],
     "Conv node .*attribute 'pads' = \\[1, 1, 0, 0\\] is asymmetric"),
    ([helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER")], [_weight("w", (2, 2, 3, 3))],
     "attribute 'auto_pad' = 'SAME_UPPER' is not supported"),
    ([helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["y"], transA=1)],
     [_weight("w", (32, 3))], "Gemm node .*attribute 'transA' = 1 is not supported"),
    ([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], storage_order=1)], [],
     "attribute 'storage_order' = 1 is not supported"),
    ([helper.make_node("Conv", ["x", "x"], ["y"])], [], "the weight \\(input 1\\) must be a constant initializer"),
    ([helper.make_node("Relu", ["x"], ["y"], name="act")], [], None),
])
def test_unsupported_ops_and_attributes_are_named(tmp_path, nodes, initializers, message):
    path = _save(tmp_path, nodes, initializers)
    if message is None:  # the control: the same builder accepts a supported graph
        model = cn.onnx.load(path)
        x = np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32)
        np.testing.assert_array_equal(model(cn.Tensor(x)).data, np.maximum(x, 0))
        return
    with pytest.raises(OnnxImportError, match=message):
        cn.onnx.load(path)


def test_unreadable_files(tmp_path):
    cn.onnx.export(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), np.zeros((1, 4), np.float32), tmp_path / "m.onnx")
    data = (tmp_path / "m.onnx").read_bytes()
    (tmp_path / "truncated.onnx").write_bytes(data[:len(data) // 2])
    with pytest.raises(OnnxImportError, match="not a readable ONNX file"):
        cn.onnx.load(tmp_path / "truncated.onnx")
    (tmp_path / "garbled.onnx").write_bytes(b"\x00\xff" * 50)
    with pytest.raises(OnnxImportError, match="not a readable ONNX file"):
        cn.onnx.load(tmp_path / "garbled.onnx")
    with pytest.raises(FileNotFoundError, match="no ONNX file"):
        cn.onnx.load(tmp_path / "missing.onnx")
    assert isinstance(cn.onnx.load(tmp_path / "m.onnx"), nn.Module)
