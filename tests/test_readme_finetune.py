"""The README's fine-tuning example runs as written, from a safetensors file written by the PyTorch twin, and its
ONNX export agrees with the fine-tuned model in onnxruntime."""
import re
from pathlib import Path

import numpy as np
import pytest

import cnnnumba as cn

README = Path(__file__).resolve().parents[1] / "README.md"


def _example():
    text = README.read_text()
    section = text[text.index("## Bring a PyTorch model"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_readme_fine_tuning_example_runs(tmp_path, monkeypatch, capsys):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    twins = pytest.importorskip("cnnnumba.bench.torch_twins")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file(twins.resnet18().state_dict(), str(tmp_path / "resnet18.safetensors"))
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(_example(), str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    assert re.search(r"loss \d+\.\d{3}, test accuracy 0\.\d{3}", printed), printed
    model, test_set = namespace["model"], namespace["test_set"]
    assert set(cn.load("digits-resnet18.safetensors")) == set(model.state_dict())
    x = np.stack([test_set[i][0] for i in range(3)])
    got = ort.InferenceSession("digits-resnet18.onnx").run(None, {"input": x})[0]
    with cn.no_grad():
        expected = model(cn.Tensor(x)).data
    assert got.shape == (3, 10)
    assert np.abs(got - expected).max() <= 1e-3 * np.abs(expected).max()
