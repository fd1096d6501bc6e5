"""FedOpt's server-side Adam: moves along the averaged delta, keeps integer arrays, keeps dtypes."""

from __future__ import annotations

import numpy as np

from flip_fl.flower.fedopt import ServerAdam
from flip_fl.flower.runconfig import AdamSettings


def test_the_first_step_moves_each_weight_by_about_lr_along_the_delta() -> None:
    adam = ServerAdam(AdamSettings(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-9))
    current = {"w": np.array([1.0, 1.0, 1.0], dtype=np.float32), "steps": np.array([3], dtype=np.int64)}
    averaged = {"w": np.array([2.0, 1.0, -5.0], dtype=np.float32), "steps": np.array([5], dtype=np.int64)}
    nxt = adam.step(current, averaged)
    # m = 0.1 d and v = 0.01 d^2, so m / sqrt(v) = sign(d): a step of lr in the delta's direction.
    np.testing.assert_allclose(nxt["w"], [1.1, 1.0, 0.9], atol=1e-5)
    assert nxt["w"].dtype == np.float32
    np.testing.assert_array_equal(nxt["steps"], [5])


def test_moments_carry_over_between_rounds() -> None:
    adam = ServerAdam(AdamSettings(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3))
    weights = {"w": np.zeros(2, dtype=np.float64)}
    for _ in range(3):
        weights = adam.step(weights, {"w": weights["w"] + 1.0})
    assert np.all(weights["w"] > 0.25)
    # Averaged equal to current: no delta now, but the first moment still pushes forward.
    still = adam.step(weights, weights)
    assert np.all(still["w"] > weights["w"])
