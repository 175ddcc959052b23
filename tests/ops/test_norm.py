"""F.batch_norm against PyTorch (outputs, gradients, running statistics), gradchecks and validation errors."""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import functional as F
from tests.helpers import check_gradients, compare_with_torch, random_arrays, requires_torch, torch

DTYPES = [np.float32, np.float64]
STAT_TOLERANCE = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-14)}

CASES = [
    # (shape, training, affine, momentum, eps)
    ((4, 3), True, True, 0.1, 1e-5),
    ((4, 3), False, True, 0.1, 1e-5),
    ((2, 1), True, False, 0.1, 1e-5),
    ((5, 2, 7), True, True, 0.3, 1e-5),
    ((5, 2, 7), False, False, 0.1, 1e-3),
    ((2, 3, 4, 5), True, True, 0.1, 1e-5),
    ((2, 3, 4, 5), False, True, 0.1, 1e-5),
    ((1, 3, 2, 2), True, True, 1.0, 1e-5),  # batch 1 still has 4 values per channel
    ((1, 4, 1, 1), False, True, 0.1, 1e-5),  # one value per channel is fine in eval mode
    ((3, 2, 1, 5), True, True, 0.0, 0.1),
    ((2, 8, 19, 17), True, True, 0.1, 1e-5),  # 646 rows: several kernel chunks
]


def _batch_norm_pair(shape, dtype, training, affine, momentum, eps, layout=lambda x: x, seed=0):
    """Compare F.batch_norm with torch's on one case, then compare the updated running statistics."""
    channels = shape[1]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 3 + 2
    weight, bias = rng.standard_normal(channels), rng.standard_normal(channels)
    running_mean = rng.standard_normal(channels).astype(dtype)
    running_var = rng.uniform(0.5, 2.0, channels).astype(dtype)
    cn_stats = (running_mean.copy(), cn.Tensor(running_var.copy()))
    torch_stats = (torch.tensor(running_mean), torch.tensor(running_var))
    options = dict(training=training, momentum=momentum, eps=eps)
    compare_with_torch(lambda x, *affine_args: F.batch_norm(layout(x), *cn_stats, *affine_args, **options),
                       lambda x, *affine_args: torch.nn.functional.batch_norm(layout(x), *torch_stats, *affine_args,
                                                                              **options),
                       [x, weight, bias] if affine else [x], dtype=dtype)
    np.testing.assert_allclose(cn_stats[0], torch_stats[0].numpy(), **STAT_TOLERANCE[dtype])
    np.testing.assert_allclose(cn_stats[1].data, torch_stats[1].numpy(), **STAT_TOLERANCE[dtype])
    if not training:
        np.testing.assert_array_equal(cn_stats[0], running_mean)


@requires_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, training, affine, momentum, eps", CASES)
def test_batch_norm_matches_torch(shape, training, affine, momentum, eps, dtype):
    _batch_norm_pair(shape, dtype, training, affine, momentum, eps)


@requires_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_of_non_contiguous_input_matches_torch(training, dtype):
    _batch_norm_pair((3, 4, 5, 2), dtype, training, True, 0.1, 1e-5, layout=lambda x: x.permute(3, 1, 0, 2))


@requires_torch
def test_batch_norm_without_running_statistics_in_training_matches_torch():
    compare_with_torch(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
                       lambda x, w, b: torch.nn.functional.batch_norm(x, None, None, w, b, training=True),
                       random_arrays((6, 3, 2), (3,), (3,)))


@requires_torch
def test_batch_norm_of_an_empty_batch_matches_torch():
    running_mean, running_var = np.zeros(3), np.ones(3)
    out = compare_with_torch(lambda x: F.batch_norm(x, running_mean, running_var, training=True),
                             lambda x: torch.nn.functional.batch_norm(x, torch.zeros(3, dtype=torch.float64),
                                                                      torch.ones(3, dtype=torch.float64),
                                                                      training=True),
                             [np.zeros((0, 3, 2))])
    assert out.shape == (0, 3, 2)
    np.testing.assert_array_equal(running_mean, 0.0)
    np.testing.assert_array_equal(running_var, 1.0)


