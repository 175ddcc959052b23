"""Linear (matmul) kernels against their NumPy twins."""
import os

import numpy as np
import pytest

import cnnnumba as cn
from cnnnumba.kernels import matmul
from cnnnumba.kernels._runtime import blas
from cnnnumba import reference
from tests.helpers import rms_at_least_one


def _run(module, x, weight, bias, grad_out):
    out = np.empty((x.shape[0], weight.shape[0]), dtype=x.dtype)
    grad_x, grad_weight = np.empty_like(x), np.empty_like(weight)
    grad_bias = np.empty(weight.shape[0], dtype=x.dtype)
    module.linear_forward(x, weight, bias, out)
    module.linear_backward_input(grad_out, weight, grad_x)
    module.linear_backward_weight(grad_out, x, grad_weight)
    module.linear_backward_bias(grad_out, grad_bias)
    return out, grad_x, grad_weight, grad_bias


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows, in_features, out_features, with_bias", [
    (4, 3, 2, True),
    (1, 5, 7, True),         # batch 1
    (300, 17, 9, True),      # several bias chunks, the last one partial
    (6, 4, 1, False),
    (0, 3, 2, True),         # empty batch
    (3, 0, 2, True),         # no input features: the output is the bias
    (64, 400, 120, True),    # LeNet-5's first linear layer: run on one BLAS thread
])
def test_linear_kernels_match_reference(rows, in_features, out_features, with_bias, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, in_features)).astype(dtype)
    weight = rng.standard_normal((out_features, in_features)).astype(dtype)
    bias = rng.standard_normal(out_features if with_bias else 0).astype(dtype)
    grad_out = rng.standard_normal((rows, out_features)).astype(dtype)
    got = _run(matmul, x, weight, bias, grad_out)
    expected = _run(reference, x, weight, bias, grad_out)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for g, e in zip(got, expected):
        assert g.dtype == dtype
        # a sum of many products can land near zero; its rounding error scales with the terms, not with the sum
        # (BLAS builds for different CPUs sum in different orders), so the absolute tolerance is per unit of RMS
        np.testing.assert_allclose(g, e, rtol=rtol, atol=rtol * rms_at_least_one(e))


def test_bias_gradient_does_not_depend_on_thread_count():
    grad_out = np.random.default_rng(0).standard_normal((1000, 33)).astype(np.float32)
    previous = cn.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            cn.set_num_threads(threads)
            grad_bias = np.empty(33, dtype=np.float32)
            matmul.linear_backward_bias(grad_out, grad_bias)
            results.append(grad_bias)
    finally:
        cn.set_num_threads(previous)
    np.testing.assert_array_equal(results[0], results[1])


def _operand(rng, shape, dtype, kind):
    """A (shape) operand laid out as `kind`: C-contiguous, a transposed C array (F), or every other column (A)."""
    if kind == "C":
        return rng.standard_normal(shape).astype(dtype)
    if kind == "F":
        return rng.standard_normal(shape[::-1]).astype(dtype).T
    return rng.standard_normal((shape[0], 2 * shape[1])).astype(dtype)[:, ::2]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows, inner, columns", [(1, 5, 3), (64, 400, 120), (100, 300, 70), (1000, 9, 64),
                                                  (7, 2048, 10), (20, 512, 300), (1, 512, 1000), (300, 64, 1),
                                                  (64, 0, 10), (0, 5, 3)])
@pytest.mark.parametrize("layouts", ["CC", "FC", "CF", "AF", "FA"])
def test_matmul_matches_numpy_for_any_layout_and_split(rows, inner, columns, dtype, layouts):
    rng = np.random.default_rng(rows + inner + columns)
    a = _operand(rng, (rows, inner), dtype, layouts[0])
    b = _operand(rng, (inner, columns), dtype, layouts[1])
    out = np.full((rows, columns), np.nan, dtype=dtype)
    assert blas.matmul(a, b, out) is out
    expected = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(out, expected, rtol=1e-4 if dtype == np.float32 else 1e-12,
                               atol=1e-4 * max(1, inner) ** 0.5)


def test_products_split_into_a_block_per_thread_by_their_larger_side():
    # small products run whole on the calling thread; larger ones in a block per thread of at least BLOCK_MIN_SIDE
    # rows (or columns, where there are more of them)
    assert blas.product_blocks(64, 400, 10, 2) == 1
    assert blas.product_blocks(64, 400, 120, 2) == 2 and blas.product_blocks(64, 400, 120, 1) == 1
    assert blas.product_blocks(1024, 1024, 1024, 16) == 16
    assert blas.product_blocks(20, 4096, 30, 4) == 1  # one block of at least 16 rows or columns
    assert blas.product_blocks(20, 4096, 4096, 8) == 8  # by columns
    assert blas.product_blocks(64, 400, 120, 16) == 7


def test_a_split_product_gives_the_same_bits_on_1_and_2_threads():
    rng = np.random.default_rng(4)
    results = []
    previous = cn.get_num_threads()
    try:
        for rows, columns in ((256, 96), (40, 300)):  # by rows, by columns
            a = rng.standard_normal((rows, 300)).astype(np.float32)
            b = rng.standard_normal((300, columns)).astype(np.float32)
            assert blas.product_blocks(rows, 300, columns, 2) == 2
            for threads in (1, 2):
                cn.set_num_threads(threads)
                results.append(blas.matmul(a.T.copy().T, b, np.empty((rows, columns), np.float32)))
    finally:
        cn.set_num_threads(previous)
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[2], results[3])


@pytest.mark.skipif(blas._SET_BLAS_THREADS is None, reason="SciPy's OpenBLAS thread setter not found")
def test_split_products_leave_the_blas_thread_count_as_it_was():
    before = blas._GET_BLAS_THREADS()
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((512, 512)).astype(np.float32), rng.standard_normal((512, 512)).astype(np.float32)
    for threads in (2, 1, before):
        blas._SET_BLAS_THREADS(threads)
        blas.matmul(a, b, np.empty((512, 512), np.float32))
        assert blas._GET_BLAS_THREADS() == threads
    assert blas._GET_BLAS_THREADS() == before


@pytest.mark.parametrize("first", ["import numpy", "import numpy, scipy.linalg", ""])
def test_openblas_takes_the_thread_timeout_whatever_was_imported_first(first):
    """NumPy imported before cnnnumba has loaded its OpenBLAS with the default thread timeout (workers spinning
    about 0.1 s after each call, stealing the cores from the Numba kernels); cnnnumba makes it read the
    environment default again. OpenBLAS reports the value it read through openblas_thread_timeout()."""
    import subprocess
    import sys

    probe = (f"{first}\nimport ctypes, cnnnumba\nfrom cnnnumba.kernels._runtime import blas\n"
             "for package in ('numpy', 'scipy'):\n"
             "    __import__(package)\n"
             "    if package == 'scipy':\n"
             "        import scipy.linalg.cython_blas\n"
             "    for library in blas._openblas_libraries(package):\n"
             "        print(package, library.openblas_thread_timeout())\n")
    environment = {key: value for key, value in os.environ.items() if key != "OPENBLAS_THREAD_TIMEOUT"}
    output = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=environment,
                            check=True).stdout.split()
    assert output == ["numpy", "4", "scipy", "4"]
