"""Linear op against PyTorch, gradcheck, thread-count independence and validation errors."""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import functional as F
from tests.helpers import check_gradients, compare_with_torch, random_arrays, requires_torch, torch

CASES = [  # input shape, out_features, with bias
    ((4, 3), 2, True),
    ((1, 5), 7, True),          # batch 1
    ((2, 4, 3), 5, True),       # extra leading dimensions
    ((3,), 2, True),            # unbatched
    ((6, 4), 1, False),
    ((0, 3), 2, True),          # empty batch
]


@requires_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, out_features, with_bias", CASES)
def test_linear_matches_torch(shape, out_features, with_bias, dtype):
    arrays = random_arrays(shape, (out_features, shape[-1]), (out_features,))
    if with_bias:
        compare_with_torch(F.linear, torch.nn.functional.linear, arrays, dtype=dtype)
    else:
        compare_with_torch(F.linear, torch.nn.functional.linear, arrays[:2], dtype=dtype)


@requires_torch
def test_linear_non_contiguous_and_partly_frozen():
    x, weight, bias = random_arrays((3, 5), (4, 5), (4,))
    compare_with_torch(lambda a, w, b: F.linear(a.T, w, b), lambda a, w, b: torch.nn.functional.linear(a.T, w, b),
                       [x.T.copy().T.T, weight, bias])  # input handed over transposed: (5, 3) viewed as (3, 5)
    compare_with_torch(F.linear, torch.nn.functional.linear, [x, weight, bias], requires_grad=[True, False, True])
    compare_with_torch(F.linear, torch.nn.functional.linear, [x, weight, bias], requires_grad=[False, True, False])


@pytest.mark.parametrize("shape", [(4, 3), (2, 2, 3), (3,)])
def test_linear_gradcheck(shape):
    check_gradients(F.linear, random_arrays(shape, (2, 3), (2,)))
    check_gradients(F.linear, random_arrays(shape, (2, 3)))


def test_linear_gradients_do_not_depend_on_thread_count():
    x, weight, bias = (cn.Tensor(a.astype(np.float32), requires_grad=True)
                       for a in random_arrays((700, 6), (5, 6), (5,)))
    previous = cn.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            cn.set_num_threads(threads)
            for t in (x, weight, bias):
                t.grad = None
            F.linear(x, weight, bias).sum().backward()
            results.append((weight.grad.copy(), bias.grad.copy()))
    finally:
        cn.set_num_threads(previous)
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


@requires_torch
def test_matmul_matches_torch():
    for a, b in [((4, 3), (3, 2)), ((3,), (3, 2)), ((4, 3), (3,)), ((2, 1, 4, 3), (5, 3, 2)), ((3,), (3,))]:
        for dtype in (np.float32, np.float64):
            compare_with_torch(F.matmul, torch.matmul, random_arrays(a, b), dtype=dtype)
    check_gradients(F.matmul, random_arrays((2, 1, 4, 3), (5, 3, 2)))


def _tensors(*shapes, dtype=np.float32):
    return [cn.Tensor(np.zeros(s, dtype=dtype)) for s in shapes]


@pytest.mark.parametrize("call, error, message", [
    (lambda: F.linear(*_tensors((4, 3), (2, 5))), ValueError,
     r"mat1 and mat2 shapes cannot be multiplied \(4x3 and 5x2\)"),
    (lambda: F.linear(*_tensors((2, 4, 3), (2, 5))), ValueError,
     r"mat1 and mat2 shapes cannot be multiplied \(8x3 and 5x2\)"),
    (lambda: F.linear(*_tensors((3,), (2, 5))), ValueError,
     r"mat1 and mat2 shapes cannot be multiplied \(1x3 and 5x2\)"),
    (lambda: F.linear(*_tensors((), (2, 3))), ValueError, "need to be at least 1D, but they are 0D and 2D"),
    (lambda: F.linear(*_tensors((4, 3), (2, 3, 1))), ValueError, r"expected weight to be 2D .* \(2, 3, 1\)"),
    (lambda: F.linear(*_tensors((4, 3), (2, 3), (3,))), ValueError, r"expected bias of shape \(2,\)"),
    (lambda: F.linear(_tensors((4, 3))[0], _tensors((2, 3), dtype=np.float64)[0]), TypeError,
     "same dtype, but got float32 != float64"),
    (lambda: F.linear(*_tensors((4, 3), (2, 3)), _tensors((2,), dtype=np.float64)[0]), TypeError,
     "same dtype, but got float32 != float64"),
    (lambda: F.linear(*_tensors((4, 3), (2, 3), dtype=np.int64)), TypeError,
     "expected a float32 or float64 input, but got int64"),
    (lambda: F.linear(np.zeros((4, 3)), *_tensors((2, 3))), TypeError, "'input' must be a Tensor"),
    (lambda: F.matmul(*_tensors((4, 3), (2, 5))), ValueError, "cannot be multiplied"),
])
def test_linear_validation_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()
