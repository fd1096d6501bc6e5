"""Model weights between torch state dicts, NumPy arrays and Flower's ``ArrayRecord``.

A model travels as an ``ArrayRecord`` keyed by the state dict's names, so a reply can be checked name
by name against the global model before anything is averaged.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from numpy.typing import NDArray

Weights = dict[str, NDArray[np.generic]]


class WeightsMismatch(ValueError):
    """A model update does not have the global model's names, shapes or types."""


def from_state_dict(state: Mapping[str, torch.Tensor]) -> Weights:
    """NumPy copies of a state dict's tensors, in its order."""
    return {name: tensor.detach().cpu().numpy().copy() for name, tensor in state.items()}


def to_state_dict(weights: Mapping[str, NDArray[np.generic]]) -> dict[str, torch.Tensor]:
    """Tensors for ``load_state_dict`` (copies, so later edits to the arrays do not leak in)."""
    return {name: torch.from_numpy(np.array(array, copy=True)) for name, array in weights.items()}


def to_record(weights: Mapping[str, NDArray[np.generic]]) -> ArrayRecord:
    """An ``ArrayRecord`` holding each array under its state-dict name."""
    return ArrayRecord({name: Array.from_numpy_ndarray(np.ascontiguousarray(a)) for name, a in weights.items()})


def from_record(record: ArrayRecord) -> Weights:
    """The arrays of an ``ArrayRecord``, by name, in the record's order."""
    return {name: array.numpy() for name, array in record.items()}


def check_like(update: Mapping[str, NDArray[np.generic]], reference: Mapping[str, NDArray[np.generic]]) -> Weights:
    """The update in the reference's order, or :class:`WeightsMismatch` naming the first difference."""
    missing = [name for name in reference if name not in update]
    extra = [name for name in update if name not in reference]
    if missing or extra:
        raise WeightsMismatch(f"names differ (missing {missing[:3]}, unexpected {extra[:3]})")
    ordered: Weights = {}
    for name, ref in reference.items():
        array = update[name]
        if array.shape != ref.shape or array.dtype != ref.dtype:
            raise WeightsMismatch(f"{name} is {array.dtype}{list(array.shape)}, expected {ref.dtype}{list(ref.shape)}")
        ordered[name] = array
    return ordered