@pytest.mark.parametrize("shape", [(5, 3), (4, 2, 3), (2, 3, 2, 3)])
def test_batch_norm_training_gradcheck(shape):
    check_gradients(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
                    random_arrays(shape, shape[1:2], shape[1:2]))


@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 2, 3)])
def test_batch_norm_eval_gradcheck(shape):
    channels = shape[1]
    running_mean, running_var = np.linspace(-1, 1, channels), np.linspace(0.5, 2, channels)
    check_gradients(lambda x, w, b: F.batch_norm(x, running_mean, running_var, w, b, training=False),
                    random_arrays(shape, (channels,), (channels,)))


def test_batch_norm_gives_no_weight_gradient_when_only_the_input_requires_it():
    x = cn.Tensor(random_arrays((4, 3))[0], requires_grad=True)
    weight, bias = cn.Tensor(np.ones(3)), cn.Tensor(np.zeros(3))
    F.batch_norm(x, None, None, weight, bias, training=True).sum().backward()
    assert x.grad is not None and weight.grad is None and bias.grad is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_is_identical_for_one_and_two_threads(dtype):
    x, weight, bias, projection = random_arrays((4, 3, 10, 10), (3,), (3,), (4, 3, 10, 10), seed=5)
    previous = cn.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            cn.set_num_threads(threads)
            inputs = [cn.Tensor(a.astype(dtype), requires_grad=True) for a in (x, weight, bias)]
            running_mean, running_var = np.zeros(3, dtype), np.ones(3, dtype)
            out = F.batch_norm(*inputs[:1], running_mean, running_var, *inputs[1:], training=True)
            out.backward(projection.astype(dtype))
            results.append([out.data, running_mean, running_var] + [t.grad for t in inputs])
    finally:
        cn.set_num_threads(previous)
    for one_thread, two_threads in zip(*results):
        np.testing.assert_array_equal(one_thread, two_threads)


def _bn(shape=(4, 3), dtype=np.float64, stat_length=3, **options):
    x = cn.Tensor(np.ones(shape, dtype=dtype))
    return F.batch_norm(x, np.zeros(stat_length, dtype), np.ones(stat_length, dtype), **options)


def test_batch_norm_rejects_bad_arguments():
    ones = np.ones
    with pytest.raises(ValueError, match=r"at least 2 dimensions \(N, C, ...\), but got input of size \[4\]"):
        _bn(shape=(4,), stat_length=4)
    with pytest.raises(ValueError, match=r"Expected more than 1 value per channel when training, got input size "
                                         r"\[1, 4\]"):
        _bn(shape=(1, 4), stat_length=4, training=True)
    with pytest.raises(ValueError, match=r"got input size \[1, 4, 1, 1\]"):
        _bn(shape=(1, 4, 1, 1), stat_length=4, training=True)
    with pytest.raises(ValueError, match="running_mean should contain 3 elements not 4"):
        _bn(stat_length=4)
    with pytest.raises(ValueError, match="running_var should contain 3 elements not 2"):
        F.batch_norm(cn.Tensor(ones((4, 3))), ones(3), ones(2))
    with pytest.raises(ValueError, match="weight should contain 3 elements not 4"):
        _bn(weight=ones(4))
    with pytest.raises(ValueError, match="bias should contain 3 elements not 1"):
        _bn(bias=ones(1))
    with pytest.raises(ValueError, match="running_mean must be defined in evaluation mode"):
        F.batch_norm(cn.Tensor(ones((4, 3))), None, None)
    with pytest.raises(TypeError, match="floating-point input.*but got int64"):
        F.batch_norm(cn.Tensor(ones((4, 3), dtype=np.int64)), ones(3), ones(3))
    with pytest.raises(TypeError, match="expected weight to have the input's dtype float64, but got float32"):
        _bn(weight=ones(3, dtype=np.float32))
    with pytest.raises(TypeError, match="expected running_mean to have the input's dtype float32, but got float64"):
        F.batch_norm(cn.Tensor(ones((4, 3), dtype=np.float32)), ones(3), ones(3, dtype=np.float32))
    with pytest.raises(TypeError, match="argument 'momentum' must be float, not NoneType"):
        _bn(training=True, momentum=None)
