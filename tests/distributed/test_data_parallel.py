"""The process group and DistributedDataParallel, each test a `mpiexec -n 2` job started from pytest."""
import sys

import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import distributed as dist
from cnnnumba import functional as F
from cnnnumba import optim

from .launch import WORKERS, run_mpi, worker

sys.path.insert(0, str(WORKERS))
from model import BATCHES, STEPS, batch_norm_model, small_model  # noqa: E402


def test_without_mpi4py_the_api_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # makes `from mpi4py import MPI` raise ImportError
    monkeypatch.setattr(dist, "_comm", None)
    assert not dist.is_available()
    with pytest.raises(ImportError, match=r"pip install 'cnnnumba\[mpi\]'"):
        dist.init_process_group()
    with pytest.raises(RuntimeError, match="init_process_group"):
        dist.get_rank()


def test_collectives_across_two_ranks():
    result = run_mpi([worker("collectives.py")])
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split("\n")[:-1]) == ["ok rank 0", "ok rank 1"]


def test_an_exception_on_one_rank_ends_the_whole_job():
    result = run_mpi([worker("failing_rank.py")], timeout=60)
    assert result.returncode != 0
    assert "rank 1 broke on purpose" in result.stderr
    assert "rank 0 finished" not in result.stdout


@pytest.mark.parametrize("case, message", [
    ("shape", "parameter '0.weight' has shape (2, 4) and dtype float32 on rank 1, but shape (3, 4)"),
    ("missing", "rank 1 has no parameter '2.weight'"),
])
def test_models_that_differ_across_ranks_fail_when_wrapped(case, message):
    result = run_mpi([worker("different_models.py"), case])
    assert result.returncode == 0, result.stderr
    lines = sorted(result.stdout.strip().split("\n"))
    assert len(lines) == 2 and all("expects the same model on every rank" in line for line in lines), lines
    assert all(message in line for line in lines), lines


def _single_process_weights():
    cn.manual_seed(0)
    model = small_model()
    optimizer = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for images, labels in BATCHES[:STEPS]:
        optimizer.zero_grad()
        F.cross_entropy(model(cn.Tensor(images)), labels).backward()
        optimizer.step()
    return model.state_dict()


@pytest.mark.parametrize("mode", ["eager", "captured"])
def test_two_ranks_on_half_batches_equal_one_process_on_whole_batches(mode, tmp_path):
    result = run_mpi([worker("same_step.py"), mode, tmp_path])
    assert result.returncode == 0, result.stderr
    rank0, rank1 = np.load(tmp_path / "rank0.npz"), np.load(tmp_path / "rank1.npz")
    expected = _single_process_weights()
    assert sorted(rank0.files) == sorted(expected)
    for name, value in expected.items():
        assert np.array_equal(rank0[name], rank1[name]), name  # every rank took the same step
        np.testing.assert_allclose(rank0[name], value, rtol=1e-12, atol=1e-14, err_msg=name)


def test_the_same_seed_and_ranks_give_the_same_weights_every_run(tmp_path):
    runs = []
    for attempt in range(2):
        folder = tmp_path / str(attempt)
        folder.mkdir()
        result = run_mpi([worker("same_step.py"), "captured", folder])
        assert result.returncode == 0, result.stderr
        runs.append(dict(np.load(folder / "rank0.npz")))
    for name in runs[0]:
        assert np.array_equal(runs[0][name], runs[1][name]), name


@pytest.mark.parametrize("mode", ["eager", "captured"])
def test_batch_norm_normalizes_with_each_ranks_own_batch(mode, tmp_path):
    """As PyTorch's DDP without SyncBatchNorm: the step is the mean of the gradients each rank computes with its own
    half's batch statistics; rank 0's running statistics are its own half's (and, captured, every rank's after the
    step, since rank 0's buffers are broadcast during the backward)."""
    result = run_mpi([worker("batch_norm.py"), mode, tmp_path])
    assert result.returncode == 0, result.stderr
    images, labels = BATCHES[0]
    halves = []
    for half in range(2):
        cn.manual_seed(0)
        model = batch_norm_model()
        F.cross_entropy(model(cn.Tensor(images[half * 4:(half + 1) * 4])), labels[half * 4:(half + 1) * 4]).backward()
        halves.append(model)
    rank0, rank1 = np.load(tmp_path / "rank0.npz"), np.load(tmp_path / "rank1.npz")
    for (name, p0), p1 in zip(halves[0].named_parameters(), halves[1].parameters()):
        expected = p0.data - 0.1 * (p0.grad + p1.grad) / 2
        np.testing.assert_allclose(rank0[name], expected, rtol=1e-12, atol=1e-14, err_msg=name)
        assert np.array_equal(rank0[name], rank1[name])
    own = halves[0].state_dict()
    for name in ("1.running_mean", "1.running_var"):
        np.testing.assert_allclose(rank0[name], own[name], rtol=1e-12, err_msg=name)
        if mode == "captured":
            assert np.array_equal(rank1[name], rank0[name])
        else:
            np.testing.assert_allclose(rank1[name], halves[1].state_dict()[name], rtol=1e-12, err_msg=name)
