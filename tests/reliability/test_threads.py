"""Threads and processes: concurrent training and inference from Python threads, spawned and forked children."""
import subprocess
import sys
import textwrap
import threading

import numba
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import models, optim
from cnnnumba.data import DataLoader, load_digits


def _train(model, optimizer, loader, steps, eager):
    """`steps` training steps; returns the losses."""
    losses = []
    step = None if eager else cn.graph.capture(model, cn.nn.CrossEntropyLoss(), optimizer)
    for images, labels in loader:
        if len(losses) == steps:
            break
        if step is None:
            optimizer.zero_grad()
            loss = cn.functional.cross_entropy(model(cn.Tensor(images)), labels)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.item()))
        else:
            losses.append(float(step(images, labels)))
    return losses


def _job(seed, eager):
    """A model, optimizer and loader built from `seed` (before any thread starts: they draw from the global
    generator, which threads share)."""
    cn.manual_seed(seed)
    model = models.small_cnn()
    train_set, _ = load_digits()
    loader = DataLoader(train_set, batch_size=32, shuffle=True, seed=seed)
    return model, optim.SGD(model.parameters(), lr=0.05, momentum=0.9), loader, eager


def _weights(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


def _run_in_threads(jobs, target):
    results, errors = [None] * len(jobs), []

    def run(index):
        try:
            results[index] = target(*jobs[index])
        except BaseException as error:  # re-raised in the main thread below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("eager", [True, False], ids=["eager", "captured"])
def test_two_threads_training_at_once_equal_sequential_runs(eager):
    steps = 6
    sequential = []
    for seed in (1, 2):
        model, optimizer, loader, _ = _job(seed, eager)
        sequential.append((_train(model, optimizer, loader, steps, eager), _weights(model)))
    jobs = [_job(seed, eager) for seed in (1, 2)]
    concurrent = _run_in_threads([(m, o, l, steps, e) for m, o, l, e in jobs], _train)
    for (losses, weights), concurrent_losses, (model, *_rest) in zip(sequential, concurrent, jobs):
        assert concurrent_losses == losses
        for name, value in model.state_dict().items():
            np.testing.assert_array_equal(value, weights[name], err_msg=name)


def test_two_threads_inferring_with_one_model_at_once_equal_a_sequential_run():
    cn.manual_seed(3)
    model = models.small_cnn().eval()
    images = np.random.default_rng(3).standard_normal((4, 64, 1, 8, 8)).astype(np.float32)

    def infer(batches):
        with cn.no_grad():
            return [model(cn.Tensor(b)).data.copy() for b in batches]

    expected = infer(images)
    for outputs in _run_in_threads([(images,), (images[::-1],)], infer):
        got = outputs if np.array_equal(outputs[0], expected[0]) else outputs[::-1]
        for e, g in zip(expected, got):
            np.testing.assert_array_equal(g, e)


def _launch_thread_pool():
    """Run a kernel that is a parallel region at any size (a depthwise convolution), which starts the pool."""
    cn.functional.conv2d(cn.Tensor(np.zeros((1, 2, 3, 3))), cn.Tensor(np.ones((2, 1, 3, 3))), groups=2)


def test_the_threading_layer_is_one_numba_documents_as_thread_safe():
    _launch_thread_pool()
    assert numba.threading_layer() in ("omp", "tbb")


PROCESS_PROGRAM = textwrap.dedent("""
    import multiprocessing, os, sys
    import numpy as np
    import cnnnumba as cn
    from cnnnumba import functional as F

    def pooled_sum(seed):
        # a depthwise convolution: its kernel is a parallel region whatever the size (small pools now run serially)
        x = np.random.default_rng(seed).standard_normal((2, 3, 8, 8))
        return float(F.conv2d(cn.Tensor(x), cn.Tensor(np.ones((3, 1, 3, 3))), groups=3).data.sum())

    if __name__ == "__main__":
        parent = pooled_sum(0)  # the parent has run a parallel kernel before any child starts
        mode = sys.argv[1]
        if mode == "spawn":
            with multiprocessing.get_context("spawn").Pool(2) as pool:
                children = pool.map(pooled_sum, [0, 0])
            print("equal" if children == [parent, parent] else f"differ {children} {parent}")
        else:
            pid = os.fork()
            if pid == 0:
                pooled_sum(0)
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            print("child", "signal" if os.WIFSIGNALED(status) else "exit",
                  os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
""")


def _process(tmp_path, mode):
    script = tmp_path / "program.py"
    script.write_text(PROCESS_PROGRAM)
    done = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_spawned_worker_processes_reproduce_the_parent(tmp_path):
    assert _process(tmp_path, "spawn").stdout.split()[-1] == "equal"


@pytest.mark.skipif(sys.platform != "linux", reason="GNU OpenMP's fork limitation is specific to Linux")
def test_a_forked_child_running_kernels_after_the_parent_did_is_stopped_as_the_readme_says(tmp_path):
    _launch_thread_pool()
    if numba.threading_layer() != "omp":
        pytest.skip("only the GNU OpenMP layer refuses kernels in a forked child")
    done = _process(tmp_path, "fork")
    assert done.stdout.split()[-3:] == ["child", "signal", "15"]  # SIGTERM from Numba, not a hang or a crash
    assert "fork() called from a process already using GNU OpenMP, this is unsafe" in done.stderr
