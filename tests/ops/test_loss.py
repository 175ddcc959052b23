"""softmax, log_softmax, cross_entropy, nll_loss and mse_loss against PyTorch, gradchecks and validation errors."""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import functional as F
from tests.helpers import check_gradients, compare_with_torch, random_arrays, requires_torch, torch

TF = torch.nn.functional if torch is not None else None
DTYPES = [np.float32, np.float64]
REDUCTIONS = ["none", "mean", "sum"]


def _logits(shape, scale=1.0, seed=0):
    return np.random.default_rng(seed).standard_normal(shape) * scale


def _labels(shape, classes, seed=1, ignored=(), ignore_index=-100):
    labels = np.random.default_rng(seed).integers(0, classes, shape)
    labels.reshape(-1)[list(ignored)] = ignore_index
    return labels


SOFTMAX_CASES = [((4, 5), 1), ((4, 5), 0), ((2, 3, 4), 1), ((2, 3, 4), -1), ((5,), 0), ((), 0), ((3, 1), 1)]


@requires_torch
@pytest.mark.parametrize("scale", [1.0, 100.0, 1e4])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, dim", SOFTMAX_CASES)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_matches_torch(name, shape, dim, dtype, scale):
    out = compare_with_torch(lambda x: getattr(F, name)(x, dim), lambda x: getattr(TF, name)(x, dim),
                             [_logits(shape, scale)], dtype=dtype)
    assert np.isfinite(out.data).all()


@requires_torch
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_of_non_contiguous_input_and_dtype_argument_match_torch(name):
    compare_with_torch(lambda x: getattr(F, name)(x.transpose(0, 2), 1),
                       lambda x: getattr(TF, name)(x.transpose(0, 2), 1), [_logits((3, 4, 2))])
    compare_with_torch(lambda x: getattr(F, name)(x, 1, dtype=np.float64),
                       lambda x: getattr(TF, name)(x, 1, dtype=torch.float64), [_logits((3, 4))], dtype=np.float32)


@pytest.mark.parametrize("shape, dim", [((3, 4), 1), ((2, 3, 2), 0)])
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_gradcheck(name, shape, dim):
    check_gradients(lambda x: getattr(F, name)(x, dim), [_logits(shape)])


CROSS_ENTROPY_CASES = [
    # (logits shape, options, ignored flat positions)
    ((4, 5), {}, ()),
    ((4, 5), {"weight": True}, ()),
    ((6, 5), {"ignore_index": -100}, (1, 4)),
    ((6, 5), {"ignore_index": 2, "weight": True}, (0, 3)),
    ((6, 5), {"label_smoothing": 0.1}, ()),
    ((6, 5), {"label_smoothing": 0.25, "weight": True, "ignore_index": -1}, (2,)),
    ((6, 5), {"label_smoothing": 1.0}, ()),
    ((2, 3, 4, 5), {}, ()),
    ((2, 3, 4, 5), {"weight": True, "label_smoothing": 0.2, "ignore_index": 0}, (1, 7, 30)),
    ((2, 4, 3), {"ignore_index": -100}, (0,)),
    ((1, 1), {}, ()),
    ((5,), {"label_smoothing": 0.3}, ()),  # unbatched: target is a 0-d class index
]


def _cross_entropy_arrays(shape, options, ignored, scale=1.0):
    classes = shape[0] if len(shape) == 1 else shape[1]
    target_shape = () if len(shape) == 1 else shape[:1] + shape[2:]
    target = _labels(target_shape, classes, ignored=ignored, ignore_index=options.get("ignore_index", -100))
    arrays = [_logits(shape, scale), target]
    if options.get("weight"):
        arrays.append(np.random.default_rng(3).uniform(0.5, 2.0, classes))
    return arrays, {k: v for k, v in options.items() if k != "weight"}


@requires_torch
@pytest.mark.parametrize("scale", [1.0, 100.0, 1e4])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape, options, ignored", CROSS_ENTROPY_CASES)
def test_cross_entropy_matches_torch(shape, options, ignored, reduction, dtype, scale):
    arrays, options = _cross_entropy_arrays(shape, options, ignored, scale)
    requires_grad = [True, False, False]
    out = compare_with_torch(lambda *a: F.cross_entropy(*a, reduction=reduction, **options),
                             lambda *a: TF.cross_entropy(*a, reduction=reduction, **options),
                             arrays, dtype=dtype, requires_grad=requires_grad[:len(arrays)])
    assert np.isfinite(out.data).all()


