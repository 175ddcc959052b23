"""Tests of cat (channel concatenation): PyTorch comparisons, gradcheck, validation errors."""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba import functional as F
from tests.helpers import check_gradients, compare_with_torch, requires_torch, torch

rng = np.random.default_rng(0)
a4, b4, c4 = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 1, 4, 5)), rng.standard_normal((2, 2, 4, 5))
a2, b2 = rng.standard_normal((3, 4)), rng.standard_normal((3, 2))
batch1 = rng.standard_normal((1, 2, 3, 3)), rng.standard_normal((1, 5, 3, 3))
transposed = rng.standard_normal((2, 5, 4, 3)).transpose(0, 1, 3, 2)  # non-contiguous (2, 5, 3, 4)

CASES = [
    ("channels", lambda *t: F.cat(list(t)), lambda *t: torch.cat(t, 1), (a4, b4, c4)),
    ("batch", lambda x, y: cn.cat([x, y], dim=0), lambda x, y: torch.cat([x, y], 0), (a4, a4[:1])),
    ("last dim", lambda x, y: F.cat((x, y), dim=-1), lambda x, y: torch.cat([x, y], -1), (a4, a4[..., :2])),
    ("2-D features", lambda x, y: F.cat([x, y]), lambda x, y: torch.cat([x, y], 1), (a2, b2)),
    ("batch of 1", lambda x, y: F.cat([x, y]), lambda x, y: torch.cat([x, y], 1), batch1),
    ("one tensor", lambda x: F.cat([x]), lambda x: torch.cat([x], 1), (a4,)),
    ("non-contiguous", lambda x, y: F.cat([x, y]), lambda x, y: torch.cat([x, y], 1), (transposed, a4[:, :, :3, :4])),
]


@requires_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, cn_fn, torch_fn, arrays", CASES, ids=[c[0] for c in CASES])
def test_cat_matches_torch(name, cn_fn, torch_fn, arrays, dtype):
    compare_with_torch(cn_fn, torch_fn, arrays, dtype=dtype)


def test_cat_gradcheck():
    check_gradients(lambda x, y, z: F.cat([x, y, z]), [a4[:1, :, :2], b4[:1, :, :2], c4[:1, :, :2]])


def test_cat_gradient_only_where_needed():
    x, y = cn.Tensor(a4, requires_grad=True), cn.Tensor(b4)
    F.cat([x, y]).sum().backward()
    assert y.grad is None
    np.testing.assert_array_equal(x.grad, np.ones_like(a4))


@pytest.mark.parametrize("tensors, dim, error, match", [
    ([], 1, ValueError, "expected a non-empty list"),
    ("not a list", 1, TypeError, "must be a tuple or list of Tensors"),
    ([cn.Tensor(a4), a4], 1, TypeError, "expected Tensor as element 1"),
    ([cn.Tensor(a4), cn.Tensor(a4.astype(np.float32))], 1, TypeError, "expected all tensors to have dtype float64"),
    ([cn.Tensor(a4), cn.Tensor(a2)], 1, ValueError, "Tensors must have same number of dimensions: got 4 and 2"),
    ([cn.Tensor(a4), cn.Tensor(a4[:, :, :3])], 1, ValueError, "Expected size 4 but got size 3 for tensor number 1"),
    ([cn.Tensor(a4)], 4, IndexError, r"Dimension out of range \(expected to be in range of \[-4, 3\], but got 4\)"),
    ([cn.Tensor(a4)], 1.0, TypeError, "argument 'dim' must be int"),
    ([cn.Tensor(np.zeros((2, 3), dtype=np.int64))], 1, TypeError, "expected float32 or float64 tensors"),
    ([cn.Tensor(np.float64(1.0))], 0, ValueError, "zero-dimensional tensor"),
])
def test_cat_validation(tensors, dim, error, match):
    with pytest.raises(error, match=match):
        F.cat(tensors, dim=dim)
