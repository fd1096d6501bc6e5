"""The shape generated data travels in: tables of typed numpy columns, encodable for ``COPY``."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from flip_omop import pgbinary

Table = Literal[
    "person",
    "observation_period",
    "visit_occurrence",
    "condition_occurrence",
    "drug_exposure",
    "procedure_occurrence",
    "measurement",
    "observation",
    "death",
    "image_occurrence",
    "image_feature",
]
GENERATED_TABLES: tuple[Table, ...] = (
    "person",
    "observation_period",
    "visit_occurrence",
    "condition_occurrence",
    "drug_exposure",
    "procedure_occurrence",
    "measurement",
    "observation",
    "death",
    "image_occurrence",
    "image_feature",
)
"""Tables the generator fills, in load order (``concept`` comes from :mod:`flip_omop.concepts`)."""

ColumnKind = Literal["int4", "date", "timestamp", "numeric", "text", "vocabulary"]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.floating[Any]]
DateArray = npt.NDArray[Any]  # datetime64[D]; numpy's stubs type date arithmetic too loosely to say so


@dataclass(frozen=True)
class Column:
    """One column of a generated block: raw values plus what PostgreSQL type they load as."""

    name: str
    kind: ColumnKind
    values: npt.NDArray[Any]
    nulls: BoolArray | None = None
    scale: int | IntArray = 0  # numeric only: decimals kept
    vocabulary: tuple[str, ...] = ()  # vocabulary only: ``values`` are indexes into it

    def encode(self) -> pgbinary.EncodedField:
        """The column in PostgreSQL binary COPY layout."""
        if self.kind == "int4":
            return pgbinary.int4(self.values, self.nulls)
        if self.kind == "date":
            return pgbinary.date(self.values, self.nulls)
        if self.kind == "timestamp":
            return pgbinary.timestamp(self.values, self.nulls)
        if self.kind == "numeric":
            return pgbinary.numeric(self.values, self.scale, self.nulls)
        if self.kind == "text":
            return pgbinary.text(self.values, self.nulls)
        return pgbinary.text_from_vocabulary(self.values, self.vocabulary)

    def python_values(self) -> list[Any]:
        """The column as Python values (``None`` for NULL), as PostgreSQL would return them."""
        if self.kind == "vocabulary":
            out: list[Any] = [None if c < 0 else self.vocabulary[c] for c in self.values.tolist()]
            return out
        if self.kind == "text":
            out = [v.decode() for v in self.values.tolist()]
        elif self.kind == "numeric":
            # The same rounding as the wire encoding, as exact decimals.
            scales = np.broadcast_to(np.asarray(self.scale, dtype=np.int64), self.values.shape)
            scaled = np.rint(np.abs(self.values) * 10.0**scales).astype(np.int64) * np.where(self.values < 0, -1, 1)
            out = [Decimal(v).scaleb(-s) for v, s in zip(scaled.tolist(), scales.tolist(), strict=True)]
        elif self.kind == "timestamp":
            out = self.values.astype("datetime64[us]").tolist()
        else:
            out = self.values.tolist()
        if self.nulls is not None:
            out = [None if null else v for v, null in zip(out, self.nulls.tolist(), strict=True)]
        return out


@dataclass(frozen=True)
class GeneratedTable:
    """The rows of one table for one block of persons, column by column."""

    name: str
    columns: tuple[Column, ...]

    @property
    def rows(self) -> int:
        return len(self.columns[0].values)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def encode(self) -> npt.NDArray[np.uint8]:
        """The block's rows as binary COPY data (no header or trailer)."""
        return pgbinary.encode_rows([c.encode() for c in self.columns])