@requires_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss"])
def test_every_target_ignored_matches_torch(name, reduction, dtype):
    compare_with_torch(lambda x, t: getattr(F, name)(x, t, reduction=reduction),
                       lambda x, t: getattr(TF, name)(x, t, reduction=reduction),
                       [_logits((3, 4)), np.full(3, -100)], dtype=dtype)


PROBABILITY_CASES = [
    ((4, 5), {}),
    ((4, 5), {"weight": True}),
    ((4, 5), {"label_smoothing": 0.2, "weight": True}),
    ((2, 3, 2, 2), {"label_smoothing": 0.1}),
    ((5,), {}),
]


@requires_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape, options", PROBABILITY_CASES)
def test_cross_entropy_with_class_probabilities_matches_torch(shape, options, reduction, dtype):
    classes = shape[0] if len(shape) == 1 else shape[1]
    probabilities = np.random.default_rng(4).dirichlet(np.ones(classes), int(np.prod(shape)) // classes)
    probabilities = np.moveaxis(probabilities.reshape((shape[0],) + shape[2:] + (classes,)), -1, 1) \
        if len(shape) > 1 else probabilities.reshape(shape)
    arrays = [_logits(shape, 3.0), probabilities]
    if options.get("weight"):
        arrays.append(np.random.default_rng(3).uniform(0.5, 2.0, classes))
    options = {k: v for k, v in options.items() if k != "weight"}
    compare_with_torch(lambda *a: F.cross_entropy(*a, reduction=reduction, **options),
                       lambda *a: TF.cross_entropy(*a, reduction=reduction, **options),
                       arrays, dtype=dtype, requires_grad=[True, True, False][:len(arrays)])


NLL_CASES = [
    ((4, 5), {}, ()),
    ((4, 5), {"weight": True}, ()),
    ((6, 5), {"ignore_index": 3, "weight": True}, (0, 5)),
    ((2, 3, 4, 5), {"ignore_index": -100}, (2, 9)),
    ((5,), {}, ()),
]


@requires_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape, options, ignored", NLL_CASES)
def test_nll_loss_matches_torch(shape, options, ignored, reduction, dtype):
    arrays, options = _cross_entropy_arrays(shape, options, ignored)
    compare_with_torch(lambda *a: F.nll_loss(*a, reduction=reduction, **options),
                       lambda *a: TF.nll_loss(*a, reduction=reduction, **options),
                       arrays, dtype=dtype, requires_grad=[True, False, False][:len(arrays)])


@requires_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 4), (1,), (0, 3)])
def test_mse_loss_matches_torch(shape, reduction, dtype):
    compare_with_torch(lambda x, t: F.mse_loss(x, t, reduction=reduction),
                       lambda x, t: TF.mse_loss(x, t, reduction=reduction),
                       random_arrays(shape, shape), dtype=dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_loss_gradchecks(reduction):
    labels = np.array([0, 2, -100, 1])
    check_gradients(lambda x: F.cross_entropy(x, labels, reduction=reduction, label_smoothing=0.1),
                    [_logits((4, 3))])
    spatial_labels = np.array([[0, 2], [1, -100]])
    check_gradients(lambda x: F.cross_entropy(x, spatial_labels, weight=np.array([0.5, 1.0, 2.0]),
                                              reduction=reduction), [_logits((2, 3, 2))])
    check_gradients(lambda x, t: F.cross_entropy(x, t, reduction=reduction, label_smoothing=0.2),
                    [_logits((3, 4)), np.full((3, 4), 0.25)])
    check_gradients(lambda x: F.nll_loss(x, labels, reduction=reduction), [_logits((4, 3))])
    check_gradients(lambda x, t: F.mse_loss(x, t, reduction=reduction), random_arrays((3, 2), (3, 2)))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_is_identical_for_one_and_two_threads(reduction):
    logits, projection = _logits((300, 7), 10.0).astype(np.float32), _logits((300,), seed=2).astype(np.float32)
    labels = _labels((300,), 7)
    previous = cn.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            cn.set_num_threads(threads)
            x = cn.Tensor(logits.copy(), requires_grad=True)
            loss = F.cross_entropy(x, labels, reduction=reduction, label_smoothing=0.1)
            loss.backward(projection if reduction == "none" else None)
            results.append((loss.data, x.grad))
    finally:
        cn.set_num_threads(previous)
    for one_thread, two_threads in zip(*results):
        np.testing.assert_array_equal(one_thread, two_threads)


def test_targets_may_be_tensors_or_arrays():
    logits = cn.Tensor(_logits((4, 3)))
    labels = np.array([0, 1, 2, 1])
    assert F.cross_entropy(logits, labels).item() == F.cross_entropy(logits, cn.Tensor(labels)).item()
    assert F.mse_loss(logits, logits.data * 2).item() == F.mse_loss(logits, cn.Tensor(logits.data * 2)).item()


def test_loss_validation_errors():
    logits = cn.Tensor(_logits((4, 3)))
    labels = np.array([0, 1, 2, 1])
    with pytest.raises(ValueError, match=r"^Target 10 is out of bounds\.$"):
        F.cross_entropy(logits, np.array([0, 1, 10, 1]))
    with pytest.raises(ValueError, match=r"^Target -1 is out of bounds\.$"):
        F.nll_loss(logits, np.array([0, -1, 2, 1]))
    with pytest.raises(ValueError, match=r"^Target 3 is out of bounds\.$"):
        F.cross_entropy(logits, np.array([0, 3, 2, 1]), ignore_index=1)
    with pytest.raises(ValueError, match=r"Expected input batch_size \(4\) to match target batch_size \(3\)\."):
        F.cross_entropy(logits, labels[:3])
    with pytest.raises(ValueError, match=r"size mismatch \(got input: \[2, 3, 4, 5\] , target: \[2, 4, 6\]\)"):
        F.cross_entropy(cn.Tensor(_logits((2, 3, 4, 5))), np.zeros((2, 4, 6), dtype=np.int64))
    with pytest.raises(TypeError, match="expected target dtype to be an integer type .* but got float64; "
                                        "class-probability targets must have the input's shape"):
        F.cross_entropy(logits, labels.astype(np.float64))
    with pytest.raises(TypeError, match="expected target dtype to be an integer type .* but got bool"):
        F.nll_loss(logits, labels > 0)
    with pytest.raises(ValueError, match="meen is not a valid value for reduction"):
        F.cross_entropy(logits, labels, reduction="meen")
    with pytest.raises(ValueError, match="avg is not a valid value for reduction"):
        F.mse_loss(logits, logits.data, reduction="avg")
    with pytest.raises(ValueError, match=r"label_smoothing must be between 0\.0 and 1\.0\. Got: 1\.5"):
        F.cross_entropy(logits, labels, label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"label_smoothing must be between 0\.0 and 1\.0\. Got: -0\.1"):
        F.cross_entropy(logits, labels, label_smoothing=-0.1)
    with pytest.raises(ValueError, match=r"weight tensor should be defined either for all 3 classes or no classes "
                                         r"but got weight tensor of shape: \[2\]"):
        F.cross_entropy(logits, labels, weight=np.ones(2))
    with pytest.raises(TypeError, match="expected weight to have the input's dtype float64, but got float32"):
        F.nll_loss(logits, labels, weight=np.ones(3, dtype=np.float32))
    with pytest.raises(ValueError, match="ignore_index is not supported for floating point target"):
        F.cross_entropy(logits, np.full((4, 3), 1 / 3), ignore_index=0)
    with pytest.raises(TypeError, match="floating-point input .* but got int64"):
        F.cross_entropy(cn.Tensor(np.ones((4, 3), dtype=np.int64)), labels)
    with pytest.raises(ValueError, match="expected input with at least one class"):
        F.cross_entropy(cn.Tensor(np.ones((2, 0))), np.full(2, -100))
    with pytest.raises(ValueError, match=r"Using a target size \(\[4, 1\]\) that is different to the input size "
                                         r"\(\[4, 3\]\) is not supported.*cnnnumba raises instead"):
        F.mse_loss(logits, np.ones((4, 1)))
    with pytest.raises(TypeError, match="expected target to have the input's dtype float64, but got float32"):
        F.mse_loss(logits, np.ones((4, 3), dtype=np.float32))
    with pytest.raises(IndexError, match=r"Dimension out of range \(expected to be in range of \[-2, 1\], but got 2\)"):
        F.softmax(logits, 2)
    with pytest.raises(TypeError, match="floating-point input .* but got int64"):
        F.log_softmax(cn.Tensor(np.ones(3, dtype=np.int64)), 0)
