"""FLIP tutorial: a federated type 2 diabetes risk model on OMOP cohort columns (no images).

The project's cohort query (see README.md) returns one row per person: ``year_of_birth``,
``gender_concept_id``, the person's mean ``bmi`` and ``hba1c`` (empty when never measured) and
``t2dm`` (1 when a type 2 diabetes diagnosis is recorded). The model is a logistic regression on
year of birth, sex, BMI, HbA1c and two "was never measured" flags.

Trusts record labs in different units (HbA1c in mmol/mol or in %), so every trust standardises the
features with statistics it computes on its own training rows. A missing measurement becomes the
trust's mean (0 after standardising) and its flag says so. Persons are split into training and
held-out sets within each class, ranked by a hash of ``person_id``, the same in every round and run.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

import flip

log = logging.getLogger(__name__)

COLUMNS = ["person_id", "year_of_birth", "gender_concept_id", "bmi", "hba1c", "t2dm"]
FEMALE = 8532  # OMOP gender concept
MEASURED = ["year_of_birth", "bmi", "hba1c"]
FEATURES = ["year_of_birth", "female", "bmi", "hba1c", "bmi_missing", "hba1c_missing"]  # models.py: 6 inputs


def split(cohort: pd.DataFrame, held_out_fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training, held-out) rows, the same fraction of each class held out, ranked by a hash of person_id."""
    rank = cohort["person_id"].map(lambda p: hashlib.sha256(str(p).encode()).hexdigest())
    held_out = pd.Series(False, index=cohort.index)
    for _, group in rank.groupby(cohort["t2dm"]):
        count = min(max(1, round(held_out_fraction * len(group))), len(group) - 1)
        held_out[group.sort_values().index[:count]] = True
    return cohort[~held_out], cohort[held_out]


def raw_features(rows: pd.DataFrame) -> pd.DataFrame:
    """Numeric features before standardising (NaN where a measurement is missing)."""
    features = pd.DataFrame({c: pd.to_numeric(rows[c], errors="coerce").astype(float) for c in MEASURED})
    features["female"] = (pd.to_numeric(rows["gender_concept_id"]) == FEMALE).astype(float)
    return features


def tensors(rows: pd.DataFrame, mean: pd.Series, std: pd.Series) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardised features (missing → 0 plus a flag) and the 0/1 target."""
    features = raw_features(rows)
    for column in ("bmi", "hba1c"):
        features[f"{column}_missing"] = features[column].isna().astype(float)
    features[MEASURED] = ((features[MEASURED] - mean) / std).fillna(0.0)
    x = torch.tensor(features[FEATURES].to_numpy(dtype=np.float32))
    y = torch.tensor(pd.to_numeric(rows["t2dm"]).to_numpy(dtype=np.float32))
    return x, y


def data(config: dict[str, Any], held_out: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """This trust's training (or held-out) features and targets, standardised with training statistics."""
    cohort = flip.get_dataframe(COLUMNS)
    if cohort.empty:
        raise RuntimeError("this trust's cohort is empty")
    training, evaluation = split(cohort, float(config["held_out_fraction"]))
    # Standardising statistics come from this trust's own training rows, never from another trust.
    measured = raw_features(training)[MEASURED]
    mean, std = measured.mean(), measured.std().fillna(1.0).replace(0.0, 1.0)
    return tensors(evaluation if held_out else training, mean, std)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U; tied scores share their average rank).

    0.5 — no better than chance — when only one class is present, where the AUC is undefined.
    """
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        log.warning("AUC is undefined with only one class present; reporting 0.5")
        return 0.5
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2  # 1-based rank shared by each group of ties
    ranks = average_rank[inverse]
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def score(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """AUC, mean log-loss and the number of persons."""
    model.eval()
    with torch.no_grad():
        logits = model(x).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logits, y).item()
    return {"auc": roc_auc(y.numpy(), logits.numpy()), "loss": loss, "num_examples": float(len(y))}


def train(model: torch.nn.Module, config: dict[str, Any]) -> dict[str, float]:
    """Train ``model`` in place on this trust's training rows; metrics on them afterwards."""
    x, y = data(config, held_out=False)
    epochs, batch_size = int(config["local_epochs"]), int(config["batch_size"])
    optimiser = torch.optim.Adam(model.parameters(), lr=float(config["learning_rate"]))
    shuffle = torch.Generator().manual_seed(int(config["seed"]) * 1000 + int(config["round"]))
    model.train()
    for epoch in range(epochs):
        losses = []
        for batch in torch.randperm(len(y), generator=shuffle).split(batch_size):
            optimiser.zero_grad()
            loss = F.binary_cross_entropy_with_logits(model(x[batch]).squeeze(1), y[batch])
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        if epoch == 0:  # logged metrics travel with the returned ones
            flip.log_metric("first_epoch_loss", float(np.mean(losses)))
    return score(model, x, y)


def evaluate(model: torch.nn.Module, config: dict[str, Any]) -> dict[str, float]:
    """Metrics of ``model`` on this trust's held-out persons."""
    x, y = data(config, held_out=True)
    return score(model, x, y)
