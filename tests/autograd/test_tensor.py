"""Tensor basics: construction and dtypes, requires_grad rules, backward, gradient accumulation, no_grad, detach."""
import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba.autograd import Function
from tests.helpers import check_gradients


def test_construction_keeps_array_dtype_and_memory():
    array = np.arange(6, dtype=np.float64).reshape(2, 3)
    tensor = cn.Tensor(array)
    assert tensor.dtype == np.float64 and tensor.shape == (2, 3) and tensor.ndim == 2 and tensor.numel() == 6
    array[0, 0] = 42.0
    assert tensor.data[0, 0] == 42.0  # shares memory, like torch.from_numpy
    assert tensor.numpy() is tensor.data


@pytest.mark.parametrize("data, dtype", [([1.0, 2.0], np.float32), (3.5, np.float32), ([1, 2], np.int64),
                                         ([[True]], np.bool_)])
def test_python_data_gets_pytorch_default_dtypes(data, dtype):
    assert cn.Tensor(data).dtype == dtype


def test_explicit_dtype_and_tensor_argument():
    assert cn.Tensor([1, 2], dtype=np.float64).dtype == np.float64
    source = cn.Tensor(np.ones(3))
    assert cn.Tensor(source).data is source.data


def test_object_data_is_rejected():
    with pytest.raises(TypeError, match="Tensor data must be numeric, but got an object array"):
        cn.Tensor(np.array([object()]))


def test_only_float_tensors_can_require_grad():
    with pytest.raises(TypeError, match="only float32 and float64 tensors can require gradients, but got dtype int64"):
        cn.Tensor(np.arange(3), requires_grad=True)
    assert cn.Tensor(np.ones(2, dtype=np.float32), requires_grad=True).requires_grad


def test_outputs_require_grad_exactly_when_an_input_does():
    a, b = cn.Tensor(np.ones(2), requires_grad=True), cn.Tensor(np.ones(2))
    assert (a * b).requires_grad and (a * b).grad_fn is not None and not (a * b).is_leaf
    assert not (b * b).requires_grad and (b * b).grad_fn is None
    with pytest.raises(RuntimeError, match="requires_grad can only be turned off on a leaf tensor"):
        (a * b).requires_grad = False


def test_backward_without_grad_on_a_scalar_uses_one():
    x = cn.Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, 4.0, 6.0])
    assert x.grad.dtype == np.float64


def test_backward_without_grad_on_a_non_scalar_raises():
    x = cn.Tensor(np.ones((2, 2)), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"grad can be implicitly created only for scalar outputs, but this tensor "
                                           r"has shape \(2, 2\)"):
        (x * 2).backward()
    with pytest.raises(ValueError, match=r"grad has shape \(3,\), but the tensor has shape \(2, 2\)"):
        (x * 2).backward(np.ones(3))
    with pytest.raises(RuntimeError, match="element 0 of tensors does not require grad and does not have a grad_fn"):
        cn.Tensor(np.ones(2)).sum().backward()


def test_gradients_add_up_when_a_tensor_is_used_twice():
    x = cn.Tensor(np.array([1.0, -2.0]), requires_grad=True)
    y = x * x + x * 3.0  # x reaches y along three paths
    y.backward(np.array([1.0, 10.0]))
    np.testing.assert_array_equal(x.grad, [2 * 1.0 + 3.0, (2 * -2.0 + 3.0) * 10.0])


def test_an_intermediate_used_twice_passes_its_whole_gradient_on():
    x = cn.Tensor(np.array([2.0]), requires_grad=True)
    h = x * x
    (h * h + h).sum().backward()  # d/dx (x^4 + x^2) = 4x^3 + 2x
    np.testing.assert_array_equal(x.grad, [4 * 8.0 + 2 * 2.0])


def test_gradients_accumulate_across_backward_calls():
    x = cn.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * 3.0).sum().backward()
    first = x.grad
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0 + 2.0, 3.0 + 4.0])
    assert x.grad is first  # accumulated in place, as PyTorch does


def test_a_leaf_root_gets_a_copy_of_the_given_gradient():
    x = cn.Tensor(np.ones(2), requires_grad=True)
    grad = np.array([1.0, 2.0])
    x.backward(grad)
    x.backward(grad)
    np.testing.assert_array_equal(x.grad, [2.0, 4.0])
    np.testing.assert_array_equal(grad, [1.0, 2.0])


def test_no_grad_records_nothing_and_restores_the_mode():
    x = cn.Tensor(np.ones(2), requires_grad=True)
    with cn.no_grad():
        assert not cn.is_grad_enabled()
        y = x * 2
    assert cn.is_grad_enabled()
    assert not y.requires_grad and y.grad_fn is None

    @cn.no_grad()
    def double(t):
        return t * 2

    assert not double(x).requires_grad and cn.is_grad_enabled()
    with cn.no_grad(), cn.enable_grad():
        assert (x * 2).requires_grad


def test_detach_shares_data_but_cuts_the_graph():
    x = cn.Tensor(np.ones(3), requires_grad=True)
    y = x * 2
    detached = y.detach()
    assert detached.data is y.data and not detached.requires_grad and detached.grad_fn is None
    (detached * x).sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, 2.0, 2.0])


class _Square(Function):
    def forward(self, a, wrong=False):
        self.a, self.wrong = a, wrong
        return a * a

    def backward(self, grad):
        return (grad * (self.a if self.wrong else 2 * self.a),)


def test_gradcheck_passes_a_right_backward_and_catches_a_wrong_one():
    check_gradients(lambda x: _Square.apply(x), [np.array([0.5, -1.5, 2.0])])
    x = cn.Tensor(np.array([0.5, -1.5, 2.0]), requires_grad=True)
    with pytest.raises(cn.GradcheckError, match=r"gradient of input 0 \(shape \(3,\)\) is wrong"):
        cn.gradcheck(lambda t: _Square.apply(t, wrong=True), (x,))
    assert cn.gradcheck(lambda t: _Square.apply(t, wrong=True), (x,), raise_exception=False) is False


def test_gradcheck_needs_float64_inputs_that_require_grad():
    with pytest.raises(TypeError, match="gradcheck needs float64 inputs"):
        cn.gradcheck(lambda t: t * t, (cn.Tensor(np.ones(2, dtype=np.float32), requires_grad=True),))
    with pytest.raises(ValueError, match="none of the inputs is a Tensor with requires_grad=True"):
        cn.gradcheck(lambda t: t * t, (cn.Tensor(np.ones(2)),))


def test_backward_reports_a_gradient_of_the_wrong_shape():
    class BadShape(Function):
        def forward(self, a):
            return a.sum(keepdims=True)

        def backward(self, grad):
            return (grad,)

    x = cn.Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"BadShape.backward returned a gradient of shape \(1,\) for an input of "
                                           r"shape \(3,\)"):
        BadShape.apply(x).sum().backward()


def test_backward_walks_a_graph_deeper_than_the_recursion_limit():
    x = cn.Tensor(np.array([1.0]), requires_grad=True)
    y = x
    for _ in range(5000):
        y = y * 1.0 + 0.0
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [1.0])
