"""Training-state checkpoints beyond tests/io (which covers SIGKILL mid-save, truncation, object arrays, newer
format versions) and tests/test_train.py (exact resume): a training state with an unknown key set is refused by
name, and a run interrupted by SIGKILL mid-epoch resumes from its last checkpoint to the same weights as an
uninterrupted run."""
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import models, optim, train
from cnnnumba.data import DataLoader, load_digits


def _setup():
    cn.manual_seed(0)
    model = models.small_cnn()
    optimizer = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return model, optimizer, DataLoader(load_digits()[0], batch_size=64, shuffle=True, seed=3)


@pytest.mark.parametrize("edit, message", [
    (lambda state: state.pop("optimizer"), r"unknown key set \(missing: \['optimizer'\], unexpected: \[\]\)"),
    (lambda state: state.update(ema={"w": np.zeros(2)}), r"missing: \[\], unexpected: \['ema'\]"),
])
def test_a_training_state_with_an_unknown_key_set_is_refused_by_name(tmp_path, edit, message):
    model, optimizer, loader = _setup()
    state = train.training_state(model, optimizer, None, loader, 0, [])
    edit(state)
    cn.save(state, tmp_path / "edited.ckpt")
    with pytest.raises(ValueError, match=message):
        train.load_training_state(tmp_path / "edited.ckpt", model, optimizer, None, loader)


RUN = textwrap.dedent("""
    import os, sys, time
    import cnnnumba as cn
    from cnnnumba import models, optim, train
    from cnnnumba.data import DataLoader, load_digits

    path, epochs, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    resume = mode == "resume"


    class StallingLoader(DataLoader):
        # In mode "stall" the run stops after two batches of its second epoch, so the parent's kill lands
        # mid-epoch however fast an epoch is (a timed kill missed once epochs took 0.1 s).
        epochs_started = 0

        def __iter__(self):
            self.epochs_started += 1
            for index, batch in enumerate(super().__iter__()):
                if mode == "stall" and self.epochs_started == 2 and index == 2:
                    print("MID-EPOCH", flush=True)
                    time.sleep(600)
                yield batch


    cn.manual_seed(0)
    model = models.small_cnn()
    optimizer = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = StallingLoader(load_digits()[0], batch_size=64, shuffle=True, seed=3)
    start, history = train.load_training_state(path, model, optimizer, None, loader) if resume else (0, [])

    def log(line):
        print(line, flush=True)

    train.fit(model, optimizer, loader, epochs, checkpoint_path=path, start_epoch=start, history=history,
              progress=False, log=log)
    cn.save(model.state_dict(), path + ".final")
""")


def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(RUN)
    killed, straight = str(tmp_path / "killed.ckpt"), str(tmp_path / "straight.ckpt")
    done = subprocess.run([sys.executable, str(script), straight, "3", "fresh"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    victim = subprocess.Popen([sys.executable, str(script), killed, "3", "stall"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    for line in victim.stdout:
        if line.startswith("MID-EPOCH"):  # epoch 1's checkpoint is written, two steps of epoch 2 are done
            break
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    assert not os.path.exists(killed + ".final")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("killed")] == ["killed.ckpt"]

    resumed = subprocess.run([sys.executable, str(script), killed, "3", "resume"], capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, actual = cn.load(straight + ".final"), cn.load(killed + ".final")
    assert expected.keys() == actual.keys()
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)
