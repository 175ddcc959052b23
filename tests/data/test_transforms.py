"""Batch transforms against per-image NumPy loops, with their validation errors."""
import numpy as np
import pytest

from cnnnumba.data import Compose, Normalize, RandomCrop, RandomHorizontalFlip


def _batch(n=4, c=3, h=5, w=6, dtype=np.float32):
    return np.random.default_rng(0).standard_normal((n, c, h, w)).astype(dtype)


def _crop_one_by_one(batch, size, padding, fill, generator):
    """The obvious loop: pad every image, draw its corner, cut it out."""
    left, top, right, bottom = padding
    padded = np.pad(batch, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=fill)
    n, _, height, width = padded.shape
    rows = generator.integers(0, height - size[0] + 1, size=n)
    cols = generator.integers(0, width - size[1] + 1, size=n)
    return np.stack([padded[i, :, r:r + size[0], c:c + size[1]] for i, (r, c) in enumerate(zip(rows, cols))])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size, padding, fill, expanded", [
    (3, None, 0.0, (0, 0, 0, 0)),
    ((5, 6), None, 0.0, (0, 0, 0, 0)),
    (5, 2, 0.0, (2, 2, 2, 2)),
    ((4, 2), (1, 3), -1.0, (1, 3, 1, 3)),
    ((6, 7), (0, 1, 2, 3), 0.5, (0, 1, 2, 3)),
    (1, 0, 0.0, (0, 0, 0, 0)),
])
def test_random_crop_matches_loop(size, padding, fill, expanded, dtype):
    batch = _batch(dtype=dtype)
    out = RandomCrop(size, padding=padding, fill=fill)(batch, generator=np.random.default_rng(7))
    pair = (size, size) if isinstance(size, int) else size
    expected = _crop_one_by_one(batch, pair, expanded, fill, np.random.default_rng(7))
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == dtype and out.flags.c_contiguous


def test_random_crop_varies_per_image_and_with_the_generator():
    batch = np.broadcast_to(np.arange(64, dtype=np.float32).reshape(1, 1, 8, 8), (16, 1, 8, 8))
    out = RandomCrop(4, padding=2)(batch, generator=np.random.default_rng(1))
    assert len({o.tobytes() for o in out}) > 1
    again = RandomCrop(4, padding=2)(batch, generator=np.random.default_rng(2))
    assert not np.array_equal(out, again)


def test_random_crop_non_contiguous_input():
    batch = _batch(h=6, w=12)[:, :, :, ::2]
    out = RandomCrop(4, padding=1)(batch, generator=np.random.default_rng(3))
    np.testing.assert_array_equal(out, _crop_one_by_one(np.ascontiguousarray(batch), (4, 4), (1,) * 4, 0.0,
                                                        np.random.default_rng(3)))


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_horizontal_flip_matches_loop(p):
    batch = _batch(n=32)
    out = RandomHorizontalFlip(p)(batch, generator=np.random.default_rng(4))
    flips = np.random.default_rng(4).random(32) < p
    expected = np.stack([image[:, :, ::-1] if flip else image for image, flip in zip(batch, flips)])
    np.testing.assert_array_equal(out, expected)
    assert out is not batch


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mean, std", [
    ((0.1, 0.2, 0.3), (0.5, 2.0, 4.0)),
    (0.5, 0.25),
    ([1.0], [3.0]),
    ((0.1, 0.2, 0.3), 2.0),
])
def test_normalize(mean, std, dtype):
    batch = _batch(dtype=dtype)
    out = Normalize(mean, std)(batch)
    m = np.broadcast_to(np.asarray(mean, dtype=np.float64), (3,))
    s = np.broadcast_to(np.asarray(std, dtype=np.float64), (3,))
    expected = np.stack([(batch[:, c].astype(np.float64) - m[c]) / s[c] for c in range(3)], axis=1)
    tolerance = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(out, expected, rtol=tolerance, atol=tolerance)
    assert out.dtype == dtype


def test_compose_applies_in_order_with_one_generator():
    batch = _batch()
    pipeline = Compose([RandomCrop(4, padding=1), RandomHorizontalFlip(0.5), Normalize(0.5, 2.0)])
    out = pipeline(batch, generator=np.random.default_rng(5))
    generator = np.random.default_rng(5)
    expected = RandomCrop(4, padding=1)(batch, generator=generator)
    expected = RandomHorizontalFlip(0.5)(expected, generator=generator)
    expected = Normalize(0.5, 2.0)(expected)
    np.testing.assert_array_equal(out, expected)


def test_default_generator_is_the_global_one():
    import cnnnumba as cn

    batch = _batch(n=16)
    cn.manual_seed(8)
    a = RandomHorizontalFlip()(batch)
    cn.manual_seed(8)
    b = RandomHorizontalFlip()(batch)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("make, error, message", [
    (lambda: Normalize((0.5, 0.5), (0.0, 1.0)), ValueError, "std evaluated to zero"),
    (lambda: Normalize((0.1, 0.2), (1.0, 1.0, 1.0)), ValueError, "mean and std of the same length, but got 2 and 3"),
    (lambda: Normalize(float("nan"), 1.0), ValueError, "finite mean"),
    (lambda: Normalize([[0.1]], 1.0), ValueError, "1-D sequence, but got shape"),
    (lambda: RandomCrop(0), ValueError, "size should be positive"),
    (lambda: RandomCrop((2, 2, 2)), TypeError, "size should be an int or a pair of ints"),
    (lambda: RandomCrop(2, padding=-1), ValueError, "padding should be non-negative"),
    (lambda: RandomCrop(2, padding=(1, 2, 3)), TypeError, "padding should be an int or a sequence of 2 or 4 ints"),
    (lambda: RandomHorizontalFlip(1.5), ValueError, "probability should be between 0 and 1, but got 1.5"),
    (lambda: Compose([RandomHorizontalFlip(), 3]), TypeError, "transform 1 is int"),
])
def test_constructor_validation(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize("transform, batch, error, message", [
    (Normalize((0.1, 0.2, 0.3), 1.0), _batch(c=4), ValueError,
     r"expected input to have 3 channels, but got 4 channels instead"),
    (Normalize(0.1, 1.0), _batch()[0], ValueError, r"4-D NCHW batch, but got an array of shape \(3, 5, 6\)"),
    (RandomCrop(3), _batch().astype(np.uint8), TypeError, "float batch, but got dtype uint8"),
    (RandomCrop(6), _batch(h=5, w=6), ValueError, r"crop size \(6, 6\) is larger than the padded input image "
                                                  r"size \(5, 6\)"),
    (RandomHorizontalFlip(), [[1.0]], TypeError, "expected a NumPy array, but got list"),
])
def test_call_validation(transform, batch, error, message):
    with pytest.raises(error, match=message):
        transform(batch, generator=np.random.default_rng(0))
