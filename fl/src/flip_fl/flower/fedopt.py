"""FedOpt's server optimiser: Adam applied to the round's averaged model delta (FedAdam).

Each round the clients' models are averaged with FedAvg; the difference between that average and
the current global model is the round's pseudo-gradient ``d``. Adam keeps running moments of ``d``
and moves the global model by ``lr * m / (sqrt(v) + tau)`` (Reddi et al., "Adaptive Federated
Optimization", 2021). Integer arrays (counters such as BatchNorm's ``num_batches_tracked``) are
not optimised: they take the averaged value.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

from flip_fl.flower.runconfig import AdamSettings

Arrays = dict[str, NDArray[np.generic]]


class ServerAdam:
    """Adam over averaged deltas; one instance per run, called once per round."""

    def __init__(self, settings: AdamSettings) -> None:
        self.settings = settings
        self._m: dict[str, NDArray[np.float64]] = {}
        self._v: dict[str, NDArray[np.float64]] = {}

    def step(self, current: Mapping[str, NDArray[np.generic]], averaged: Mapping[str, NDArray[np.generic]]) -> Arrays:
        """The next global model from the current one and this round's FedAvg of the clients."""
        s = self.settings
        result: Arrays = {}
        for name, now in current.items():
            avg = averaged[name]
            if not np.issubdtype(now.dtype, np.floating):
                result[name] = np.array(avg, copy=True)
                continue
            delta = np.asarray(avg, dtype=np.float64) - np.asarray(now, dtype=np.float64)
            m = self._m.get(name, np.zeros_like(delta))
            v = self._v.get(name, np.zeros_like(delta))
            m = s.beta1 * m + (1.0 - s.beta1) * delta
            v = s.beta2 * v + (1.0 - s.beta2) * np.square(delta)
            self._m[name], self._v[name] = m, v
            updated = np.asarray(now, dtype=np.float64) + s.lr * m / (np.sqrt(v) + s.tau)
            result[name] = updated.astype(now.dtype)
        return result
