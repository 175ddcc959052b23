"""The training loop: fit, evaluate, and training-state checkpoints that resume exactly."""
import contextlib
import math
import sys
import time

import numpy as np

from . import _config
from . import distributed as dist
from .autograd import Tensor, detect_anomaly as _detect_anomaly, no_grad
from .graph import capture
from .io import load, save
from .nn.parallel import DistributedDataParallel
from .ops.loss import cross_entropy

CHECKPOINT_KIND = "cnnnumba.training_state"


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; nothing was written."""


def evaluate(model, loader, loss_fn=cross_entropy, reduce_across_ranks=False):
    """Mean loss and accuracy of `model` over `loader`, in eval mode and without recording gradients.

    With `reduce_across_ranks` every rank of the process group must call it (a collective): each evaluates its
    loader (its share of the test set) and all get the mean over every rank's samples."""
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    try:
        with no_grad():
            for images, labels in loader:
                logits = model(Tensor(images))
                total_loss += float(loss_fn(logits, labels, reduction="sum").item())
                correct += int(np.sum(np.argmax(logits.data, axis=1) == labels))
                count += len(labels)
    finally:
        model.train(was_training)
    if reduce_across_ranks:
        total_loss, correct, count = _sum_over_ranks(total_loss, correct, count)
    if count == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    return {"loss": total_loss / count, "accuracy": correct / count}


def _sum_over_ranks(*values):
    totals = np.array(values, dtype=np.float64)
    dist.all_reduce(totals)
    return totals.tolist()


def training_state(model, optimizer, scheduler, loader, epoch, history):
    """Everything needed to continue training exactly where it stopped, as a checkpointable structure."""
    return {
        "kind": CHECKPOINT_KIND,
        "epoch": int(epoch),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "loader": loader.state_dict(),
        "rng": _config.get_rng_state(),
        "history": list(history),
    }


def restore_training_state(state, model, optimizer, scheduler, loader):
    """Load a `training_state` back into live objects; returns (epochs done, history)."""
    if not isinstance(state, dict) or state.get("kind") != CHECKPOINT_KIND:
        raise ValueError("this checkpoint is not a cnnnumba training state (it may be a bare model state dict)")
    expected = {"kind", "epoch", "model", "optimizer", "scheduler", "loader", "rng", "history"}
    if set(state) != expected:
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected, key=str)
        raise ValueError(f"this training state has an unknown key set (missing: {missing}, unexpected: "
                         f"{unexpected}); it was written by a different version or edited")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        if state["scheduler"] is None:
            raise ValueError("the checkpoint has no scheduler state, but a scheduler was given")
        scheduler.load_state_dict(state["scheduler"])
    loader.load_state_dict(state["loader"])
    _config.set_rng_state(state["rng"])
    return state["epoch"], list(state["history"])


def save_training_state(path, model, optimizer, scheduler, loader, epoch, history):
    state = training_state(model, optimizer, scheduler, loader, epoch, history)
    for name, value in state["model"].items():
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            raise NonFiniteLossError(f"refusing to write a checkpoint: parameter {name!r} is not finite")
    save(state, path)


def load_training_state(path, model, optimizer, scheduler, loader):
    return restore_training_state(load(path), model, optimizer, scheduler, loader)


FIRST_STEP_NOTE = "step 1 records the graph and compiles the kernels (slow on the first run only; cached after)"


class _LineProgress:
    """Progress for a stream that is not a terminal (a log file, CI, mpiexec's forwarded output): a line per
    tenth of the epoch, or after `interval` seconds, instead of a carriage-return update per batch."""

    def __init__(self, total, description, stream, interval=10.0):
        self.total, self.description, self.stream, self.interval = total, description, stream, interval
        self.n, self.postfix = 0, ""
        self.last_line_at, self.last_tenth = time.perf_counter(), 0

    def note(self, text):
        self.stream.write(f"{self.description}: {text}\n")
        self.stream.flush()

    def update(self, n=1):
        self.n += n

    def set_postfix(self, **values):
        self.postfix = ", ".join(f"{name} {value}" for name, value in values.items())
        tenth = 10 * self.n // max(self.total, 1)
        now = time.perf_counter()
        if tenth > self.last_tenth or now - self.last_line_at >= self.interval:
            self.last_tenth, self.last_line_at = tenth, now
            self.note(f"{self.n}/{self.total} batches, {self.postfix}")

    def restart_clock(self):
        pass

    def close(self):
        pass


