"""The command line end to end, in subprocesses."""
import os
import signal
import subprocess
import sys
import time

import pytest


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "cnnnumba", *args], capture_output=True, text=True, timeout=timeout)


def test_train_runs_end_to_end_and_reports_test_accuracy(tmp_path):
    checkpoint, plot = tmp_path / "run.ckpt", tmp_path / "run.png"
    result = run_cli("train", "--epochs", "2", "--batch-size", "64", "--checkpoint", str(checkpoint),
                     "--plot", str(plot), "--no-progress", "--threads", "1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1].startswith("test accuracy: 0.")
    assert float(lines[-1].split(": ")[1]) > 0.5
    assert sum(line.startswith("epoch ") for line in lines) == 2
    assert checkpoint.exists() and plot.exists()

    resumed = run_cli("train", "--epochs", "3", "--batch-size", "64", "--resume", str(checkpoint), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "epoch 3/3" in resumed.stdout
    assert "epoch 1/3" not in resumed.stdout


@pytest.mark.parametrize("args, message", [
    (["train", "--epochs", "0"], "argument --epochs: expected a positive integer, but got 0"),
    (["train", "--lr", "-1"], "argument --lr: expected a positive finite number, but got -1"),
    (["train", "--dataset", "imagenet"], "expected digits, mnist:PATH or cifar10:PATH, but got 'imagenet'"),
    (["train", "--dataset", "mnist:/nonexistent"], "argument --dataset"),
    (["train", "--model", "vgg"], "argument --model: invalid choice: 'vgg'"),
    (["train", "--model", "lenet5"], "lenet5 needs images of at least 16×16 pixels, but got 8×8"),
    (["train", "--threads", "100000"], "argument --threads"),
    (["train", "--resume", "/nonexistent.ckpt"], "argument --resume: cannot resume"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "the following arguments are required: COMMAND"),
])
def test_bad_arguments_exit_2_with_a_usage_message(args, message):
    result = run_cli(*args, timeout=120)
    assert result.returncode == 2
    assert "usage: cnnnumba" in result.stderr
    assert message in result.stderr


def test_info_lists_versions_threads_and_cache():
    result = run_cli("info")
    assert result.returncode == 0, result.stderr
    for needle in ("cnnnumba 0.", "numba ", "numpy ", "threading layer: ", "SIMD: ", "numba cache: "):
        assert needle in result.stdout


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery differs on Windows")
def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    checkpoint = tmp_path / "interrupted.ckpt"
    process = subprocess.Popen([sys.executable, "-m", "cnnnumba", "train", "--epochs", "50", "--no-progress",
                                "--checkpoint", str(checkpoint)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + 240
    while not checkpoint.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert checkpoint.exists(), "no epoch finished in time"
    os.kill(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted: checkpoint saved to" in stdout
    assert "Traceback" not in stderr
    resumed = run_cli("train", "--epochs", "1", "--resume", str(checkpoint), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr


def test_export_writes_onnx_from_safetensors_weights(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import numpy as np

    import cnnnumba as cn

    cn.manual_seed(0)
    model = cn.models.mobilenet_v2(num_classes=4, width_mult=0.25, in_channels=1).eval()
    cn.save(model.state_dict(), tmp_path / "w.safetensors")
    result = run_cli("export", str(tmp_path / "w.safetensors"), "--model", "mobilenet_v2", "--onnx",
                     str(tmp_path / "m.onnx"), "--image-size", "32")
    assert result.returncode == 2 and "size mismatch" in result.stderr  # width 0.25 is not the CLI's model
    model = cn.models.resnet18(num_classes=4, in_channels=1).eval()
    cn.save(model.state_dict(), tmp_path / "w.safetensors")
    result = run_cli("export", str(tmp_path / "w.safetensors"), "--model", "resnet18", "--onnx",
                     str(tmp_path / "m.onnx"), "--image-size", "32")
    assert result.returncode == 0, result.stderr
    assert "resnet18 (1 channels, 4 classes, 32×32 example)" in result.stdout
    x = np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32)
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"input": x})[0]
    with cn.no_grad():
        expected = model(cn.Tensor(x)).data
    assert np.abs(got - expected).max() <= 1e-3 * np.abs(expected).max()
    missing = run_cli("export", str(tmp_path / "none.safetensors"), "--model", "resnet18", "--onnx", "x.onnx")
    assert missing.returncode == 2 and "argument WEIGHTS" in missing.stderr
