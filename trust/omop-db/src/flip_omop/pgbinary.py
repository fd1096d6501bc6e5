"""Vectorised encoder for PostgreSQL's binary ``COPY`` format.

The generator hands over whole columns as numpy arrays; this module turns a batch of rows into one
``COPY ... (FORMAT binary)`` chunk without a Python loop per row or per value.  Every field is
laid out in a padded ``rows x bytes`` matrix (length word + value, padded to the column's widest
value) and a boolean mask keeps only the real bytes, so ``matrix[mask]`` is the wire format in
row-major order.  Binary values need no number-to-text formatting on our side and no parsing on
the server side, which is what makes a million-person load take seconds rather than minutes.

Wire format (PostgreSQL docs, "COPY: Binary Format"): a fixed header, then per row an int16 field
count followed by, per field, an int32 byte length (-1 for NULL) and the value in the type's
``*_send`` representation (network byte order), then an int16 -1 trailer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
"""Signature, flags (no OIDs) and an empty header extension."""
COPY_TRAILER = (-1).to_bytes(2, "big", signed=True)

PG_EPOCH_DAY = np.datetime64("2000-01-01", "D")
"""PostgreSQL's binary dates count days from 2000-01-01 (and timestamps microseconds)."""

_NUMERIC_BASE = 10_000
_NUMERIC_NEG = 0x4000
_NUMERIC_MAX = _NUMERIC_BASE**2  # two integer base-10000 digits: values below 10^8


@dataclass(frozen=True)
class EncodedField:
    """One column of a batch in wire layout.

    ``values`` holds one element per row whose numpy dtype *is* the wire representation (``>i4``,
    ``>i8``, ``S<width>`` or a big-endian sub-array), so that placing it into the row record is a
    plain strided copy.  ``lengths`` is the int32 length word per row: -1 for NULL, shorter than
    the element for short text values.
    """

    lengths: npt.NDArray[np.int32]
    values: npt.NDArray[Any]
    wire_dtype: np.dtype[Any]

    @property
    def variable(self) -> bool:
        """False when every row sends exactly ``wire_dtype.itemsize`` bytes (no masking needed)."""
        return bool(np.any(self.lengths != self.wire_dtype.itemsize))


def _lengths(rows: int, width: int, nulls: npt.NDArray[np.bool_] | None) -> npt.NDArray[np.int32]:
    lengths = np.full(rows, width, dtype=np.int32)
    if nulls is not None:
        lengths[nulls] = -1
    return lengths


def int4(values: npt.NDArray[np.integer[Any]], nulls: npt.NDArray[np.bool_] | None = None) -> EncodedField:
    """``integer`` column (values must fit in int32)."""
    return EncodedField(_lengths(len(values), 4, nulls), values, np.dtype(">i4"))


def date(values: npt.NDArray[np.datetime64], nulls: npt.NDArray[np.bool_] | None = None) -> EncodedField:
    """``date`` column from ``datetime64[D]`` values."""
    days = (values.astype("datetime64[D]") - PG_EPOCH_DAY).astype(np.int64)
    return EncodedField(_lengths(len(values), 4, nulls), days, np.dtype(">i4"))


def timestamp(values: npt.NDArray[np.datetime64], nulls: npt.NDArray[np.bool_] | None = None) -> EncodedField:
    """``timestamp`` (without time zone) column from ``datetime64`` values (microsecond resolution)."""
    micros = (values.astype("datetime64[us]") - PG_EPOCH_DAY.astype("datetime64[us]")).astype(np.int64)
    return EncodedField(_lengths(len(values), 8, nulls), micros, np.dtype(">i8"))


