"""The classification tutorial's model: a small 3-D CNN giving one lesion logit per volume."""

from __future__ import annotations

import torch
from torch import nn


def get_model() -> torch.nn.Module:
    """Two conv layers, then a global max: a lesion is a small bright blob anywhere in the volume."""
    return nn.Sequential(
        nn.Conv3d(1, 8, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool3d(2),
        nn.Conv3d(8, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.AdaptiveMaxPool3d(1),
        nn.Flatten(),
        nn.Linear(16, 1),
    )