class _BarProgress:
    """tqdm's bar on a terminal; `note` shows a message in it, `restart_clock` leaves the first step (compilation)
    out of its rate and time left."""

    def __init__(self, total, description, stream):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=description, unit="batch", leave=False, dynamic_ncols=True, file=stream)

    def note(self, text):
        self.bar.set_postfix_str(text)

    def update(self, n=1):
        self.bar.update(n)

    def set_postfix(self, **values):
        self.bar.set_postfix(**values)

    def restart_clock(self):
        done = self.bar.n
        self.bar.reset(total=self.bar.total)
        self.bar.update(done)

    def close(self):
        self.bar.close()


class _NoProgress:
    def _ignore(self, *args, **kwargs):
        pass

    note = update = set_postfix = restart_clock = close = _ignore


def _progress(total, description, enabled, stream=None):
    if not enabled:
        return _NoProgress()
    stream = sys.stderr if stream is None else stream
    if getattr(stream, "isatty", lambda: False)():
        return _BarProgress(total, description, stream)
    return _LineProgress(total, description, stream)


def fit(model, optimizer, train_loader, epochs, loss_fn=cross_entropy, scheduler=None, scheduler_per_step=False,
        test_loader=None, checkpoint_path=None, start_epoch=0, history=None, progress=True, log=print, eager=False,
        detect_anomaly=False):
    """Train `model` for epochs start_epoch..epochs-1; returns the history, one dict per epoch.

    Each epoch records train loss/accuracy, images per second and seconds, and test loss/accuracy when a
    test loader is given. With `checkpoint_path` the full training state is saved after every epoch; on Ctrl-C
    (KeyboardInterrupt) the state at the start of the interrupted epoch's data order, with the weights reached
    so far, is saved before the interrupt propagates. A non-finite loss stops training with
    NonFiniteLossError before anything is written.

    Steps run captured (`cnnnumba.graph.capture`: recorded once per batch shape, then replayed with planned
    memory and fused kernels; the same numbers as eager within float rounding); `eager=True` runs each step
    op by op instead. A captured step has already updated the weights when a non-finite loss is seen.
    `detect_anomaly=True` runs eager steps under `cnnnumba.autograd.detect_anomaly()`: the first op whose forward
    or backward produces NaN or Inf raises AnomalyError naming it, before the weights change or anything is saved.

    Data-parallel: every rank calls fit with `model` a DistributedDataParallel and a train loader over its share
    (a DistributedSampler, whose `set_epoch` fit calls each epoch). The epoch's train loss, accuracy and images/s
    are summed over all ranks, and the test metrics too (give each rank its share of the test set). Checkpoints
    hold the unwrapped model (`model.module`), so any number of ranks can resume them; pass `checkpoint_path` and
    `log` on rank 0 alone.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative int, but got {epochs!r}")
    if not isinstance(detect_anomaly, bool):
        raise TypeError(f"fit expected detect_anomaly to be a bool, but got {type(detect_anomaly).__name__}")
    eager = eager or detect_anomaly
    history = list(history or [])
    captured_step = None
    distributed = isinstance(model, DistributedDataParallel)
    saved_model = model.module if distributed else model
    sampler = getattr(train_loader, "sampler", None)
    first_step_of_run = True

    def save_interrupted(epochs_done, data_order):
        """On Ctrl-C: the training state with the weights reached so far and the loader at `data_order`."""
        if checkpoint_path is None:
            return
        current = train_loader.state_dict()
        train_loader.load_state_dict(data_order)
        save_training_state(checkpoint_path, saved_model, optimizer, scheduler, train_loader, epochs_done, history)
        train_loader.load_state_dict(current)
        if log is not None:
            log(f"interrupted: checkpoint saved to {checkpoint_path}")

    for epoch in range(start_epoch, epochs):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        loader_state = train_loader.state_dict()
        model.train()
        if not eager and captured_step is None:
            captured_step = capture(model, loss_fn, optimizer)
        total_loss, correct, count, started = 0.0, 0, 0, time.perf_counter()
        rate_since, rate_count = started, 0  # the progress rate leaves out the run's first (compiling) step
        bar = _progress(len(train_loader), f"epoch {epoch + 1}/{epochs}", progress)
        try:
            for step, (images, labels) in enumerate(train_loader):
                if first_step_of_run:
                    bar.note(FIRST_STEP_NOTE)
                if captured_step is None:
                    optimizer.zero_grad()
                    with _detect_anomaly() if detect_anomaly else contextlib.nullcontext():
                        logits = model(Tensor(images))
                        loss = loss_fn(logits, labels)
                    value = float(loss.item())
                else:
                    value = captured_step(images, labels)
                    logits = Tensor(captured_step.logits)
                if not math.isfinite(value):
                    raise NonFiniteLossError(
                        f"the training loss became {value} at epoch {epoch + 1}, step {step + 1}; "
                        "stopping without writing a checkpoint (try a lower learning rate)")
                if captured_step is None:
                    with _detect_anomaly() if detect_anomaly else contextlib.nullcontext():
                        loss.backward()
                    optimizer.step()
                if scheduler is not None and scheduler_per_step:
                    scheduler.step()
                total_loss += value * len(labels)
                correct += int(np.sum(np.argmax(logits.data, axis=1) == labels))
                count += len(labels)
                now = time.perf_counter()
                if first_step_of_run:
                    bar.restart_clock()
                    first_step_of_run = False
                    rate_since, rate_count = now, count
                bar.update(1)
                rate = (count - rate_count) / max(now - rate_since, 1e-9) if count > rate_count \
                    else count / max(now - started, 1e-9)
                bar.set_postfix(loss=f"{total_loss / count:.4f}", img_s=f"{rate:.0f}")
        except KeyboardInterrupt:
            bar.close()
            save_interrupted(epoch, loader_state)  # the epoch restarts from its data order on resume
            raise
        bar.close()
        if scheduler is not None and not scheduler_per_step:
            scheduler.step()
        if distributed:
            total_loss, correct, count = _sum_over_ranks(total_loss, correct, count)
        seconds = time.perf_counter() - started
        record = {"epoch": epoch + 1, "train_loss": total_loss / max(count, 1),
                  "train_accuracy": correct / max(count, 1), "images_per_second": count / max(seconds, 1e-9),
                  "seconds": seconds}
        try:
            if test_loader is not None:
                result = evaluate(saved_model, test_loader, loss_fn, reduce_across_ranks=distributed)
                record["test_loss"], record["test_accuracy"] = result["loss"], result["accuracy"]
        except KeyboardInterrupt:
            # the epoch's training is complete (its test metrics are not): resume starts the next epoch
            history.append(record)
            save_interrupted(epoch + 1, train_loader.state_dict())
            raise
        history.append(record)
        if log is not None:
            log(format_epoch(record, epochs))
        if checkpoint_path is not None:
            try:
                save_training_state(checkpoint_path, saved_model, optimizer, scheduler, train_loader, epoch + 1,
                                    history)
            except KeyboardInterrupt:  # the interrupted write left the previous file; write this epoch's again
                save_interrupted(epoch + 1, train_loader.state_dict())
                raise
    return history


def format_epoch(record, epochs):
    line = (f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f}, "
            f"train accuracy {record['train_accuracy']:.4f}")
    if "test_accuracy" in record:
        line += f", test loss {record['test_loss']:.4f}, test accuracy {record['test_accuracy']:.4f}"
    return line + f", {record['images_per_second']:.0f} images/s, {record['seconds']:.1f} s"


def plot_history(history, path):
    """Save a PNG of loss and accuracy per epoch (needs matplotlib: pip install cnnnumba[plot])."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install 'cnnnumba[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axes.plot(epochs, [r["train_loss"] for r in history], marker="o", label="train")
    accuracy_axes.plot(epochs, [r["train_accuracy"] for r in history], marker="o", label="train")
    if history and "test_loss" in history[0]:
        loss_axes.plot(epochs, [r["test_loss"] for r in history], marker="o", label="test")
        accuracy_axes.plot(epochs, [r["test_accuracy"] for r in history], marker="o", label="test")
    for axes, name in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        axes.set_xlabel("epoch")
        axes.set_ylabel(name)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
