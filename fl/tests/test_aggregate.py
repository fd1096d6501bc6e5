"""FedAvg: the blocked, threaded weighted mean against a float64 reference, and its refusals."""

from __future__ import annotations

import numpy as np
import pytest

from flip_fl.aggregate import BLOCK, AggregationError, Update, fedavg


def _reference(updates: list[Update]) -> list[np.ndarray]:
    total = sum(u.weight for u in updates)
    out = []
    for j in range(len(updates[0].arrays)):
        mean = sum(np.asarray(u.arrays[j], dtype=np.float64) * (u.weight / total) for u in updates)
        out.append(np.asarray(mean))
    return out


def _model(rng: np.random.Generator, dtype: type = np.float32) -> list[np.ndarray]:
    # The last spans several blocks, a part one, so that threads share it out and the last block is short.
    shapes = [(3,), (1 << 16,), (4, 1 << 14), (2, 3, 5, 7), (3 * (1 << 16) + 11,), (2 * BLOCK + 12_345,)]
    return [rng.standard_normal(shape).astype(dtype) for shape in shapes]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_matches_the_float64_weighted_mean(threads: int, dtype: type) -> None:
    rng = np.random.default_rng(7)
    updates = [Update(_model(rng, dtype), weight) for weight in (120, 45, 300)]
    result = fedavg(updates, threads=threads)
    tolerance = {np.float16: 2e-3, np.float32: 1e-6, np.float64: 1e-12}[dtype]
    for got, want, original in zip(result, _reference(updates), updates[0].arrays, strict=True):
        assert got.dtype == original.dtype
        assert got.shape == original.shape
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=tolerance, atol=tolerance)


def test_inputs_are_untouched_and_views_and_strided_arrays_work() -> None:
    rng = np.random.default_rng(3)
    base = rng.standard_normal((200, 300)).astype(np.float32)
    strided = base[:, ::2]  # not contiguous
    other = rng.standard_normal((200, 150)).astype(np.float32)
    before = (strided.copy(), other.copy())
    (mean,) = fedavg([Update([strided], 1), Update([other], 3)], threads=2)
    np.testing.assert_allclose(mean, 0.25 * strided + 0.75 * other, rtol=1e-6, atol=1e-6)
    assert np.array_equal(strided, before[0])
    assert np.array_equal(other, before[1])


def test_one_update_is_itself_and_weights_only_matter_relatively() -> None:
    rng = np.random.default_rng(5)
    arrays = _model(rng)
    for got, want in zip(fedavg([Update(arrays, 17)]), arrays, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    a, b = _model(rng), _model(rng)
    small = fedavg([Update(a, 1), Update(b, 3)])
    large = fedavg([Update(a, 1000), Update(b, 3000)])
    for x, y in zip(small, large, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6)
    # A client with no examples does not count.
    for got, want in zip(fedavg([Update(a, 5), Update(b, 0)]), a, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_integer_arrays_are_averaged_and_rounded() -> None:
    counts = [np.array([10, 20], dtype=np.int64), np.array([20, 41], dtype=np.int64)]
    (mean,) = fedavg([Update([counts[0]], 1), Update([counts[1]], 1)])
    assert mean.dtype == np.int64
    assert mean.tolist() == [15, 30]  # 30.5 rounds to the even 30


def test_empty_arrays_are_fine() -> None:
    (mean,) = fedavg([Update([np.zeros((0, 4), np.float32)], 1), Update([np.zeros((0, 4), np.float32)], 2)])
    assert mean.shape == (0, 4)


@pytest.mark.parametrize(
    ("updates", "message"),
    [
        ([], "no updates"),
        ([Update([np.ones(3, np.float32)], -1)], "not negative"),
        ([Update([np.ones(3, np.float32)], float("nan"))], "finite"),
        ([Update([np.ones(3, np.float32)], 0), Update([np.ones(3, np.float32)], 0)], "sum to zero"),
        ([Update([np.ones(3, np.float32)], 1), Update([np.ones(4, np.float32)], 1)], r"array 0 of update 1"),
        ([Update([np.ones(3, np.float32)], 1), Update([np.ones(3, np.float64)], 1)], r"float64"),
        ([Update([np.ones(3, np.float32)], 1), Update([], 1)], "has 0 arrays"),
        ([Update([np.array(["a"])], 1)], "cannot be averaged"),
    ],
)
def test_bad_updates_are_refused_with_a_reason(updates: list[Update], message: str) -> None:
    with pytest.raises(AggregationError, match=message):
        fedavg(updates)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_the_result_can_be_written_into_arrays_nothing_uses_any_more(dtype: type) -> None:
    rng = np.random.default_rng(11)
    updates = [Update(_model(rng, dtype), weight) for weight in (3, 1)]
    spare = [np.full_like(a, 99) for a in updates[0].arrays] + [np.zeros(2, np.int64)]
    updates = [Update([*u.arrays, np.array([4, 8], np.int64)], u.weight) for u in updates]
    result = fedavg(updates, threads=2, out=spare)
    assert all(got is target for got, target in zip(result, spare, strict=True))
    for got, want in zip(result, fedavg(updates, threads=2), strict=True):
        np.testing.assert_array_equal(got, want)


def test_bad_out_arrays_are_refused_before_anything_is_written() -> None:
    a, b = np.ones(6, np.float32), np.full(6, 3, np.float32)
    updates = [Update([a], 1), Update([b], 1)]
    for out, message in [
        ([], "out has 0 arrays"),
        ([np.zeros(5, np.float32)], r"out array 0 is float32\[5\]"),
        ([np.zeros(6, np.float64)], r"out array 0 is float64\[6\]"),
        ([np.zeros(12, np.float32)[::2]], "C-contiguous"),
        ([a], "shares memory with an update"),
        ([b[:]], "shares memory with an update"),
    ]:
        with pytest.raises(AggregationError, match=message):
            fedavg(updates, out=out)
    assert a.tolist() == [1.0] * 6
    assert b.tolist() == [3.0] * 6
