"""The training loop: learning on the digits, exact resume, non-finite losses, evaluation."""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import models, optim, train
from cnnnumba.data import ArrayDataset, DataLoader, load_digits


def _setup(seed=0, dropout=False):
    cn.manual_seed(seed)
    train_set, test_set = load_digits()
    model = models.small_cnn()
    if dropout:
        model = cn.nn.Sequential(*list(model)[:-1], cn.nn.Dropout(0.2), list(model)[-1])
    optimizer = optim.Adam(model.parameters(), lr=2e-3)
    loader = DataLoader(train_set, batch_size=64, shuffle=True, seed=seed)
    return model, optimizer, loader, DataLoader(test_set, batch_size=256)


@pytest.mark.slow
def test_a_short_run_on_the_digits_reaches_95_percent():
    model, optimizer, loader, test_loader = _setup()
    history = train.fit(model, optimizer, loader, 4, test_loader=test_loader, progress=False, log=None)
    assert len(history) == 4
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["test_accuracy"] >= 0.95
    assert train.evaluate(model, test_loader)["accuracy"] == history[-1]["test_accuracy"]


def test_resuming_from_a_checkpoint_equals_training_straight_through(tmp_path):
    path = tmp_path / "state.ckpt"
    model, optimizer, loader, _ = _setup(dropout=True)
    scheduler = optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    train.fit(model, optimizer, loader, 2, scheduler=scheduler, checkpoint_path=path, progress=False, log=None)
    straight = train.fit(model, optimizer, loader, 4, scheduler=scheduler, start_epoch=2, progress=False, log=None)

    cn.manual_seed(123)  # a resumed process starts with an unrelated random state
    resumed_model, resumed_optimizer, resumed_loader, _ = _setup(seed=7, dropout=True)
    resumed_scheduler = optim.lr_scheduler.StepLR(resumed_optimizer, step_size=1, gamma=0.5)
    epoch, history = train.load_training_state(path, resumed_model, resumed_optimizer, resumed_scheduler,
                                               resumed_loader)
    assert epoch == 2 and len(history) == 2
    resumed = train.fit(resumed_model, resumed_optimizer, resumed_loader, 4, scheduler=resumed_scheduler,
                        start_epoch=epoch, history=history, progress=False, log=None)
    assert len(resumed) == 4
    assert [r["train_loss"] for r in resumed[2:]] == [r["train_loss"] for r in straight]
    for (name, expected), actual in zip(model.state_dict().items(), resumed_model.state_dict().values()):
        np.testing.assert_array_equal(actual, expected, err_msg=name)


def test_a_non_finite_loss_stops_training_and_writes_no_checkpoint(tmp_path):
    model, optimizer, _, _ = _setup()
    images = np.full((8, 1, 8, 8), np.nan, np.float32)
    loader = DataLoader(ArrayDataset(images, np.zeros(8, np.int64)), batch_size=4)
    path = tmp_path / "never.ckpt"
    with pytest.raises(train.NonFiniteLossError, match="the training loss became nan at epoch 1, step 1"):
        train.fit(model, optimizer, loader, 1, checkpoint_path=path, progress=False, log=None)
    assert not path.exists()


def test_a_bare_state_dict_is_not_taken_for_a_training_state(tmp_path):
    model, optimizer, loader, _ = _setup()
    cn.save(model.state_dict(), tmp_path / "weights.ckpt")
    with pytest.raises(ValueError, match="not a cnnnumba training state"):
        train.load_training_state(tmp_path / "weights.ckpt", model, optimizer, None, loader)


def test_fit_rejects_a_bad_epoch_count():
    model, optimizer, loader, _ = _setup()
    with pytest.raises(ValueError, match="epochs must be a non-negative int, but got -1"):
        train.fit(model, optimizer, loader, -1)


def test_plot_history_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    history = [{"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5, "test_loss": 1.1, "test_accuracy": 0.4},
               {"epoch": 2, "train_loss": 0.5, "train_accuracy": 0.8, "test_loss": 0.6, "test_accuracy": 0.7}]
    train.plot_history(history, tmp_path / "history.png")
    assert (tmp_path / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("where", ["training", "evaluation", "saving"])
def test_ctrl_c_anywhere_in_an_epoch_leaves_a_resumable_checkpoint(tmp_path, monkeypatch, where):
    """Ctrl-C during a training step restarts that epoch on resume; during the test evaluation or the end-of-epoch
    save (the epoch's training done) resume starts the next epoch. Either way a checkpoint is written and loads."""
    path = tmp_path / "interrupted.ckpt"
    model, optimizer, loader, test_loader = _setup()
    calls = {"count": 0}

    def interrupt_once(real):
        def call(*args, **kwargs):
            calls["count"] += 1
            if calls["count"] == 1:
                raise KeyboardInterrupt
            return real(*args, **kwargs)
        return call

    if where == "training":
        steps = {"count": 0}
        real_iter = DataLoader.__iter__

        def iterate(self):
            for batch in real_iter(self):
                steps["count"] += 1
                if self is loader and steps["count"] == 3:
                    raise KeyboardInterrupt
                yield batch
        monkeypatch.setattr(DataLoader, "__iter__", iterate)
    elif where == "evaluation":
        monkeypatch.setattr(train, "evaluate", interrupt_once(train.evaluate))
    else:
        monkeypatch.setattr(train, "save_training_state", interrupt_once(train.save_training_state))
    lines = []
    with pytest.raises(KeyboardInterrupt):
        train.fit(model, optimizer, loader, 3, test_loader=test_loader, checkpoint_path=path, progress=False,
                  log=lines.append)
    assert lines[-1] == f"interrupted: checkpoint saved to {path}"
    resumed_model, resumed_optimizer, resumed_loader, _ = _setup(seed=7)
    epoch, history = train.load_training_state(path, resumed_model, resumed_optimizer, None, resumed_loader)
    assert (epoch, len(history)) == ((0, 0) if where == "training" else (1, 1))
    for (name, expected), actual in zip(model.state_dict().items(), resumed_model.state_dict().values()):
        np.testing.assert_array_equal(actual, expected, err_msg=name)  # the weights reached, not the epoch's start


def test_progress_into_a_log_file_is_a_line_per_tenth_of_an_epoch(monkeypatch):
    """Not a terminal (a log, CI, mpiexec): whole lines, about ten per epoch, and a note that the first step
    compiles instead of a time left computed from it."""
    import io

    stream = io.StringIO()  # isatty() is False
    monkeypatch.setattr("sys.stderr", stream)
    model, optimizer, _, _ = _setup()
    images, labels = np.zeros((40 * 8, 1, 8, 8), np.float32), np.zeros(40 * 8, np.int64)
    loader = DataLoader(ArrayDataset(images, labels), batch_size=8)
    train.fit(model, optimizer, loader, 1, progress=True, log=None)
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0] == f"epoch 1/1: {train.FIRST_STEP_NOTE}"
    counts = [line for line in lines[1:] if " batches, loss " in line]
    assert len(counts) == len(lines) - 1 and 10 <= len(counts) <= 11, lines
    assert counts[-1].startswith("epoch 1/1: 40/40 batches")
