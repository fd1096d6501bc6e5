"""The test researcher's model: a two-layer MLP on four features."""

from __future__ import annotations

import torch


def get_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
