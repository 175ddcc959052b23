"""Determinism: one seed gives bit-identical weights after N steps across runs, processes and thread counts."""
import hashlib
import os
import subprocess
import sys
import textwrap

import numba
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import models, optim, train
from cnnnumba.data import DataLoader, load_digits

STEPS_PROGRAM = textwrap.dedent("""
    import hashlib, sys
    import numpy as np
    import cnnnumba as cn
    from cnnnumba import models, optim
    from cnnnumba.data import DataLoader, load_digits

    def weights_after(steps, eager, model_name="small_cnn"):
        cn.manual_seed(11)
        model = getattr(models, model_name)() if model_name == "small_cnn" else cn.nn.Sequential(
            cn.nn.Conv2d(1, 8, 3, padding=1), cn.nn.BatchNorm2d(8), cn.nn.ReLU(), cn.nn.Dropout(0.25),
            cn.nn.Conv2d(8, 8, 3, stride=2, groups=2), cn.nn.ReLU(), cn.nn.AdaptiveAvgPool2d(1), cn.nn.Flatten(),
            cn.nn.Linear(8, 10))
        optimizer = optim.AdamW(model.parameters(), lr=3e-3)
        loader = DataLoader(load_digits()[0], batch_size=48, shuffle=True, seed=5)
        step = None if eager else cn.graph.capture(model, cn.nn.CrossEntropyLoss(), optimizer)
        for index, (images, labels) in enumerate(loader):
            if index == steps:
                break
            if step is None:
                optimizer.zero_grad()
                loss = cn.functional.cross_entropy(model(cn.Tensor(images)), labels)
                loss.backward()
                optimizer.step()
            else:
                step(images, labels)
        digest = hashlib.sha256()
        for name, value in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(value).tobytes())
        return digest.hexdigest()
""")
namespace = {}
exec(STEPS_PROGRAM, namespace)
weights_after = namespace["weights_after"]
MODELS = ["small_cnn", "dropout_groups"]


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("eager", [True, False], ids=["eager", "captured"])
def test_the_same_seed_gives_bit_identical_weights_across_runs_and_thread_counts(eager, model_name):
    threads = cn.get_num_threads()
    try:
        digests = {}
        for count in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            cn.set_num_threads(count)
            digests[count] = {weights_after(4, eager, model_name), weights_after(4, eager, model_name)}
    finally:
        cn.set_num_threads(threads)
    assert len(set.union(*digests.values())) == 1, digests


def test_a_fresh_process_reproduces_the_weights_bit_for_bit_whether_it_compiles_or_loads_its_kernels(tmp_path):
    # The first child compiles every kernel into an empty cache, the second loads them from it. With LLVM free to
    # reassociate float sums, the same kernel's code differed between the two (a callee's copy is picked at link
    # time), and so did the weights: see kernels/_runtime/jit.py.
    program = STEPS_PROGRAM + "\nprint(weights_after(4, eager=False), weights_after(4, eager=True))\n"
    printed = _compiling_then_loading(program, tmp_path)
    expected = [weights_after(4, eager=False), weights_after(4, eager=True)]
    assert printed == [expected, expected]


def _compiling_then_loading(program, cache_dir):
    """What `program` prints (split into words) in a child process that compiles every kernel into the empty
    `cache_dir`, and in a second one that loads them from it."""
    environment = dict(os.environ, CNNNUMBA_CACHE_DIR=str(cache_dir))
    printed = []
    for _ in ("compiling", "loading"):
        done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=600,
                              env=environment)
        assert done.returncode == 0, done.stderr[-3000:]
        printed.append(done.stdout.split())
    return printed


# A captured step whose parameters fill one flat arena of at least PARALLEL_MIN_SIZE elements, so that from the
# second step on the fused update runs the parallel optimizer kernels (the models above are smaller: their updates
# run serially). A parallel kernel's loop body exists twice, compiled in a library of its own and again linked into
# the kernel: a compiling process ran the one, a loading process the other (see kernels/_runtime/jit.py).
PARALLEL_UPDATE_PROGRAM = textwrap.dedent("""
    import hashlib
    import numpy as np
    import cnnnumba as cn
    from cnnnumba import nn, optim

    for make_optimizer in (lambda p: optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
                           lambda p: optim.AdamW(p, lr=1e-3)):
        cn.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 24))
        step = cn.graph.capture(model, nn.CrossEntropyLoss(), make_optimizer(model.parameters()))
        rng = np.random.default_rng(1)
        for _ in range(3):
            step(rng.standard_normal((4, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, 4))
        digest = hashlib.sha256()
        for name, value in sorted(model.state_dict().items()):
            digest.update(name.encode() + np.ascontiguousarray(value).tobytes())
        print(digest.hexdigest())
""")


def test_a_fresh_process_reproduces_the_parallel_optimizer_updates_whether_it_compiles_or_loads_them(tmp_path):
    from cnnnumba.optim.optimizer import PARALLEL_MIN_SIZE

    assert 3 * 32 * 32 * 24 + 24 >= PARALLEL_MIN_SIZE  # else this would test the serial kernels only
    compiled, loaded = _compiling_then_loading(PARALLEL_UPDATE_PROGRAM, tmp_path)
    assert len(compiled) == 2 and compiled == loaded


def test_different_seeds_give_different_weights():
    cn.manual_seed(1)
    first = hashlib.sha256(models.small_cnn().state_dict()["0.weight"].tobytes()).hexdigest()
    cn.manual_seed(2)
    assert hashlib.sha256(models.small_cnn().state_dict()["0.weight"].tobytes()).hexdigest() != first