def numeric(
    values: npt.NDArray[np.floating[Any]],
    scale: int | npt.NDArray[np.integer[Any]],
    nulls: npt.NDArray[np.bool_] | None = None,
) -> EncodedField:
    """``numeric`` column: values rounded to ``scale`` decimals (0..4, per row or for all), |value| < 10^8.

    Every value is sent as three base-10000 digits (two integer, one fractional) with weight 1;
    the server strips leading and trailing zero digits on receipt, so the stored values are the
    canonical ones and a fixed-width encoding suffices.
    """
    rows = len(values)
    scales = np.broadcast_to(np.asarray(scale, dtype=np.int64), (rows,))
    if np.any((scales < 0) | (scales > 4)):
        raise ValueError("numeric scale must be between 0 and 4")
    finite = values if nulls is None else np.where(nulls, 0.0, values)
    if not np.all(np.isfinite(finite)) or np.any(np.abs(finite) >= _NUMERIC_MAX):
        raise ValueError("numeric values must be finite and below 10^8 in magnitude")
    unit = 10**scales
    scaled = np.rint(np.abs(finite) * unit).astype(np.int64)
    integer, fraction = np.divmod(scaled, unit)
    words = np.empty((rows, 7), dtype=np.int16)
    words[:, 0] = 3  # ndigits
    words[:, 1] = 1  # weight of the first digit: 10000^1
    words[:, 2] = np.where(finite < 0, _NUMERIC_NEG, 0)
    words[:, 3] = scales
    words[:, 4] = integer // _NUMERIC_BASE
    words[:, 5] = integer % _NUMERIC_BASE
    words[:, 6] = fraction * (_NUMERIC_BASE // unit)
    return EncodedField(_lengths(rows, 14, nulls), words, np.dtype((">i2", (7,))))


def text(values: npt.NDArray[np.bytes_], nulls: npt.NDArray[np.bool_] | None = None) -> EncodedField:
    """``text``/``varchar`` column from a numpy bytes array (UTF-8, no NUL bytes)."""
    arr = np.asarray(values, dtype=np.bytes_)
    width = max(arr.dtype.itemsize, 1)
    lengths = np.strings.str_len(arr).astype(np.int32)
    if nulls is not None:
        lengths[nulls] = -1
    return EncodedField(lengths, arr, np.dtype(f"S{width}"))


def text_from_vocabulary(codes: npt.NDArray[np.integer[Any]], vocabulary: Sequence[str]) -> EncodedField:
    """``text`` column whose values come from a small vocabulary: ``codes`` index it, -1 means NULL."""
    table = np.array([v.encode() for v in vocabulary] or [b""], dtype=np.bytes_)
    nulls = codes < 0
    return text(table[np.where(nulls, 0, codes)], nulls if bool(nulls.any()) else None)


def encode_rows(fields: Sequence[EncodedField]) -> npt.NDArray[np.uint8]:
    """The binary COPY rows (no header, no trailer) for a batch: ``len(fields)`` columns per row."""
    if not fields:
        raise ValueError("a COPY row needs at least one field")
    rows = len(fields[0].lengths)
    layout: list[tuple[str, Any]] = [("count", ">i2")]
    for i, field in enumerate(fields):
        if len(field.lengths) != rows:
            raise ValueError("all fields of a batch must have the same number of rows")
        layout += [(f"l{i}", ">i4"), (f"v{i}", field.wire_dtype)]
    record_dtype = np.dtype(layout)  # packed: the record is exactly the row's bytes at full width
    records = np.empty(rows, dtype=record_dtype)
    records["count"] = len(fields)
    for i, field in enumerate(fields):
        records[f"l{i}"] = field.lengths
        records[f"v{i}"] = field.values
    matrix = records.view(np.uint8).reshape(rows, record_dtype.itemsize)
    variable = [(i, f) for i, f in enumerate(fields) if f.variable]
    if not variable:
        return matrix.reshape(-1)
    # Keep every byte except the padding after short values and the value bytes of NULLs.
    mask = np.ones(matrix.shape, dtype=bool)
    for i, field in variable:
        start = record_dtype.fields[f"v{i}"][1]  # type: ignore[index]
        width = field.wire_dtype.itemsize
        mask[:, start : start + width] = np.arange(width, dtype=np.int32) < field.lengths[:, None]
    return matrix[mask]
