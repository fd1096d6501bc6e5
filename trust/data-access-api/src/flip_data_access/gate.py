"""The disclosure gate: the one place where a number about patients may become something that leaves.

Counts are of **distinct persons**.  For each count the gate receives the true number of persons in the
cell and the cell's *key*, the sum (mod 2³²) of the secret per-person record keys of those persons.
It then:

1. applies the threshold ``k = max(trust's k, k asked for)``: a cell of fewer than ``k`` persons is
   released as ``suppressed`` with no number, so a true zero and 1..k-1 look the same;
2. perturbs every released count by a small offset in ``[-noise, +noise]`` drawn from the cell key
   (the cell-key method).  The same set of persons always gets the same offset, whatever query
   produced it, so repeating or rephrasing a query teaches nothing new; two sets differing by a single
   person get unrelated offsets, so subtracting two released counts does not reveal that person or a
   sub-threshold difference.  A perturbed count is never released below ``k``.

Buckets of a distribution that fall under ``k`` are merged into ``Other`` (itself suppressed when
still under ``k``).  Row-level data (the frozen snapshot) leaves its store only through
:meth:`DisclosureGate.check_rows`, which refuses with one fixed message below ``k``.

Nothing else in the service may turn a count into a response: response models hold numbers only as
:class:`~flip_core.cohort.GatedCount`, and a test walks every route to prove it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from flip_core.cohort import DEFAULT_MIN_K, MAX_K, OTHER_BUCKET, Bucket, GatedCount

KEY_SPACE = 2**32
MAX_NOISE = 10
BELOW_THRESHOLD_MESSAGE = "the cohort is below this trust's disclosure threshold"
"""The one message for every refusal of row-level data: the same for 0 persons and for k-1."""


class BelowThreshold(Exception):
    """Row-level data was asked for a cohort under the threshold (the message never varies)."""

    def __init__(self) -> None:
        super().__init__(BELOW_THRESHOLD_MESSAGE)


@dataclass(frozen=True)
class Cell:
    """The true size of a set of distinct persons and its cell key (sum of record keys mod 2³²)."""

    persons: int
    key: int

    def __post_init__(self) -> None:
        if self.persons < 0:
            raise ValueError("a cell cannot hold a negative number of persons")

    @classmethod
    def union(cls, cells: Iterable[Cell]) -> Cell:
        """The cell of disjoint cells put together (sizes and keys add up)."""
        persons = key = 0
        for cell in cells:
            persons += cell.persons
            key += cell.key
        return cls(persons, key % KEY_SPACE)


class DisclosureGate:
    """Releases counts of persons only at or above ``k``, perturbed by the cell-key method."""

    def __init__(self, trust_k: int = DEFAULT_MIN_K, noise: int = 2) -> None:
        if not 1 <= trust_k <= MAX_K:
            raise ValueError(f"the trust's threshold must be between 1 and {MAX_K}")
        if not 0 <= noise <= MAX_NOISE:
            raise ValueError(f"noise must be between 0 and {MAX_NOISE}")
        self.trust_k = trust_k
        self.noise = noise

    def effective_k(self, requested: int | None) -> int:
        """The threshold for one request: the hub may raise the trust's, nobody may lower it."""
        if requested is None:
            return self.trust_k
        return min(max(self.trust_k, requested), MAX_K)

    def release(self, cell: Cell, k: int) -> GatedCount:
        """One count for the outside world: suppressed under ``k``, else perturbed and at least ``k``."""
        if cell.persons < k:
            return GatedCount(value=None, suppressed=True)
        return GatedCount(value=max(k, cell.persons + self._offset(cell.key)), suppressed=False)

    def distribution(
        self,
        cells: Sequence[tuple[str, Cell]],
        k: int,
        *,
        union: Callable[[Sequence[str]], Cell] | None = None,
    ) -> list[Bucket]:
        """Buckets of per-label cells; those under ``k`` are merged into ``Other`` (kept last).

        Cells are taken to be disjoint (one bucket per person) unless ``union`` is given: then it
        computes the cell of the persons in any of the merged labels (e.g. imaging modalities, where
        one person may have several).
        """
        kept = [(label, cell) for label, cell in cells if cell.persons >= k and label != OTHER_BUCKET]
        merged = [(label, cell) for label, cell in cells if cell.persons < k or label == OTHER_BUCKET]
        buckets = [Bucket(label=label, count=self.release(cell, k)) for label, cell in kept]
        if merged:
            other = union([label for label, _ in merged]) if union else Cell.union(cell for _, cell in merged)
            buckets.append(Bucket(label=OTHER_BUCKET, count=self.release(other, k)))
        return buckets

    def check_rows(self, persons: int, k: int) -> None:
        """Allow row-level data of ``persons`` distinct persons to be served, or raise :class:`BelowThreshold`."""
        if persons < k:
            raise BelowThreshold

    def _offset(self, key: int) -> int:
        if self.noise == 0:
            return 0
        return key % (2 * self.noise + 1) - self.noise
