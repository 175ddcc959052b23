"""Numerical faults: non-finite gradients, extreme logits, NaN through pooling, non-finite losses and checkpoints."""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import functional as F
from cnnnumba import models, nn, optim, train
from cnnnumba.data import ArrayDataset, DataLoader, load_digits

from ..helpers import compare_with_torch, requires_torch, torch


def _parameters_with_grads(*grads):
    params = [nn.Parameter(np.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.copy()
    return params


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf")])
def test_clip_grad_norm_error_if_nonfinite(bad, norm_type):
    params = _parameters_with_grads(np.ones(3), np.array([1.0, bad]))
    with pytest.raises(RuntimeError, match=f"The total norm of order {norm_type} for gradients from `parameters` "
                                           "is non-finite, so it cannot be clipped"):
        nn.utils.clip_grad_norm_(params, 1.0, norm_type=norm_type, error_if_nonfinite=True)
    np.testing.assert_array_equal(params[0].grad, np.ones(3))  # nothing was scaled before the error


def test_clip_grad_norm_with_finite_grads_and_error_if_nonfinite_clips():
    params = _parameters_with_grads(np.array([3.0, 4.0]))
    norm = nn.utils.clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
    assert norm.item() == 5.0 and np.allclose(params[0].grad, [0.6, 0.8], atol=1e-6)


@pytest.mark.parametrize("scale", [1e4, -1e4, 3e38])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_stays_finite_for_huge_logits(scale, dtype):
    logits = cn.Tensor((np.array([[1.0, -1.0, 0.5], [0.0, 1.0, -0.25]]) * scale).astype(dtype), requires_grad=True)
    loss = F.cross_entropy(logits, np.array([0, 2]))
    loss.backward()
    assert np.isfinite(loss.item()) and np.all(np.isfinite(logits.grad))
    assert F.log_softmax(logits, 1).data.max() <= 0


@requires_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cross_entropy_for_logits_of_plus_minus_1e4_matches_torch(dtype, label_smoothing):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4], [1e4, 1e4, -1e4]])
    target = np.array([1, 2, 0])
    compare_with_torch(lambda x, t: F.cross_entropy(x, t, label_smoothing=label_smoothing),
                       lambda x, t: torch.nn.functional.cross_entropy(x, t, label_smoothing=label_smoothing),
                       [logits, target], dtype=dtype, tolerances=(1e-6, 1e-3, 1e-6, 1e-6))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool2d_propagates_nan_forward_and_backward(dtype):
    x = np.arange(2 * 3 * 4 * 4, dtype=dtype).reshape(2, 3, 4, 4)
    x[1, 2, 0, 1] = np.nan
    x[0, 0, 3, 3] = np.inf
    tensor = cn.Tensor(x, requires_grad=True)
    out = F.max_pool2d(tensor, 2)
    assert np.isnan(out.data[1, 2, 0, 0]) and np.isinf(out.data[0, 0, 1, 1])
    assert np.isnan(out.data).sum() == 1
    out.sum().backward()
    assert tensor.grad[1, 2, 0, 1] == 1 and tensor.grad[1, 2].sum() == 4  # the NaN won its window
    nan_only = cn.Tensor(np.full((1, 1, 2, 2), np.nan, dtype))
    assert np.isnan(F.max_pool2d(nan_only, 2, padding=1).data).all()


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the injected Inf, in NumPy's matmul
def test_non_finite_loss_in_a_captured_run_keeps_the_previous_checkpoint(tmp_path):
    """Epoch 1 saves a checkpoint; epoch 2 meets an Inf image: training stops and the epoch-1 file is untouched."""
    cn.manual_seed(0)
    train_set, _ = load_digits()
    images, labels = train_set.images[:64].copy(), train_set.labels[:64].copy()
    model = models.small_cnn()
    optimizer = optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(ArrayDataset(images, labels), batch_size=32)
    path = tmp_path / "state.ckpt"
    train.fit(model, optimizer, loader, 1, checkpoint_path=path, progress=False, log=None)
    saved = path.read_bytes()
    images[40] = np.inf
    with pytest.raises(train.NonFiniteLossError, match="the training loss became nan at epoch 2, step 2"):
        train.fit(model, optimizer, loader, 2, start_epoch=1, checkpoint_path=path, progress=False, log=None)
    assert path.read_bytes() == saved and sorted(p.name for p in tmp_path.iterdir()) == ["state.ckpt"]
    state = cn.load(path)
    assert all(np.all(np.isfinite(v)) for v in state["model"].values() if v.dtype.kind == "f")


def test_a_non_finite_parameter_is_never_written(tmp_path):
    model = models.small_cnn()
    list(model.parameters())[0].data[0, 0, 0, 0] = np.nan
    loader = DataLoader(ArrayDataset(np.zeros((2, 1, 8, 8), np.float32), np.zeros(2, np.int64)))
    with pytest.raises(train.NonFiniteLossError, match="refusing to write a checkpoint: parameter '0.weight' is "
                                                       "not finite"):
        train.save_training_state(tmp_path / "x.ckpt", model, optim.SGD(model.parameters(), lr=0.1), None,
                                  loader, 0, [])
    assert not list(tmp_path.iterdir())
