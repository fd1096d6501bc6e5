"""The tabular tutorial's model: logistic regression on the six features client_app.py builds."""

from __future__ import annotations

import torch

N_FEATURES = 6
"""len(client_app.FEATURES): year of birth, female, BMI, HbA1c and the two 'never measured' flags."""


def get_model() -> torch.nn.Module:
    """One linear layer; its output is the log-odds of type 2 diabetes."""
    return torch.nn.Linear(N_FEATURES, 1)
