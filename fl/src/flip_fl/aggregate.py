"""Federated averaging of model updates, at the speed of memory.

FedAvg is a weighted mean of every client's copy of every array: ``sum_i w_i * x_i / sum_i w_i`` with
``w_i`` the client's number of training examples. Done with NumPy expressions (``sum(w * x for ...)``)
every term makes a temporary as large as the model, and the model's bytes cross the memory bus about
five times per client. Here the result is written once from the first update (``out = c_0 x_0``) and
every other update is added into it in place with one fused multiply-add (PyTorch's ``add_`` with
``alpha``, vectorised and spread over the CPU's threads): three passes over memory per client and no
temporaries. ``make bench-agg`` compares the throughput with a plain memory copy on the same machine.

(A blocked variant, which builds each cache-sized block of the result from every update so that each
update is read once, moves fewer bytes in theory; measured on the 2-core development VM it was slower,
12.5 against 17.4 GB/s in ``make bench-agg``, because each small operation pays a fixed cost.)

Floating-point arrays are accumulated in float32 (float64 for float64 arrays) and returned in their own
type. Integer arrays (such as BatchNorm's ``num_batches_tracked``) are averaged in float64 and rounded.
Bad input (no updates, arrays that differ in number, shape or type, weights that are negative, not
finite or sum to zero) raises :class:`AggregationError` before anything is computed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

__all__ = ["AggregationError", "Update", "fedavg"]


class AggregationError(ValueError):
    """The updates cannot be averaged; the message says which array or weight is wrong."""


@dataclass(frozen=True)
class Update:
    """One client's arrays (in the model's order) and its weight, usually its number of examples."""

    arrays: Sequence[NDArray[np.generic]]
    weight: float


def fedavg(updates: Sequence[Update], *, threads: int | None = None) -> list[NDArray[np.generic]]:
    """The weighted mean of the updates' arrays, array by array (new arrays, inputs untouched).

    ``threads``: CPU threads to use (default: PyTorch's setting, normally one per core).
    """
    coefficients = _coefficients(updates)
    layers = _check_layers(updates)
    result: list[NDArray[np.generic]] = []
    with _torch_threads(threads):
        for index, (shape, dtype) in enumerate(layers):
            inputs = [np.ascontiguousarray(u.arrays[index]).reshape(-1) for u in updates]
            if np.issubdtype(dtype, np.floating):
                out = np.empty(shape, dtype=dtype)
                _average_floats(inputs, coefficients, out.reshape(-1))
            else:
                mean = sum(c * x.astype(np.float64) for c, x in zip(coefficients, inputs, strict=True))
                out = np.rint(np.asarray(mean)).astype(dtype).reshape(shape)
            result.append(out)
    return result


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` intra-op threads (None: PyTorch's default), then put the setting back."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _coefficients(updates: Sequence[Update]) -> list[float]:
    if not updates:
        raise AggregationError("no updates to aggregate")
    weights = [float(u.weight) for u in updates]
    for i, weight in enumerate(weights):
        if not math.isfinite(weight) or weight < 0:
            raise AggregationError(f"update {i} has weight {weight!r}: weights must be finite and not negative")
    total = math.fsum(weights)
    if total <= 0:
        raise AggregationError("the weights sum to zero: nothing to average")
    return [w / total for w in weights]


def _check_layers(updates: Sequence[Update]) -> list[tuple[tuple[int, ...], np.dtype[np.generic]]]:
    first = updates[0].arrays
    layers = [(tuple(a.shape), a.dtype) for a in first]
    for i, update in enumerate(updates[1:], start=1):
        if len(update.arrays) != len(layers):
            raise AggregationError(f"update {i} has {len(update.arrays)} arrays, update 0 has {len(layers)}")
        for j, (array, (shape, dtype)) in enumerate(zip(update.arrays, layers, strict=True)):
            if tuple(array.shape) != shape or array.dtype != dtype:
                raise AggregationError(
                    f"array {j} of update {i} is {array.dtype}{list(array.shape)}, update 0 has {dtype}{list(shape)}"
                )
    for j, (_, dtype) in enumerate(layers):
        if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer) or dtype == np.bool_):
            raise AggregationError(f"array {j} has type {dtype}, which cannot be averaged")
    return layers


def _average_floats(inputs: list[NDArray[np.generic]], coefficients: list[float], out: NDArray[np.generic]) -> None:
    if out.size == 0:
        return
    accumulate = torch.float64 if out.dtype == np.float64 else torch.float32
    target = torch.from_numpy(out)
    total = target if target.dtype == accumulate else torch.empty(out.shape, dtype=accumulate)
    torch.mul(torch.from_numpy(inputs[0]).to(accumulate), coefficients[0], out=total)
    for x, c in zip(inputs[1:], coefficients[1:], strict=True):
        total.add_(torch.from_numpy(x), alpha=c)
    if total is not target:
        target.copy_(total)
