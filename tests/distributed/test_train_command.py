"""`mpiexec -n 2 cnnnumba train`: data-parallel with no extra flag, rank 0 alone prints and writes, Ctrl-C."""
import os
import signal
import subprocess
import sys
import time

import numpy as np

import cnnnumba as cn

from .launch import REPO, require_mpi, run_mpi


def test_mpiexec_trains_data_parallel_and_any_rank_count_resumes(tmp_path):
    checkpoint = tmp_path / "run.ckpt"
    result = run_mpi(["-m", "cnnnumba", "train", "--epochs", "2", "--batch-size", "32", "--checkpoint", checkpoint,
                      "--no-progress"], env={"CNNNUMBA_NUM_THREADS": ""}, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert "batch 32 per rank (64 per step), 2 ranks × 1 threads" in lines[0]
    assert sum(line.startswith("training ") for line in lines) == 1
    assert sum(line.startswith("epoch ") for line in lines) == 2
    accuracy = [line for line in lines if line.startswith("test accuracy: ")]
    assert len(accuracy) == 1 and float(accuracy[0].split(": ")[1]) > 0.5
    state = cn.load(checkpoint)
    assert not any(key.startswith("module.") for key in state["model"])

    resumed = subprocess.run([sys.executable, "-m", "cnnnumba", "train", "--epochs", "3", "--batch-size", "32",
                              "--resume", str(checkpoint), "--no-progress", "--threads", "1"], capture_output=True,
                             text=True, timeout=300, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "epoch 3/3" in resumed.stdout


def test_ctrl_c_under_mpiexec_writes_rank_0s_checkpoint_whole(tmp_path):
    require_mpi()
    checkpoint = tmp_path / "interrupted.ckpt"
    process = subprocess.Popen(["mpiexec", "-n", "2", sys.executable, "-m", "cnnnumba", "train", "--epochs", "500",
                                "--no-progress", "--checkpoint", str(checkpoint)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True,
                               env=dict(os.environ, PYTHONPATH=str(REPO), CNNNUMBA_NUM_THREADS="1"))
    try:
        deadline = time.time() + 240
        while not checkpoint.exists() and time.time() < deadline and process.poll() is None:
            time.sleep(0.2)
        assert checkpoint.exists(), "no epoch finished in time"
        first = checkpoint.stat().st_mtime_ns
        while checkpoint.stat().st_mtime_ns == first and time.time() < deadline:
            time.sleep(0.05)  # interrupt mid-epoch, right after a checkpoint was written
        os.kill(process.pid, signal.SIGINT)  # mpiexec forwards it to every rank, as a terminal's Ctrl-C
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == 130, stderr
    assert stdout.count("interrupted: checkpoint saved to") == 1, stdout
    state = cn.load(checkpoint)
    assert state["kind"] == "cnnnumba.training_state" and state["epoch"] >= 2
    assert all(np.all(np.isfinite(value)) for value in state["model"].values())
