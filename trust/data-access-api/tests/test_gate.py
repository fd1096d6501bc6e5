"""The disclosure gate on its own: thresholds, suppression, merging, and resistance to differencing."""

from __future__ import annotations

import random

import pytest

from flip_core.cohort import OTHER_BUCKET, GatedCount
from flip_data_access.gate import BELOW_THRESHOLD_MESSAGE, KEY_SPACE, BelowThreshold, Cell, DisclosureGate


def _keys(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(KEY_SPACE) for _ in range(n)]


def _cell(keys: list[int]) -> Cell:
    return Cell(len(keys), sum(keys) % KEY_SPACE)


def test_under_k_is_suppressed_with_no_number_whatever_the_size() -> None:
    gate = DisclosureGate(10, noise=2)
    for n in range(10):
        assert gate.release(Cell(n, 12345), 10) == GatedCount(value=None, suppressed=True)


def test_released_counts_are_near_the_truth_and_never_under_k() -> None:
    gate = DisclosureGate(10, noise=2)
    rng = random.Random(1)
    for n in range(10, 200):
        released = gate.release(_cell(_keys(rng, n)), 10)
        assert released.value is not None
        assert not released.suppressed
        assert released.value >= 10
        assert abs(released.value - n) <= 2


def test_without_noise_counts_are_exact() -> None:
    gate = DisclosureGate(10, noise=0)
    assert gate.release(Cell(42, 999), 10).value == 42


def test_the_same_persons_always_get_the_same_count() -> None:
    gate = DisclosureGate(10, noise=3)
    keys = _keys(random.Random(2), 57)
    first = gate.release(_cell(keys), 10)
    shuffled = list(reversed(keys))
    assert gate.release(_cell(shuffled), 10) == first  # order (i.e. the query that found them) is irrelevant


def test_nobody_can_lower_the_trusts_threshold() -> None:
    gate = DisclosureGate(15)
    assert gate.effective_k(None) == 15
    assert gate.effective_k(5) == 15
    assert gate.effective_k(40) == 40
    with pytest.raises(ValueError, match="threshold"):
        DisclosureGate(0)
    with pytest.raises(ValueError, match="noise"):
        DisclosureGate(10, noise=11)


def test_small_buckets_are_merged_into_other_which_is_suppressed_when_still_small() -> None:
    gate = DisclosureGate(10, noise=0)
    buckets = gate.distribution([("Female", Cell(40, 1)), ("Male", Cell(6, 2)), ("Unknown", Cell(2, 3))], 10)
    assert [(b.label, b.count.value, b.count.suppressed) for b in buckets] == [
        ("Female", 40, False),
        (OTHER_BUCKET, None, True),  # 6 + 2 = 8 persons: still under k
    ]
    buckets = gate.distribution([("A", Cell(40, 1)), ("B", Cell(6, 2)), ("C", Cell(5, 3))], 10)
    assert [(b.label, b.count.value) for b in buckets] == [("A", 40), (OTHER_BUCKET, 11)]


def test_overlapping_buckets_merge_through_the_union_they_are_given() -> None:
    gate = DisclosureGate(10, noise=0)
    # Persons with CT and persons with MR overlap: "Other" must count each person once.
    union_called: list[list[str]] = []

    def union(labels: object) -> Cell:
        union_called.append(list(labels))  # type: ignore[call-overload]
        return Cell(9, 7)

    buckets = gate.distribution([("CT", Cell(50, 1)), ("MR", Cell(6, 2)), ("PT", Cell(5, 3))], 10, union=union)
    assert union_called == [["MR", "PT"]]
    assert buckets[-1].label == OTHER_BUCKET
    assert buckets[-1].count.suppressed  # 9 distinct persons, not 11


def test_row_level_refusals_say_the_same_thing_for_zero_and_k_minus_one() -> None:
    gate = DisclosureGate(10)
    messages = set()
    for n in (0, 1, 9):
        with pytest.raises(BelowThreshold) as info:
            gate.check_rows(n, 10)
        messages.add(str(info.value))
    assert messages == {BELOW_THRESHOLD_MESSAGE}
    gate.check_rows(10, 10)


def test_differencing_two_cohorts_one_person_apart_does_not_reveal_that_person() -> None:
    """The attacker's estimate of |S ∪ {x}| - |S| (truly 1) is right only by chance."""
    gate = DisclosureGate(10, noise=2)
    rng = random.Random(3)
    differences = []
    for _ in range(500):
        base = _keys(rng, rng.randrange(20, 400))
        with_x = [*base, rng.randrange(KEY_SPACE)]
        a, b = gate.release(_cell(with_x), 10).value, gate.release(_cell(base), 10).value
        assert a is not None
        assert b is not None
        differences.append(a - b)
    exact = differences.count(1) / len(differences)
    assert exact < 0.3  # two independent offsets agree one time in five
    assert len(set(differences)) >= 7  # spread over -3..5, not a give-away


def test_differencing_cannot_pin_a_sub_threshold_subgroup() -> None:
    """|A| - |A minus C| is meant to reveal |A ∩ C| = 3 < k: the released difference is noise around 3."""
    gate = DisclosureGate(10, noise=2)
    rng = random.Random(4)
    estimates = []
    for _ in range(500):
        rest = _keys(rng, rng.randrange(20, 300))
        subgroup = _keys(rng, 3)
        a, b = gate.release(_cell(rest + subgroup), 10).value, gate.release(_cell(rest), 10).value
        assert a is not None
        assert b is not None
        estimates.append(a - b)
    assert estimates.count(3) / len(estimates) < 0.3
    assert min(estimates) <= 0  # "nobody" and "several" are both plausible readings
